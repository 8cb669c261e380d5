"""Small pure parts of the trace package: step timeline, argv resolution, strace errors."""

from __future__ import annotations

import pytest

from tracer.errors import BadInput, ImageFormatError
from tracer.image.config import ImageConfig
from tracer.profile.model import RunSpec
from tracer.trace.docker_runner import effective_argv
from tracer.trace.run import Timeline, _strace_error
from tracer.trace.steps import first_lines

CFG = ImageConfig(entrypoint=["/docker-entrypoint.sh"], cmd=["nginx", "-g", "daemon off;"])


def test_effective_argv_follows_dockers_rule_for_entrypoint_and_cmd():
    assert effective_argv(RunSpec(), CFG, "img") == [
        "/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    # a cmd replaces the image's Cmd, the image's entrypoint stays
    assert effective_argv(RunSpec(cmd=["nginx", "-t"]), CFG, "img") == [
        "/docker-entrypoint.sh", "nginx", "-t"]
    # an entrypoint replaces the image's and DROPS the image's Cmd (docker run --entrypoint)
    assert effective_argv(RunSpec(entrypoint=["/usr/sbin/nginx"]), CFG, "img") == [
        "/usr/sbin/nginx"]
    assert effective_argv(RunSpec(entrypoint=["/bin/sh"], cmd=["-c", "true"]), CFG, "img") == [
        "/bin/sh", "-c", "true"]
    # no entrypoint in the image: the cmd alone
    assert ImageConfig(cmd=["/bin/bash"]).command(None, None) == ["/bin/bash"]


def test_an_image_with_nothing_to_run_is_bad_input():
    with pytest.raises(BadInput, match="img"):
        effective_argv(RunSpec(), ImageConfig(), "img")


@pytest.mark.parametrize("cfg", ["a string", ["a", "list"], {"Env": ["A=1", 2]},
                                 {"Cmd": {"x": 1}}, {"User": 0}, {"Labels": {"a": 1}},
                                 {"ExposedPorts": ["80/tcp"]}, {"Healthcheck": "CMD true"}])
def test_a_malformed_image_config_is_bad_input_naming_the_field(cfg):
    with pytest.raises(ImageFormatError, match="config"):
        ImageConfig.from_image_json({"config": cfg}, "img")


def test_image_config_reads_every_field_the_run_and_init_need():
    cfg = ImageConfig.from_image_json({"config": {
        "Entrypoint": ["/e"], "Cmd": ["c"], "Env": ["PATH=/bin", "A=b=c"], "User": "33",
        "WorkingDir": "/srv", "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}},
        "Labels": {"l": "v"}, "StopSignal": "SIGQUIT",
        "Healthcheck": {"Test": ["CMD", "/e", "check"]}}}, "img")
    assert cfg.env == {"PATH": "/bin", "A": "b=c"}
    assert cfg.environment({"A": "x"}) == {"PATH": "/bin", "A": "x"}
    assert (cfg.user, cfg.workdir, cfg.exposed_ports, cfg.volumes) == (
        "33", "/srv", ["80/tcp"], ["/data"])
    assert cfg.healthcheck == ["CMD", "/e", "check"] and cfg.stop_signal == "SIGQUIT"


def test_timeline_attributes_times_to_the_step_that_was_running():
    t = Timeline()
    t.starts, t.labels = [100.0, 105.0, 110.0], ["run", "smoke[0].http", "stop"]
    assert t.step_of(99.0) == "run"  # strace's clock may be a hair ahead of ours
    assert t.step_of(104.9) == "run"
    assert t.step_of(105.0) == "smoke[0].http"
    assert t.step_of(200.0) == "stop"
    assert t.step_of(None) == "stop"


def test_strace_refusing_to_trace_is_told_apart_from_a_missing_program():
    assert _strace_error("/.tracer/strace: ptrace(PTRACE_TRACEME, ...): Operation not permitted\n")
    assert _strace_error("/.tracer/strace: exec: No such file or directory\n") is None
    assert _strace_error("app: ptrace is fun\n") is None


def test_first_lines_keeps_the_head_and_says_how_much_was_cut():
    text = "\n".join(f"line {i}" for i in range(30))
    out = first_lines(text, 3)
    assert out == "line 0\nline 1\nline 2\n... (" + str(len(text) - 20) + " more characters)"
    assert len(first_lines("x" * 10**6)) < 5000, "one endless line is cut too"


PASSWD = """root:x:0:0:root:/root:/bin/bash
app:x:1000:1000::/home/app:/bin/sh
svc:x:1001:1002::/:/usr/sbin/nologin
broken line
"""
GROUP = """root:x:0:
app:x:1000:
svcgrp:x:1002:
video:x:44:app,svc
audio:x:29:svc
"""


def test_a_named_user_is_started_by_strace_itself_when_the_image_uses_files():
    from tracer.trace.users import plan

    run_as = plan("app", passwd=PASSWD, group=GROUP, nsswitch="passwd: files\n", setpriv=True)
    assert (run_as.container_user, run_as.strace_user, run_as.setpriv) == ("0", "app", [])
    # a uid with a passwd entry is that name (the runtime takes its gid and groups too)
    assert plan("1001", passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True).strace_user \
        == "svc"


@pytest.mark.parametrize("user,args", [
    ("svc:video", ["--reuid=1001", "--regid=44", "--clear-groups"]),  # explicit group: only it
    ("1001:29", ["--reuid=1001", "--regid=29", "--clear-groups"]),
    ("4242", ["--reuid=4242", "--regid=0", "--clear-groups"]),  # no entry: gid 0, no groups
])
def test_forms_strace_cannot_name_go_through_setpriv_with_the_runtimes_ids(user, args):
    from tracer.trace.users import plan

    run_as = plan(user, passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True)
    assert run_as.container_user == "0" and run_as.strace_user is None
    assert run_as.setpriv == args


def test_supplementary_groups_and_nss_modules_send_a_name_to_setpriv():
    from tracer.trace.users import plan

    run_as = plan("svc", passwd=PASSWD, group=GROUP, nsswitch="passwd: compat\ngroup: files",
                  setpriv=True)
    assert run_as.setpriv == ["--reuid=1001", "--regid=1002", "--groups=29,44"]


def test_unresolvable_users_and_root_keep_the_containers_user():
    from tracer.trace.users import plan

    for user in (None, "root", "0", "0:0"):
        assert not plan(user, passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True).drops
    # the runtime refuses these: traced, the run must fail the same way
    for user in ("nosuch", "app:nosuchgroup"):
        run_as = plan(user, passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True)
        assert run_as.container_user == user and not run_as.drops
    # no setpriv on the host: today's behaviour, said in a note
    run_as = plan("4242", passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=False)
    assert run_as.container_user == "4242" and "setuid" in (run_as.note or "")


def test_tool_lines_are_filtered_and_exec_failures_told_in_words():
    from tracer.trace.capture import exec_failure, without_tool_lines

    raw = ("app says hi\n/.tracer/strace: Can't stat '/bin/app': No such file or directory\n"
           "/.tracer/strace: exec: Permission denied\nlast\n")
    assert without_tool_lines(raw) == "app says hi\nlast\n"
    assert exec_failure(raw) == "No such file or directory"
    assert exec_failure("/.tracer/strace: exec: Permission denied\n") == "Permission denied"
    assert exec_failure("/.tracer/env: '/bin/app': Permission denied\n") == "Permission denied"
    assert exec_failure("app: exec: nothing\n") is None


def test_a_non_root_app_is_traced_without_the_filter_that_cancels_setuid():
    from tracer.trace.users import plan

    may = plan("app", passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True)
    assert not may.seccomp, "seccomp-bpf sets no_new_privs: setuid would be ignored"
    known = plan("app", passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True,
                 privileged_programs=False)
    assert known.seccomp
    assert plan(None, passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True).seccomp


def test_a_failed_result_tells_its_evidence_once():
    from tracer.trace.result import SmokeResult, StepOutcome

    ok = StepOutcome("ready", "ready", True, 0.1)
    bad = StepOutcome("smoke[0].tcp", "tcp", False, 1.0, None, "connected, sent 6 bytes",
                      output="-ERR\n", logs="listening\nclient said PING\n")
    r = SmokeResult(passed=False, steps=[ok, bad])
    assert r.failed_step is bad
    assert r.evidence() == ("output of smoke[0].tcp:\n  | -ERR\nthe container's last log lines:"
                            "\n  | listening\n  | client said PING")
    job = StepOutcome("run", "job", False, 1.0, 1, "exit 1", output="boom", logs="boom")
    assert SmokeResult(passed=False, steps=[job]).evidence() == "output of run:\n  | boom"
    assert SmokeResult(passed=True, steps=[ok]).evidence() == ""


def test_the_app_start_by_the_bundles_env_is_the_apps_exec_and_its_path_misses_are_not():
    from tracer.trace.parser import excluder, parse_trace
    from tracer.trace.run import ALWAYS_EXCLUDED, _apps_own

    lines = [  # strace starts the bundle's env, which looks `app` up on the app's PATH
        '1 1.0 execve("/.tracer/ld.so", ["/.tracer/ld.so", "/.tracer/env"], 0x1) = 0',
        '1 1.1 openat(AT_FDCWD, "/.tracer/lib/libc.so.6", O_RDONLY) = 3',
        '1 1.2 execve("/.tracer/env", ["/.tracer/env", "app"], 0x1) = 0',
        '1 1.3 execve("/usr/local/bin/app", ["app"], 0x1) = -1 ENOENT (No such file)',
        '1 1.4 execve("/usr/bin/app", ["app"], 0x1) = 0',
        '1 1.5 openat(AT_FDCWD, "/etc/app.conf", O_RDONLY) = 3',
    ]
    parsed = parse_trace(lines, excluded=excluder(ALWAYS_EXCLUDED))
    uses = _apps_own(parsed.accesses, "/.tracer/")
    assert [(a.path, a.ok, a.program) for a in uses] == [
        ("/usr/bin/app", True, ""), ("/etc/app.conf", True, "/usr/bin/app")]
