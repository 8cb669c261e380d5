"""What a killed tracer leaves behind is removed by the next run, and only that.

SIGKILL (or a power cut) skips every cleanup: the work directory and the run's containers
stay. The next tracer run removes them and says so on stderr; a live tracer process's work
directory and containers, and anything without tracer's lock file or labels, stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from image_builders import M, docker_archive, layer, run_tracer

from tracer.workdir import (
    LOCK_NAME,
    OWNER_LABEL,
    Owner,
    current_owner,
    start_time,
    sweep,
    sweep_engine,
    sweep_workdirs,
    temp_tag,
)

REPO = Path(__file__).resolve().parent.parent
_HOLDER = """
import sys, time
from tracer.workdir import workdir
with workdir() as work:
    (work / "data").write_bytes(b"x" * 3_000_000)
    print(work, flush=True)
    time.sleep(600)
"""


def _holder(root: Path) -> tuple[subprocess.Popen, Path]:
    """A process holding a work directory under `root`; returns it and the directory."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, TRACER_WORKDIR=str(root)))
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, "the holder did not start"
    return proc, Path(line)


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _dead_owner() -> Owner:
    """An Owner on this host whose process has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    me = current_owner()
    return Owner(me.host, proc.pid, 1, me.boot, me.pidns)


def test_killed_runs_work_dir_is_swept_by_the_next_run(tmp_path: Path) -> None:
    root = tmp_path / "work"
    dead, dead_dir = _holder(root)
    _kill(dead)
    assert (dead_dir / "data").exists(), "SIGKILL ran no cleanup"
    archive = docker_archive(tmp_path / "in.tar", [layer(M("bin", "dir"),
                                                         M("bin/app", data=b"#!/bin/sh\n"))])
    done = run_tracer(["ldd", f"docker-archive:{archive}"], env={"TRACER_WORKDIR": str(root)})
    assert done.returncode == 0, done.stderr
    assert not dead_dir.exists()
    assert (f"tracer: removed 1 work directory left by dead tracer processes in {root} "
            f"(3 MB freed): {dead_dir.name}") in done.stderr
    assert os.listdir(root) == []


def test_a_live_runs_work_dir_is_untouched(tmp_path: Path) -> None:
    root = tmp_path / "work"
    live, live_dir = _holder(root)
    dead, dead_dir = _holder(root)
    try:
        _kill(dead)
        lines: list[str] = []
        removed = sweep(root, say=lines.append)
        assert [r.name for r in removed] == [str(dead_dir)]
        assert (live_dir / "data").exists() and not dead_dir.exists()
        assert len(lines) == 1 and dead_dir.name in lines[0] and live_dir.name not in lines[0]
        assert sweep(root, say=lines.append) == []  # nothing more to do: no line
        assert len(lines) == 1
    finally:
        _kill(live)
    # its lock died with it: now it is a leftover too
    assert [r.name for r in sweep_workdirs(root)] == [str(live_dir)]


def test_only_tracer_work_dirs_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    unlabelled = root / "tracer-older"  # an older tracer's, or anyone's: no lock file
    unlabelled.mkdir()
    other_host = root / "tracer-nfs"  # a shared TMPDIR: another host's to judge
    other_host.mkdir()
    (other_host / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    starting = root / "tracer-new"  # lock file created, owner not yet written
    starting.mkdir()
    (starting / LOCK_NAME).touch()
    not_ours = root / "other-dir"
    not_ours.mkdir()
    (not_ours / LOCK_NAME).write_text(json.dumps({"host": current_owner().host}))
    assert sweep_workdirs(root) == []
    assert all(p.exists() for p in (unlabelled, other_host, starting, not_ours))
    # an owner killed between creating its lock file and writing to it: swept when stale
    old = time.time() - 3600
    os.utime(starting / LOCK_NAME, (old, old))
    assert [r.name for r in sweep_workdirs(root)] == [str(starting)]


def test_owner_liveness() -> None:
    me = current_owner()
    assert me.alive() is True
    assert Owner.from_labels(me.labels()) == me
    tagged = Owner.from_tag(temp_tag("candidate"))
    assert tagged is not None and tagged.alive() is True and tagged.pid == me.pid
    assert Owner.from_tag(_dead_owner().token.join("--")).alive() is False  # type: ignore[union-attr]
    assert Owner.from_tag("candidate-0123456789ab") is None
    dead = _dead_owner()
    assert dead.alive() is False
    reused = Owner(me.host, me.pid, me.start + 1, me.boot, me.pidns)  # same pid, later start
    assert reused.alive() is False
    assert Owner("elsewhere", me.pid, me.start, me.boot, me.pidns).alive() is None
    assert Owner(me.host, me.pid, me.start, me.boot, "1").alive() is None  # other pid ns
    assert Owner(me.host, me.pid, me.start, "old-boot", me.pidns).alive() is False
    assert start_time(dead.pid) is None
    assert Owner.from_labels({"org.tracer.smoke": "x"}) is None
    assert Owner.from_labels({OWNER_LABEL: "garbage"}) is None


# ---------------------------------------------------------------- the engine


def _create(docker_client, name: str, labels: dict[str, str]):
    return docker_client.containers.create("tracer-fixture/base:bookworm", ["true"],
                                           name=name, labels=labels, network_mode="none")


@pytest.mark.integration
def test_engine_sweep_removes_only_dead_owners_labelled_things(engine, tmp_path: Path) -> None:
    """On Podman too, which lists the temporary images as `localhost/tracer-tmp/...`."""
    import docker

    from tracer.engine import FLAVOURS

    engine.image("base")
    docker_client, cli = engine.client, engine.name
    tag = uuid.uuid4().hex[:8]
    dead, me = _dead_owner(), current_owner()
    containers = {
        "dead": dead.labels(),
        "live": me.labels(),
        "foreign": Owner("elsewhere", 1, 1, "", "").labels(),
        "unlabelled": {},
        "smoke-only": {"org.tracer.smoke": "x"},
    }
    made = [_create(docker_client, f"bounds-{tag}-{what}", labels)
            for what, labels in containers.items()]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM tracer-fixture/base:bookworm\n")
    images = {"dead": dead, "live": me}
    tags = {what: f"tracer-tmp/bounds-{tag}:{what}" for what in images}
    # the owner in the tag instead of a label (what temp_tag() makes)
    tags["dead-token"] = f"tracer-tmp/bounds-{tag}:candidate-{dead.token}-x"
    tags["live-token"] = f"tracer-tmp/bounds-{tag}:candidate-{me.token}-y"
    published = f"tracer-test/bounds-{tag}:published"
    try:
        for what, owner in images.items():
            labels = [a for k, v in owner.labels().items() for a in ("--label", f"{k}={v}")]
            subprocess.run([cli, "build", "--network", "none", "-q", *labels, "-t",
                            tags[what], str(ctx)], check=True, capture_output=True)
        subprocess.run([cli, "build", "--network", "none", "-q", "-t", tags["dead-token"],
                        "-t", tags["live-token"], str(ctx)], check=True, capture_output=True)
        # the dead owner's image was also published under another name: that tag stays
        docker_client.images.get(tags["dead"]).tag(*published.rsplit(":", 1))
        removed = sweep_engine(docker_client, local_name=FLAVOURS[engine.name].local_name)
        mine = sorted((r.kind, r.name) for r in removed if tag in r.name)
        # another tracer process on the engine may sweep the dead owner's things first:
        # this sweep removes at most them, and afterwards they are gone
        assert set(mine) <= {("container", f"bounds-{tag}-dead"),
                             ("temporary image", tags["dead-token"]),
                             ("temporary image", tags["dead"])}
        for dead_tag in (tags["dead-token"], tags["dead"]):
            assert dead_tag not in {t for i in docker_client.images.list() for t in i.tags}
        docker_client.images.get(tags["live-token"])
        left = {c.name for c in docker_client.containers.list(all=True) if tag in c.name}
        assert left == {f"bounds-{tag}-{w}" for w in ("live", "foreign", "unlabelled",
                                                      "smoke-only")}
        docker_client.images.get(tags["live"])
        docker_client.images.get(published)
        with pytest.raises(docker.errors.NotFound):
            docker_client.images.get(tags["dead"])
    finally:
        for c in made:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        for ref in (*tags.values(), published):
            with contextlib.suppress(docker.errors.NotFound):  # Podman: not ImageNotFound
                docker_client.images.remove(ref)


SLEEPER = """\
version: 1
name: {name}
image: docker-daemon:tracer-fixture/base:bookworm
output: docker-daemon:tracer-test/{name}:min
run:
  entrypoint: ["sleep"]
  cmd: ["300"]
  network: none
  mode: job
  exit: 0
  timeout: 600s
