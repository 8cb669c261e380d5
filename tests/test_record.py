"""`tracer record` on the real engine: production evidence, end to end.

A service runs as a plain container of its original image (as in production); the
recorder attaches to it while requests the profile's smoke test never makes come in,
and is stopped with SIGTERM. `tracer minimize` at file granularity with that recording
keeps what those requests need, and without it the same requests fail. Jobs are recorded
by image, however short; the recorder refuses up front where it cannot work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from prereq import missing

from tracer.analysis.recording import read_recording
from tracer.trace import fanotify

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
PYAPP_PORT = 8081  # the pyapp fixture's fixed port
# production-style requests the trimmed profile's smoke test does not make; each imports
# a module (and a C extension with its library) the smoke test never loads
PRODUCTION = {"/sqlite": "sqlite-sum=55", "/xml": "xml-items=a,b,c",
              "/decimal": "decimal=0.142857", "/hash": "sha256="}
LABEL = {"org.tracer.test": "record"}


@pytest.fixture(autouse=True)
def needs_fanotify() -> None:
    reason = fanotify.available()
    if reason is not None:
        missing(f"tracer record needs fanotify: {reason}")


def tracer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


class Recorder:
    """`tracer record ...` in the background; `started()` waits until it records."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.err = tmp_path / f"record-{uuid.uuid4().hex[:6]}.err"
        self.proc = subprocess.Popen([sys.executable, "-m", "tracer", "record", *args],
                                     cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=self.err.open("w"), text=True)

    def started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "tracer: recording " not in self.err.read_text():
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, "the recorder never started"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str, str]:
        if sig:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode, out, self.err.read_text()


def get(path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PYAPP_PORT}{path}",
                                    timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextlib.contextmanager
