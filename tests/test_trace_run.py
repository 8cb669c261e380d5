"""run_smoke against the real engine: traced and untraced, passing and failing; the core
of it on Podman too (tests taking the `engine` fixture).

Two tiny images are built here (and removed at the end): a perl HTTP service from the
base fixture (a `#!` script, so the kernel opens the interpreter where strace cannot see
it), and an image that holds nothing but a static binary and a data file (no libc: the
strace bundle must bring everything it needs).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
import uuid

import pytest
from conftest import EngineUnderTest, engine_under_test

from tracer.errors import BadInput
from tracer.profile.model import (
    CommandStep,
    ExecStep,
    HttpStep,
    Profile,
    Ready,
    RunSpec,
    SleepStep,
    SmokeStep,
)
from tracer.trace import fanotify
from tracer.trace.run import run_smoke

pytestmark = pytest.mark.integration

SVC = "tracer-test/trace-svc:test"
STATIC = "tracer-test/trace-static:test"

SERVER = r"""#!/usr/bin/perl
use strict; use warnings; use IO::Socket::INET;
my $port = $ENV{PORT} or die "no PORT";
open(my $c, '<', '/srv/app.conf') or die "no conf: $!";
my $greeting = <$c>; close $c;
print "optional\n" if -e '/srv/optional.conf';
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 5,
                              ReuseAddr => 1) or die "listen: $!";
$SIG{TERM} = sub { exit 0 };
$| = 1;
print "listening on $port\n";
while (my $cl = $s->accept) {
    my $req = <$cl> // ''; my ($path) = $req =~ m{GET (\S+)}; $path //= '/';
    while (my $l = <$cl>) { last if $l =~ /^\r?\n$/ }
    my $f = '/srv/www' . ($path eq '/' ? '/index.html' : $path);
    if (open(my $fh, '<', $f)) {
        local $/; my $b = <$fh>;
        print $cl "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n$greeting$b";
    } else {
        print $cl "HTTP/1.0 404 Not Found\r\n\r\nnot found\n";
    }
    close $cl;
}
"""

STATIC_C = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argc > 1 ? argv[1] : "/data/hello.txt", "r");
    char buf[64] = {0};
    if (!f) { perror("open"); return 3; }
    fread(buf, 1, sizeof buf - 1, f);
    fputs(buf, stdout);
    return 0;
}
"""


def _containers(client, image: str) -> list:
    """Containers of this process's smoke runs from `image` (others work on the same
    engine, some on images built from the same base)."""
    from tracer.workdir import OWNER_LABEL, current_owner

    return client.containers.list(
        all=True, filters={"ancestor": image,
                           "label": f"{OWNER_LABEL}={current_owner().label}"}
    )


# profile names of this module's runs: unique, so that a check finds only its own run's
# containers while others use the same engine and images
SESSION = uuid.uuid4().hex[:8]


def _ours(client, profile: Profile) -> list:
    """Containers of the run of `profile`, by the label every container of it carries."""
    return client.containers.list(
        all=True, filters={"label": f"org.tracer.smoke={profile.name}"})


@pytest.fixture(scope="module")
def images_of(gcc, tmp_path_factory):
    """Build the two test images once per engine for the module; remove them afterwards."""
    built: dict[str, tuple[object, dict[str, str]]] = {}

    def get(engine: EngineUnderTest) -> dict[str, str]:
        if engine.name not in built:
            built[engine.name] = (engine.client, _build(engine, gcc, tmp_path_factory))
        return built[engine.name][1]

    yield get
    for client, refs in built.values():
        for ref in refs.values():
            for c in _containers(client, ref):
                c.remove(force=True)
            client.images.remove(ref, force=True)


@pytest.fixture(scope="module")
def images(images_of, docker_client):
    """The two test images in the Docker engine."""
    return images_of(engine_under_test("docker"))


