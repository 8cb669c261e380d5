"""The strace bundle: self-contained (its own loader and libraries) and complete."""

from __future__ import annotations

import subprocess

import pytest
from prereq import missing

from tracer.errors import EnvironmentProblem
from tracer.trace.bundle import BUNDLE_MOUNT, build_bundle
from tracer.trace.users import RunAs


def test_bundle_runs_strace_through_its_own_loader_with_an_empty_environment(host_strace, tmp_path):
    bundle = build_bundle(tmp_path, host_strace)
    d = bundle.host_dir
    assert (d / "strace").is_file() and (d / bundle.loader_name).is_file()
    assert (d / "lib" / "libc.so.6").is_file()
    # exactly how the container starts it, with the host paths of the bundle
    cmd = [str(d / bundle.loader_name), "--library-path", str(d / "lib"), str(d / "strace"), "-V"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={}, check=True).stdout
    assert "strace -- version" in out


def test_bundle_command_wraps_argv_with_follow_forks_and_seccomp(host_strace, tmp_path):
    bundle = build_bundle(tmp_path, host_strace)
    cmd = bundle.command("/.tracer-out/main.trace", ["nginx", "-g", "daemon off;"])
    assert cmd[0] == f"{BUNDLE_MOUNT}/{bundle.loader_name}"
    assert cmd[1:3] == ["--library-path", f"{BUNDLE_MOUNT}/lib"]
    assert {"-f", "--seccomp-bpf", "-y", "-xx"} <= set(cmd)
    assert cmd[cmd.index("-o") + 1] == "/.tracer-out/main.trace"
    assert cmd[-4:] == ["--", "nginx", "-g", "daemon off;"]


def test_missing_strace_is_an_environment_problem(tmp_path):
    with pytest.raises(EnvironmentProblem, match="strace"):
        build_bundle(tmp_path, str(tmp_path / "no-such-strace"))


def test_strace_stays_root_and_starts_the_app_as_the_user(host_strace, tmp_path):
    bundle = build_bundle(tmp_path, host_strace)
    cmd = bundle.command("/.tracer-out/main.fifo", ["id"], RunAs("0", strace_user="app"))
    assert cmd[cmd.index("-u") + 1] == "app" and cmd.index("-u") < cmd.index("--")
    assert cmd[-2:] == ["--", "id"]
    if not bundle.has_setpriv:
        return
    cmd = bundle.command("/.tracer-out/main.fifo", ["id"],
                         RunAs("0", setpriv=["--reuid=7", "--regid=8", "--clear-groups"]))
    assert "-u" not in cmd
    tail = cmd[cmd.index("--") + 1:]
    assert tail == [f"{BUNDLE_MOUNT}/{bundle.loader_name}", "--library-path",
                    f"{BUNDLE_MOUNT}/lib", f"{BUNDLE_MOUNT}/setpriv", "--reuid=7", "--regid=8",
                    "--clear-groups", "--", "id"]


def test_bundled_setpriv_and_dash_run_through_the_bundle_loader(host_strace, tmp_path):
    """What the container runs, with the host paths of the bundle and an empty environment:
    the waiter reads its gate line and execs the program; setpriv switches the user."""
    bundle = build_bundle(tmp_path, host_strace)
    if not (bundle.has_dash and bundle.has_setpriv):
        missing("this host has no dash or setpriv (util-linux)")
    d = bundle.host_dir
    gate = tmp_path / "gate"
    gate.write_text("go\n")
    cmd = [a.replace(BUNDLE_MOUNT, str(d)) for a in bundle.waiter(str(gate), ["echo", "hi"])]
    out = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                         check=True, timeout=30).stdout
    assert out == "hi\n"
    run = [str(d / bundle.loader_name), "--library-path", str(d / "lib"), str(d / "setpriv"),
           "--reuid=65534", "--regid=65534", "--clear-groups", "--", "id", "-u"]
    out = subprocess.run(run, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                         check=True, timeout=30).stdout
    assert out.strip() == "65534"
