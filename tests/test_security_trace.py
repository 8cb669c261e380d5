"""The traced container cannot reach the host (README, "Security model").

Each hostile image attacks as an attacker would: it enumerates /proc/self/mountinfo (it
does not know tracer's mount names) and tries its attack on every mount it finds. The
run is made by a child process (so its peak memory can be measured) under strace and
fanotify, as `tracer minimize` runs an original image. Every test asserts what a user
relies on: a canary file on the host is untouched, the run ends within its timeout,
tracer's memory stays bounded, nothing of the attack reaches the recorded accesses.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prereq import missing

from tracer.errors import EnvironmentProblem
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

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
TMPFS_BUDGET = 8 * MIB
RSS_LIMIT_KB = 400 * 1024  # tracer's child: Python, the SDK and a bounded trace
CANARY_TEXT = '1 1.0 openat(AT_FDCWD, "/INJECTED-FROM-THE-HOST", O_RDONLY) = 3\n' * 50

# Every mount the container has, the way an attacker lists them (not /proc or /sys).
PRELUDE = r"""
mounts() { awk '{print $5}' /proc/self/mountinfo | sort -u; }
for m in $(mounts); do
  case "$m" in /proc|/proc/*|/sys|/sys/*) continue ;; esac
  [ -d "$m" ] || continue
  attack "${m%/}"
done
echo "attack done"
"""

ATTACKS = {
    # every entry of every mount replaced by a link to the host's canary
    "replace": r"""
attack() {
  for e in "$1"/* "$1"/.[!.]*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    [ -d "$e" ] && continue
    rm -f "$e" 2>/dev/null && ln -s "$CANARY" "$e" 2>/dev/null && echo "WROTE $e"
  done
}
""",
    # new names that look like trace output, linking to the canary
    "links": r"""
attack() {
  for n in main.trace main.fifo evil.trace run.trace out.trace; do
    ln -sf "$CANARY" "$1/$n" 2>/dev/null && echo "WROTE $1/$n"
  done
  cp "$CANARY" "$1/planted.trace" 2>/dev/null && echo "WROTE $1/planted.trace"
}
""",
    # FIFOs where a reader would hang forever
    "fifos": r"""
attack() {
  for e in "$1"/*.fifo "$1"/*.trace; do
    [ -e "$e" ] && rm -f "$e" 2>/dev/null && mkfifo "$e" 2>/dev/null && echo "WROTE $e"
  done
  mkfifo "$1/hang.trace" "$1/hang.fifo" 2>/dev/null && echo "WROTE $1/hang"
}
""",
    # endless input for a reader that reads to EOF
    "devzero": r"""
attack() {
  for e in "$1"/*.fifo "$1"/*.trace; do
    [ -e "$e" ] && rm -f "$e" 2>/dev/null && ln -s /dev/zero "$e" 2>/dev/null && echo "WROTE $e"
  done
  ln -sf /dev/zero "$1/zero.trace" 2>/dev/null && echo "WROTE $1/zero.trace"
}
""",
    # as much space as it can get, everywhere (bounded here: 64 MB per mount)
    "fill": r"""
attack() {
  dd if=/dev/zero of="$1/.fill" bs=1M count=64 2>/dev/null
  size=$(stat -c %s "$1/.fill" 2>/dev/null || echo 0)
  [ "$size" -gt 0 ] && echo "WROTE $1/.fill $size"
  [ "$size" -gt $((TMPFS_BUDGET)) ] && echo "BIG $1"
  rm -f "$1/.fill"
}
""",
}


def _build(docker_client, base: str, tag: str, files: dict[str, str], cmd: str,
           tmp: Path) -> str:
    ctx = tmp / tag.replace("/", "_").replace(":", "_")
    ctx.mkdir()
    lines = [f"FROM {base}"]
    for name, text in files.items():
        (ctx / name).write_text(text)
        (ctx / name).chmod(0o755)
        lines.append(f"COPY {name} /{name}")
    lines.append(f"CMD {cmd}")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    docker_client.images.build(path=str(ctx), tag=tag, network_mode="none", rm=True,
                               forcerm=True)
    return tag


@pytest.fixture(scope="module")
def hostile(docker_client, fixture_image, tmp_path_factory):
    """One hostile image per attack (removed afterwards)."""
    base = fixture_image("base")
    tmp = tmp_path_factory.mktemp("hostile")
    tags = {}
    for name, body in ATTACKS.items():
        tag = f"tracer-test/trace-hostile-{name}:test"
        tags[name] = _build(docker_client, base, tag, {"attack.sh": "#!/bin/sh" + body + PRELUDE},
                            '["/attack.sh"]', tmp)
    yield tags
    for tag in tags.values():
        docker_client.images.remove(tag, force=True)


CHILD = r"""
import json, pickle, resource, sys
from tracer.budgets import DEFAULT
from tracer.trace.run import run_smoke
profile, image, workdir, budgets = pickle.load(open(sys.argv[1], "rb"))
r = run_smoke(profile, image, traced=True, workdir=workdir,
              budgets=DEFAULT.override(budgets, "test"))
print(json.dumps({"passed": r.passed, "failure": r.failure, "notes": r.notes,
                  "paths": sorted({a.path for a in r.accesses}),
                  "steps": [[s.label, s.passed, s.message, s.output] for s in r.steps],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _run_child(tmp: Path, profile: Profile, image: str, budgets: dict) -> tuple[dict, int, float]:
    """run_smoke in a child process: its JSON result, peak RSS (KiB) and wall seconds."""
    args = tmp / "args.pickle"
    args.write_bytes(pickle.dumps((profile, image, tmp / "work", budgets)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp)
    out, err = proc.communicate(timeout=600)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    return result, result["maxrss_kb"], seconds


@pytest.fixture()
def canary(tmp_path):
    """A host file an attacker would love to overwrite, formatted like trace lines."""
    path = tmp_path / "canary"
    path.write_text(CANARY_TEXT)
    os.chmod(path, 0o644)
    st = path.stat()
    yield path
    assert path.read_text() == CANARY_TEXT, "the host canary was written"
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_hostile_job_cannot_touch_the_host_or_the_evidence(hostile, attack, canary, tmp_path):
    # The job passes only if no write into a tracer mount succeeded (the attacker reports
    # each success; it does not know which mounts are tracer's, the test does) and no tmpfs
    # grew past its budget.
    stdout = r"\A(?![\s\S]*WROTE /\.tracer)(?![\s\S]*BIG /tmp\b)[\s\S]*attack done"
    profile = Profile(
        name=f"hostile-{attack}",
        image=hostile[attack],
        run=RunSpec(mode="job", env={"CANARY": str(canary), "TMPFS_BUDGET": str(TMPFS_BUDGET)},
                    tmpfs=["/tmp"], stdout=stdout, timeout=120),
        # its trace FIFO exists while the job runs: one more thing to attack
        smoke=[SmokeStep(0, CommandStep(argv=["true"]))],
    )
    result, rss_kb, seconds = _run_child(tmp_path, profile, hostile[attack],
                                         {"tmpfs_bytes": TMPFS_BUDGET})
    assert result["passed"], result["steps"]
    assert seconds < 120, "no hang past the run's timeout"
    assert rss_kb < RSS_LIMIT_KB, f"tracer's memory grew to {rss_kb} KiB"
    assert not [p for p in result["paths"] if "INJECTED" in p], "host file read as a trace"
    assert not [n for n in result["notes"] if "not the FIFO" in n or "cannot open" in n]
    assert not list((tmp_path / "work").iterdir()), "nothing is left in tracer's work dir"


def test_a_hostile_non_root_app_cannot_even_open_the_trace_fifos(
    docker_client, fixture_image, tmp_path
):
    """Traced as root, the app as the profile's user: the FIFOs are root's, mode 0600."""
    script = ('for f in $(awk \'{print $5}\' /proc/self/mountinfo); do for e in "$f"/*.fifo; do '
              '[ -p "$e" ] || continue; timeout 2 sh -c "echo x > $e" 2>/dev/null '
              '&& echo "OPENED $e"; echo "TRIED $e"; done; done; id -u')
    profile = Profile(
        name="fifo-writer", image=fixture_image("base"),
        run=RunSpec(mode="job", user="nobody", entrypoint=["sh", "-c", script], cmd=[],
                    stdout=r"\A(?![\s\S]*OPENED)[\s\S]*TRIED /\.tracer-out/smoke-0-exec\.fifo"
                           r"[\s\S]*^65534$", timeout=60),
        smoke=[SmokeStep(0, ExecStep(argv=["true"]))],  # gives it a FIFO that exists
    )
    # a job has no exec steps to run, but its exec FIFO exists for the whole run
    r = run_smoke(profile, fixture_image("base"), traced=True, workdir=tmp_path)
    assert r.steps[0].passed, r.steps[0]


def test_endless_output_costs_a_bounded_tail(docker_client, fixture_image, tmp_path):
    """200 MB of log before the ready line and 200 MB from an exec step: the ready line is
    still seen, the exec step's last line still judged, and memory stays bounded."""
    many = "head -c 200000000 /dev/zero | tr '\\0' {c}; echo"
    profile = Profile(
        name="chatty", image=fixture_image("base"),
        run=RunSpec(entrypoint=["sh", "-c", many.format(c="x") + "; echo ready; exec sleep 1000"],
                    cmd=[], ready=Ready(log="^ready$", timeout=120), timeout=300),
        smoke=[SmokeStep(0, ExecStep(argv=["sh", "-c", many.format(c="y") + "; echo the end"],
                                     stdout="^the end$", timeout=120))],
    )
    result, rss_kb, _ = _run_child(tmp_path, profile, fixture_image("base"),
                                   {"output_bytes": 64 * 1024})
    assert result["passed"], result["steps"]
    assert rss_kb < RSS_LIMIT_KB, f"tracer's memory grew to {rss_kb} KiB"


def test_a_host_process_reading_the_containers_files_is_not_recorded(
    docker_client, fixture_image, tmp_path
):
    """During a traced run, a host process reads through the engine's merged directory
    (no event: another mount) and through /proc/PID/root (dropped: not the container's)."""
    if fanotify.available() is not None:
        missing(f"needs fanotify (root on the engine's host): {fanotify.available()}")
    base = fixture_image("base")
    profile = Profile(
        name="host-reader", image=base,
        run=RunSpec(entrypoint=["sh", "-c", "echo ready; exec sleep 1000"], cmd=[],
                    ready=Ready(log="ready", timeout=60), timeout=120),
        smoke=[SmokeStep(0, SleepStep(0.01))],
    )
    held = []

    def read_from_the_host(msg: str) -> None:
        if msg != "smoke[0].sleep":
            return
        (c,) = docker_client.containers.list(filters={"label": "org.tracer.smoke=host-reader"})
        c.reload()
        merged = Path(c.attrs["GraphDriver"]["Data"]["MergedDir"])
        (merged / "etc/host.conf").read_bytes()
        f = open(f"/proc/{c.attrs['State']['Pid']}/root/etc/issue.net", "rb")  # noqa: SIM115
        f.read()
        held.append(f)  # alive while the recorder looks at it

    try:
        r = run_smoke(profile, base, traced=True, workdir=tmp_path, progress=read_from_the_host)
    finally:
        for f in held:
            f.close()
    assert r.passed, r.failure
    assert held, "the host reads happened during the run"
    paths = {a.path for a in r.accesses}
    assert "/etc/host.conf" not in paths and "/etc/issue.net" not in paths
    assert r.foreign_events >= 1
    assert any("outside the container" in n for n in r.notes)
    assert "/usr/bin/sleep" in r.execs, "the container's own exec is recorded"


def test_a_container_removed_by_someone_else_is_an_environment_problem(
    docker_client, fixture_image, tmp_path
):
    base = fixture_image("base")
    profile = Profile(
        name="removed", image=base,
        run=RunSpec(entrypoint=["sh", "-c", "echo ready; exec sleep 1000"], cmd=[],
                    ready=Ready(log="ready", timeout=60), timeout=120),
        smoke=[SmokeStep(0, ExecStep(argv=["true"])), SmokeStep(1, SleepStep(0.01))],
    )

    def remove(msg: str) -> None:
        if msg == "smoke[0].exec":
            for c in docker_client.containers.list(filters={"label": "org.tracer.smoke=removed"}):
                c.remove(force=True)

    for traced in (True, False):
        with pytest.raises(EnvironmentProblem, match="removed|disappeared") as err:
            run_smoke(profile, base, traced=traced, workdir=tmp_path, progress=remove)
        assert err.value.exit_code == 4


def test_the_verification_container_is_killed_once_judged(docker_client, fixture_image,
                                                          tmp_path):
    """PID 1 ignores SIGTERM: an untraced run does not wait out a stop timeout for it."""
    base = fixture_image("base")
    profile = Profile(
        name="stubborn", image=base,
        run=RunSpec(entrypoint=["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
                    cmd=[], ready=Ready(log="ready", timeout=60), timeout=120),
        smoke=[SmokeStep(0, ExecStep(argv=["true"]))],
    )
    r = run_smoke(profile, base, traced=False, workdir=tmp_path)
    assert r.passed, r.failure
    assert r.seconds < 4.5, f"waited out the 5 s grace of a graceful stop ({r.seconds}s)"
    assert docker_client.containers.list(all=True, filters={"label": "org.tracer.smoke=stubborn"}) \
        == []


def test_http_steps_of_a_traced_run_ignore_the_proxy_in_the_environment(
    docker_client, fixture_image, tmp_path, monkeypatch
):
    """A service answers on loopback; http_proxy names a listener the test owns, which
    must never see a connection."""
    import socket

    from loopback import server as loopback_server

    contacted: list[bytes] = []
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = fixture_image("base")
    server = (f"exec perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new("
              f"LocalAddr=>\"127.0.0.1\",LocalPort=>{port},Listen=>5,ReuseAddr=>1) or die; "
              "$|=1; print \"ready\\n\"; while($c=$s->accept){<$c>; print $c \"HTTP/1.0 200 OK"
              "\\r\\n\\r\\nfrom the app\\n\"; close $c}'")
    profile = Profile(
        name="proxied", image=base,
        run=RunSpec(entrypoint=["sh", "-c", server], cmd=[], network="host",
                    ready=Ready(log="ready", timeout=60), timeout=120),
        smoke=[SmokeStep(0, HttpStep(url=f"http://127.0.0.1:{port}/", body="from the app"))],
    )
    with loopback_server(lambda conn: contacted.append(conn.recv(1024))) as proxy_port:
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{proxy_port}")
        r = run_smoke(profile, base, traced=True, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)
    assert contacted == []