def _build(engine: EngineUnderTest, gcc: str, tmp_path_factory) -> dict[str, str]:
    docker_client = engine.client
    base = engine.image("base")
    ctx = tmp_path_factory.mktemp(f"svc-{engine.name}")
    (ctx / "server.pl").write_text(SERVER)
    (ctx / "server.pl").chmod(0o755)
    (ctx / "app.conf").write_text("hello from app.conf\n")
    (ctx / "index.html").write_text("index page\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\n"
        "COPY server.pl /srv/server.pl\n"
        "COPY app.conf /srv/app.conf\n"
        "COPY index.html /srv/www/index.html\n"
        'CMD ["/srv/server.pl"]\n'
    )
    docker_client.images.build(path=str(ctx), tag=SVC, network_mode="none", rm=True)

    src = ctx / "s.c"
    src.write_text(STATIC_C)
    subprocess.run([gcc, "-static", "-O2", "-o", str(ctx / "app"), str(src)], check=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(ctx / "app", arcname="app")
        info = tarfile.TarInfo("data")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        data = b"hello static\n"
        info = tarfile.TarInfo("data/hello.txt")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    answer = docker_client.api.import_image_from_data(
        buf.getvalue(), repository=STATIC.split(":")[0], tag="test", changes=['CMD ["/app"]']
    )
    # Podman's import names it `latest` whatever the tag asked for: tag it by its id
    image_id = json.loads(answer.splitlines()[-1])["status"]
    docker_client.api.tag(image_id, STATIC.split(":")[0], "test")
    if engine.name == "podman":
        docker_client.images.remove(STATIC.split(":")[0] + ":latest")
    return {"svc": SVC, "static": STATIC}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def svc_profile(port: int, smoke: list, ready_log: str = "listening on") -> Profile:
    return Profile(
        name=f"svc-{SESSION}",
        image=SVC,
        run=RunSpec(
            env={"PORT": str(port)},
            user="1000",
            network="host",
            tmpfs=["/tmp"],
            ready=Ready(log=ready_log, tcp=port, timeout=15),
            timeout=120,
        ),
        smoke=[SmokeStep(i, s) for i, s in enumerate(smoke)],
    )


def _find(result, path, syscall=None, step=None, ok=True):
    return [
        a
        for a in result.accesses
        if a.path == path
        and a.ok == ok
        and (syscall is None or a.syscall == syscall)
        and (step is None or a.step == step)
    ]


def test_traced_service_records_every_file_with_its_step_and_cleans_up(
    engine, images_of, tmp_path
):
    docker_client, images = engine.client, images_of(engine)
    port = _free_port()
    profile = svc_profile(
        port,
        [
            HttpStep(url=f"http://127.0.0.1:{port}/", status=200, body="index page"),
            ExecStep(argv=["cat", "/etc/debian_version"], stdout=r"^12"),
            CommandStep(argv=["ls", "/srv/www"], stdout="index.html"),
            SleepStep(0.2),
        ],
    )
    messages: list[str] = []
    r = run_smoke(profile, images["svc"], traced=True, workdir=tmp_path, progress=messages.append)
    assert r.passed, (r.failure, r.steps)
    assert [s.label for s in r.steps] == [
        "ready",
        "smoke[0].http",
        "smoke[1].exec",
        "smoke[2].command",
        "smoke[3].sleep",
    ]
    assert r.steps[2].exit_code == 0
    assert "strace" in r.recorders

    conf = _find(r, "/srv/app.conf", "openat", step="run")
    assert conf and conf[0].program == "/srv/server.pl" and conf[0].cmdline == ("/srv/server.pl",)
    assert _find(r, "/srv/www/index.html", "openat", step="smoke[0].http")
    assert _find(r, "/etc/debian_version", "openat", step="smoke[1].exec")
    assert _find(r, "/srv/www", "getdents64", step="smoke[2].command")
    # the failed lookup a diagnosis needs
    opt = _find(r, "/srv/optional.conf", ok=False)
    assert opt and opt[0].errno == "ENOENT"
    assert "/srv/server.pl" in r.execs and "/usr/bin/cat" in r.execs
    # nothing of the tracer, the kernel's pseudo filesystems or the tmpfs is recorded
    bad = ("/.tracer", "/proc/", "/sys/", "/dev/", "/tmp/")
    assert not [a.path for a in r.accesses if a.path.startswith(bad) or a.path == "/tmp"]
    if fanotify.available() is None:
        assert "fanotify" in r.recorders and r.notes == []
        # the kernel opens the #! interpreter itself: only fanotify sees it
        assert _find(r, "/usr/bin/perl", "fanotify:exec")
        assert not _find(r, "/usr/bin/perl", "execve")
    assert _ours(docker_client, profile) == []
    assert not list(tmp_path.iterdir()), "the work files are removed after the run"


def test_untraced_run_passes_and_records_nothing(docker_client, images, tmp_path):
    port = _free_port()
    profile = svc_profile(port, [HttpStep(url=f"http://127.0.0.1:{port}/", status=200)])
    r = run_smoke(profile, images["svc"], traced=False, workdir=tmp_path)
    assert r.passed, r.failure
    assert r.accesses == [] and r.recorders == []
    assert _ours(docker_client, profile) == []


def test_failing_step_stops_the_run_and_says_why(docker_client, images, tmp_path):
    port = _free_port()
    profile = svc_profile(
        port,
        [
            HttpStep(url=f"http://127.0.0.1:{port}/missing", status=200),
            ExecStep(argv=["true"]),
        ],
    )
    r = run_smoke(profile, images["svc"], traced=True, workdir=tmp_path)
    assert not r.passed
    assert r.failure == "smoke[0].http: expected status 200, got 404"
    assert [s.label for s in r.steps] == ["ready", "smoke[0].http"]  # the exec never ran
    assert "not found" in r.steps[1].output
    # what was recorded up to the failure is still there, failed lookup included
    assert _find(r, "/srv/www/missing", "openat", ok=False)
    assert _ours(docker_client, profile) == []


def test_ready_timeout_fails_with_the_condition_that_never_held(docker_client, images, tmp_path):
    port = _free_port()
    run = RunSpec(
        env={"PORT": str(port)}, network="host", ready=Ready(log="this never appears", timeout=1.5)
    )
    profile = Profile(name=f"svc-{SESSION}", image=SVC, run=run)
    r = run_smoke(profile, images["svc"], traced=False, workdir=tmp_path)
    assert not r.passed
    assert r.failure is not None and r.failure.startswith("ready: not ready after 1.5s")
    assert "this never appears" in r.failure
    assert "listening on" in r.steps[0].output
    assert _ours(docker_client, profile) == []


def test_exec_timeout_ends_the_container(docker_client, images, tmp_path):
    port = _free_port()
    profile = svc_profile(port, [ExecStep(argv=["sleep", "30"], timeout=1)])
    r = run_smoke(profile, images["svc"], traced=False, workdir=tmp_path)
    assert not r.passed and r.failure == "smoke[0].exec: timed out after 1s"
    assert _ours(docker_client, profile) == []


def test_ctrl_c_still_removes_every_container(docker_client, images, tmp_path):
    port = _free_port()
    profile = svc_profile(port, [ExecStep(argv=["true"])])

    def interrupt(msg: str) -> None:
        if msg.startswith("smoke[0]"):
            assert _ours(docker_client, profile), "the service is running"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_smoke(profile, images["svc"], traced=True, workdir=tmp_path, progress=interrupt)
    assert _ours(docker_client, profile) == []
    assert not list(tmp_path.iterdir()), "bundle and trace files are removed on Ctrl-C too"


def test_job_in_an_image_without_libc_is_traced_by_the_self_contained_bundle(
    engine, images_of, tmp_path
):
    docker_client, images = engine.client, images_of(engine)
    profile = Profile(
        name=f"static-{SESSION}",
        image=STATIC,
        run=RunSpec(mode="job", exit=0, stdout="hello static", timeout=60),
        smoke=[SmokeStep(0, CommandStep(argv=["/app", "/data/nope"], exit=3, stderr="open"))],
    )
    r = run_smoke(profile, images["static"], traced=True, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)
    assert [(s.label, s.kind, s.exit_code) for s in r.steps] == [
        ("run", "job", 0),
        ("smoke[0].command", "command", 3),
    ]
    assert _find(r, "/data/hello.txt", "openat", step="run")
    nope = _find(r, "/data/nope", "openat", step="smoke[0].command", ok=False)
    assert nope and nope[0].errno == "ENOENT" and nope[0].program == "/app"
    assert r.execs[0] == "/app"
    # the exec that starts the app is the app's use, though the bundle's env makes it
    start = _find(r, "/app", "execve", step="run")
    assert start and start[0].program == "" and not start[0].path.startswith("/.tracer")
    assert _ours(docker_client, profile) == []


def test_job_with_the_wrong_exit_code_fails_with_its_output(docker_client, images, tmp_path):
    profile = Profile(
        name=f"static-{SESSION}",
        image=STATIC,
        run=RunSpec(mode="job", entrypoint=["/app"], cmd=["/data/nope"], timeout=60),
    )
    r = run_smoke(profile, images["static"], traced=False, workdir=tmp_path)
    assert not r.passed
    assert r.failure == "run: expected exit code 0, got 3"
    assert r.steps[0].exit_code == 3 and "No such file" in r.steps[0].output


@pytest.mark.parametrize("engine,title", [("docker", "the Docker engine"),
                                          ("podman", "Podman")], indirect=["engine"])
def test_an_image_the_engine_does_not_have_is_bad_input(engine, title, tmp_path):
    profile = Profile(name="x", image="tracer-test/trace-absent:nope")
    with pytest.raises(BadInput, match=f"not in {title}"):
        run_smoke(profile, "tracer-test/trace-absent:nope", traced=True, workdir=tmp_path)


@pytest.mark.parametrize("traced", [False, True])
def test_a_missing_entrypoint_is_a_failed_run_not_an_environment_problem(
    engine, images_of, tmp_path, traced
):
    docker_client, images = engine.client, images_of(engine)
    profile = Profile(name=f"static-{SESSION}", image=STATIC,
                      run=RunSpec(mode="job", cmd=["/bin/sh"]))
    r = run_smoke(profile, images["static"], traced=traced, workdir=tmp_path)
    assert not r.passed and r.steps[0].label == "run"
    assert r.failure is not None
    if traced:  # strace starts, then cannot exec the program: said in words, not strace's
        assert r.failure == ("run: expected exit code 0, got 127; /bin/sh could not be executed: "
                             "No such file or directory")
        assert "/.tracer" not in r.steps[0].output
    else:  # the runtime cannot start it
        assert "did not start" in r.failure and "/bin/sh" in r.failure
    assert _ours(docker_client, profile) == []


def test_stop_lets_the_app_shut_down_and_strace_flush_its_trace(engine, tmp_path):
    """SIGTERM goes to the whole traced tree (a shell and its background child), the app's
    shutdown handler runs, and what it reads while stopping is in the trace as `stop`.

    No race with the clock: the shell says `ready` only once its background child has
    become `sleep` (its cmdline changed on exec), so the exec is always in the `run` part,
    however loaded the machine is."""
    docker_client, base = engine.client, engine.image("base")
    script = ('trap "cat /etc/debian_version >/dev/null; exit 0" TERM; sleep 1000 & '
              'until grep -q sleep /proc/$!/cmdline 2>/dev/null; do :; done; echo ready; wait')
    profile = Profile(
        name=f"stopper-{SESSION}",
        image=base,
        run=RunSpec(entrypoint=["sh", "-c", script], cmd=[], ready=Ready(log="ready", timeout=60)),
        smoke=[SmokeStep(0, SleepStep(0.1))],
    )
    r = run_smoke(profile, base, traced=True, workdir=tmp_path)
    assert r.passed, r.failure
    assert _find(r, "/etc/debian_version", "openat", step="stop")
    sleeps = _find(r, "/usr/bin/sleep", "execve", step="run")
    assert sleeps and sleeps[0].program == "/usr/bin/sh"  # the exec is made by the shell
    assert not _find(r, "/etc/debian_version", "openat", step="run"), "read only when stopping"
    assert _ours(docker_client, profile) == []