smoke: []
"""


def _start_sleeper(tmp_path: Path, root: Path, docker_client, name: str
                   ) -> tuple[subprocess.Popen, str, Path]:
    """Start `tracer minimize` of a profile whose job sleeps; wait until its traced
    container runs. Returns the process, its container's name and its work directory."""
    profile = tmp_path / f"{name}.yaml"
    profile.write_text(SLEEPER.format(name=name))
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "minimize", str(profile),
                             "--quiet"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TRACER_WORKDIR=str(root)))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = docker_client.containers.list(filters={"label": f"org.tracer.smoke={name}"})
        if running:
            owner = Owner.from_labels(running[0].labels)
            assert owner is not None and owner.pid == proc.pid
            work = [p for p in root.iterdir() if (p / LOCK_NAME).exists()
                    and json.loads((p / LOCK_NAME).read_text())["pid"] == proc.pid]
            assert len(work) == 1
            return proc, running[0].name, work[0]
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the traced container never started")


@pytest.mark.integration
def test_sigkilled_minimize_is_cleaned_up_by_the_next_run(engine, host_strace,
                                                          tmp_path: Path) -> None:
    import docker

    engine.image("base")
    docker_client = engine.client
    root = tmp_path / "work"
    tag = uuid.uuid4().hex[:8]
    killed, killed_container, killed_dir = _start_sleeper(tmp_path, root, docker_client,
                                                          f"bounds-killed-{tag}")
    live, live_container, live_dir = _start_sleeper(tmp_path, root, docker_client,
                                                    f"bounds-live-{tag}")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_dir.exists(), "SIGKILL ran no cleanup"
        docker_client.containers.get(killed_container)  # still there
        # The next run: any tracer command that uses the engine sweeps on start. This one
        # then stops at once (its image does not exist).
        missing = tmp_path / "missing.yaml"
        missing.write_text(SLEEPER.format(name=f"bounds-next-{tag}").replace(
            "tracer-fixture/base:bookworm", f"tracer-test/bounds-none-{tag}:absent"))
        done = run_tracer(["minimize", str(missing), "--quiet"], cwd=REPO,
                          env={"TRACER_WORKDIR": str(root)})
        assert done.returncode == 2, done.stderr
        assert (f"tracer: removed 1 work directory left by dead tracer processes in {root}"
                in done.stderr), done.stderr
        assert killed_dir.name in done.stderr
        assert (f"tracer: removed 1 container left by dead tracer processes: "
                f"{killed_container}") in done.stderr
        assert not killed_dir.exists()
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(killed_container)
        # the live run is untouched, and still cleans up after itself
        assert live_dir.exists() and live.poll() is None
        assert docker_client.containers.get(live_container).status == "running"
        live.send_signal(signal.SIGINT)
        assert live.wait(timeout=180) == 130
        assert not live_dir.exists()
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in (killed_container, live_container):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(name).remove(force=True)