def service(docker_client, image: str, name: str):
    """The image as production runs it: a plain container, nothing added."""
    with contextlib.suppress(Exception):
        docker_client.containers.get(name).remove(force=True)
    c = docker_client.containers.run(image, detach=True, network_mode="host", name=name,
                                     labels=LABEL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get("/", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            c.reload()
            assert c.status == "running" and time.monotonic() < deadline, \
                c.logs().decode(errors="replace")
            time.sleep(0.2)
        yield c
    finally:
        c.remove(force=True)


def trimmed_profile(tmp_path: Path, name: str, output: str, evidence: list[str]) -> Path:
    """profiles/pyapp.yaml whose smoke test requests only / and /json."""
    data = yaml.safe_load((REPO / "profiles" / "pyapp.yaml").read_text())
    data["name"], data["output"] = name, f"docker-daemon:{output}"
    data["smoke"] = [s for s in data["smoke"]
                     if s["http"]["url"].endswith((":8081/", "/json"))]
    if evidence:
        data["keep"]["evidence"] = evidence
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_recorded_production_requests_survive_minimization_at_file_granularity(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    image = fixture_image("pyapp")
    evidence = tmp_path / "evidence" / "pyapp-prod.rec"
    evidence.parent.mkdir()
    name = f"tracer-test-record-{uuid.uuid4().hex[:6]}"
    with service(docker_client, image, name) as container:
        recorder = Recorder(tmp_path, name, "-o", str(evidence))
        recorder.started()
        for path, body in PRODUCTION.items():  # production traffic, while recording
            status, text = get(path)
            assert status == 200 and body in text, (path, status, text)
        code, out, err = recorder.stop(signal.SIGTERM)
    assert code == 0, err
    assert "stopped by the operator" in out and str(evidence) in out
    rec = read_recording(evidence)
    assert [(c.name, c.id, c.seen) for c in rec.containers] == [
        (name, container.id[:12], "attached")]
    assert rec.image == image and rec.image_id == container.image.id
    recorded = set(rec.paths)
    assert "/usr/lib/python3.11/sqlite3/__pycache__/__init__.cpython-311.pyc" in recorded
    assert any("_sqlite3" in p for p in recorded) and any("_hashlib" in p for p in recorded)
    assert rec.paths["/usr/bin/python3.11"].kinds >= {"exec"}  # mapped when it attached
    assert not any(p.startswith("/var/lib/docker") for p in recorded), "container paths only"

    outputs = {True: f"tracer-test/record-ev:{uuid.uuid4().hex[:8]}",
               False: f"tracer-test/record-noev:{uuid.uuid4().hex[:8]}"}
    try:
        with_ev = trimmed_profile(tmp_path, "pyapp-ev", outputs[True],
                                  ["evidence/pyapp-prod.rec"])
        without = trimmed_profile(tmp_path, "pyapp-noev", outputs[False], [])
        report = tmp_path / "ev.json"
        proc = tracer("minimize", str(with_ev), "--report", str(report))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert f"evidence: {evidence}: " in proc.stdout
        data = json.loads(report.read_text())
        assert data["kept"]["evidence"] > 0 and data["evidence"][0]["file"] == str(evidence)
        proc = tracer("minimize", str(without))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        for with_evidence, output in outputs.items():
            with service(docker_client, output, f"{name}-{int(with_evidence)}"):
                answers = {path: get(path) for path in PRODUCTION}
            for path, body in PRODUCTION.items():
                status, text = answers[path]
                if with_evidence:
                    assert status == 200 and body in text, (path, status, text)
                else:  # what the smoke test never walked is gone without the evidence
                    assert status == 500 and "ModuleNotFoundError" in text, (path, text)
        why = tracer("why", str(report), "/usr/lib/python3.11/sqlite3/__init__.py")
        assert why.returncode == 0 and "evidence: seen in production: /usr/bin/python3.11" \
            f" read __init__.cpython-311.pyc, whose source Python checks first, recorded " \
            f"{rec.date} from {name} on " in why.stdout
    finally:
        for output in outputs.values():
            with contextlib.suppress(Exception):
                docker_client.images.remove(output, force=True)


@pytest.fixture
def job_image(engine, tmp_path: Path):
    """An image of its own (a unique layer: no other test's containers are of it), with a
    data file per job so each container's one read shows in the recording; in the engine
    under test."""
    docker_client, fixture_image = engine.client, engine.image
    fixture_image("base")
    context = tmp_path / "job-context"
    context.mkdir()
    for i in range(10):
        (context / f"data-{i}.txt").write_text(f"job {i} {uuid.uuid4()}\n")
    (context / "Dockerfile").write_text(f"FROM {fixture_image('base')}\nCOPY data-*.txt "
                                        "/srv/job/\n")
    tag = f"tracer-test/record-job:{uuid.uuid4().hex[:8]}"
    docker_client.images.build(path=str(context), tag=tag, network_mode="host", rm=True,
                               labels=LABEL)
    yield tag
    with contextlib.suppress(Exception):
        docker_client.images.remove(tag, force=True)


def test_record_image_sees_every_short_job_from_its_first_exec(
        engine, job_image: str, tmp_path: Path) -> None:
    """On Podman too, whose container overlays have no -init layer."""
    docker_client, fixture_image = engine.client, engine.image
    out = tmp_path / "jobs.rec"
    recorder = Recorder(tmp_path, "--image", job_image, "-o", str(out))
    recorder.started()
    jobs = 5
    for i in range(jobs):  # `cat FILE`: one exec, the loader, libc, one read, done
        docker_client.containers.run(job_image, ["cat", f"/srv/job/data-{i}.txt"],
                                     network_mode="none", remove=True, labels=LABEL)
    # another image's container on the same host is not recorded
    docker_client.containers.run(fixture_image("base"), ["cat", "/etc/debian_version"],
                                 network_mode="none", remove=True, labels=LABEL)
    code, stdout, err = recorder.stop(signal.SIGINT)
    assert code == 0, err
    rec = read_recording(out)
    assert len(rec.containers) == jobs and {c.seen for c in rec.containers} == {"start"}, err
    for i in range(jobs):
        assert rec.paths[f"/srv/job/data-{i}.txt"].programs == ("/usr/bin/cat",)
    assert rec.paths["/usr/bin/cat"].kinds == {"exec"}
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in rec.paths
    assert "/etc/debian_version" not in rec.paths
    assert not any(p.startswith(("/var/lib/docker", "/run/docker", "/var/lib/containers",
                                 "/run/containers")) for p in rec.paths)
    assert f"{len(rec.paths)} paths from {jobs} containers of {job_image}" in stdout


def test_recording_ends_when_the_container_does(engine, tmp_path: Path) -> None:
    docker_client, fixture_image = engine.client, engine.image
    name = f"tracer-test-record-{uuid.uuid4().hex[:6]}"
    c = docker_client.containers.run(
        fixture_image("base"), ["sh", "-c", "sleep 3; cat /etc/debian_version"],
        detach=True, network_mode="none", name=name, labels=LABEL)
    try:
        out = tmp_path / "ends.rec"
        recorder = Recorder(tmp_path, name, "-o", str(out), "--for", "5m")
        recorder.started()
        code, stdout, err = recorder.stop(sig=0, timeout=60)
    finally:
        c.remove(force=True)
    assert code == 0, err
    assert "(the container stopped)" in stdout
    rec = read_recording(out)
    assert rec.paths["/etc/debian_version"].programs == ("/usr/bin/cat",)
    assert "exec" in rec.paths["/usr/bin/cat"].kinds


def test_record_refuses_up_front_where_it_cannot_record(docker_client, fixture_image,
                                                        tmp_path: Path) -> None:
    out = str(tmp_path / "x.rec")
    proc = tracer("record", f"no-such-container-{uuid.uuid4().hex[:6]}", "-o", out)
    assert proc.returncode == 2 and "no container" in proc.stderr
    created = docker_client.containers.create(fixture_image("base"), ["true"],
                                              labels=LABEL)
    try:
        proc = tracer("record", created.id, "-o", out)
        assert proc.returncode == 4 and "is not running (status: created)" in proc.stderr
    finally:
        created.remove(force=True)
    proc = tracer("record", "x", "--image", "y", "-o", out)
    assert proc.returncode == 2 and "one of the two" in proc.stderr
    proc = tracer("record", "x", "-o", out, "--for", "soon")
    assert proc.returncode == 2 and "--for 'soon'" in proc.stderr
    proc = tracer("record", "x", "-o", str(tmp_path / "no" / "x.rec"))
    assert proc.returncode == 2 and "does not exist or is not writable" in proc.stderr
    proc = tracer("record", "--image", "tracer-test/no-such-image:1", "-o", out)
    assert proc.returncode == 2 and "not in the Docker engine" in proc.stderr
    assert not Path(out).exists()
    # not root: exit 4, before anything else is tried
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        missing("setpriv is not installed (util-linux)")
    # scripts/setup's environment for unprivileged users: root's own Python may live
    # where they cannot read it (/root)
    python = "/opt/tracer/rootless-venv/bin/python"
    if not os.access(python, os.X_OK):
        missing(f"{python} (made by scripts/setup for runs as another user) is missing")
    unprivileged = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-m",
         "tracer", "record", "anything", "-o", "/tmp/never-written.rec"],
        capture_output=True, text=True, cwd="/", timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    if "No module named" in unprivileged.stderr or unprivileged.returncode in (126, 127):
        missing(f"python cannot run as an unprivileged user here: {unprivileged.stderr}")
    assert unprivileged.returncode == 4, unprivileged.stderr
    assert "cannot record: not running as root" in unprivileged.stderr


def test_a_duration_ends_the_recording(docker_client, fixture_image, tmp_path: Path) -> None:
    name = f"tracer-test-record-{uuid.uuid4().hex[:6]}"
    c = docker_client.containers.run(fixture_image("base"), ["sleep", "300"], detach=True,
                                     network_mode="none", name=name, labels=LABEL)
    try:
        out = tmp_path / "timed.rec"
        started = time.monotonic()
        proc = tracer("record", name, "-o", str(out), "--for", "2s", timeout=120)
        took = time.monotonic() - started
    finally:
        c.remove(force=True)
    assert proc.returncode == 0 and "(the duration ended)" in proc.stdout, proc.stderr
    assert took < 60
    rec = read_recording(out)
    assert rec.paths["/usr/bin/sleep"].kinds == {"exec", "mapped"}  # running at attach
    assert 2 <= rec.end - rec.start <= 10
