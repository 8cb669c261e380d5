"""The pipeline's own promises, end to end against the real engine.

- The image that is read is the image that is traced: a tag moved mid-run (a build or a
  pull on the same host retags `app:latest`) must not give a keep-list of one image
  written from another.
- `tracer diagnose` does not blame the minimized image for a profile that fails on the
  original (exit 3).
- Outputs are reproducible through the whole pipeline, across host names, work dirs,
  umasks, time zones and image readers, for every output transport.

The engine-bound ones run on Podman too (the `engine` fixture).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path

import pytest

import tracer.pipeline as pipeline
from tracer.profile.load import load_profile
from tracer.progress import Progress

pytestmark = pytest.mark.integration

RETAG_DOCKERFILE = """FROM tracer-fixture/base:bookworm
RUN mkdir -p /app && echo "config {name} ok" > /app/{name}.conf
ENTRYPOINT ["/bin/cat", "/app/{name}.conf"]
"""


@pytest.fixture
def two_images(engine, tmp_path_factory):
    """Two images whose job reads a different file each (`/app/a.conf`, `/app/b.conf`)."""
    docker_client = engine.client
    engine.image("base")
    repo = f"tracer-test/rcore-retag-{uuid.uuid4().hex[:8]}"
    ids = {}
    for name in ("a", "b"):
        ctx = tmp_path_factory.mktemp(f"retag-{name}")
        (ctx / "Dockerfile").write_text(RETAG_DOCKERFILE.format(name=name))
        image, _ = docker_client.images.build(path=str(ctx), tag=f"{repo}:{name}",
                                              network_mode="none", rm=True, forcerm=True)
        ids[name] = image.id
    yield repo, ids
    for tag in ("a", "b", "input", "output"):
        with contextlib.suppress(Exception):
            docker_client.images.remove(f"{repo}:{tag}")


@pytest.mark.parametrize("user,engine", [("0", "docker"), ("65534", "docker"),
                                         ("65534", "podman")], indirect=["engine"])
def test_a_tag_moved_mid_run_changes_neither_the_read_nor_the_traced_image(
        two_images, engine, host_strace, monkeypatch, tmp_path: Path, user: str) -> None:
    """user 0: read while traced; 65534: read, then traced."""
    docker_client = engine.client
    repo, ids = two_images
    docker_client.images.get(ids["a"]).tag(repo, "input")
    profile_path = tmp_path / "retag.yaml"
    profile_path.write_text(f"""version: 1
name: rcore-retag
image: docker-daemon:{repo}:input
output: docker-daemon:{repo}:output
run:
  mode: job
  network: none
  user: "{user}"
  stdout: "config a ok"
  timeout: 60s
""")
    # Another process moves the tag once the image was read and before the trace starts
    # (the traced run waits for it when both run at once): the worst moment.
    read = threading.Event()
    traced_images: list[str] = []
    real_prepare, real_trace = pipeline.prepare, pipeline.trace_original

    def prepare(*args, **kwargs):
        prepared = real_prepare(*args, **kwargs)
        docker_client.images.get(ids["b"]).tag(repo, "input", force=True)
        read.set()
        return prepared

    def trace_original(profile, image, **kwargs):
        assert read.wait(120)
        traced_images.append(docker_client.images.get(image).id)
        return real_trace(profile, image, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", prepare)
    monkeypatch.setattr(pipeline, "trace_original", trace_original)
    report = pipeline.minimize(load_profile(profile_path), progress=Progress(quiet=True))
    assert traced_images == [ids["a"]]
    assert report.verified, report.failure
    assert docker_client.images.get(f"{repo}:input").id == ids["b"]  # it did move


def test_diagnose_exits_3_when_the_smoke_test_fails_on_the_original(
        fixture_image, host_strace, tmp_path: Path) -> None:
    """A diagnosis compares the minimized run with a passing original run; against a
    failing one it would blame the minimized image (exit 1) for the profile's fault."""
    import subprocess
    import sys

    import yaml

    fixture_image("tmpjob")
    repo = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((repo / "profiles/tmpjob.yaml").read_text())
    data["run"]["stdout"] = "(?m)^tmpjob: this line is never printed$"
    profile = tmp_path / "tmpjob.yaml"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "tracer", "diagnose", str(profile), "--quiet",
                           "--image", "docker-daemon:tracer-fixture/tmpjob:test"],
                          capture_output=True, text=True, cwd=repo, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "fails on the original image" in proc.stderr


@pytest.mark.parametrize("transport,engine", [
    ("docker-daemon", "docker"), ("docker-archive", "docker"), ("oci", "docker")],
    indirect=["engine"])  # Podman: the same output as Docker's (test_minimize)
def test_two_runs_on_two_hosts_give_one_output_digest(
        engine, host_strace, tmp_path: Path, transport: str) -> None:
    """The whole pipeline, twice: another host name, work dir, umask, time zone and image
    reader must not change a byte of the output (README, "Outputs are reproducible"), nor a
    line of the keep-list (nightly jobs diff them)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from prereq import missing

    docker_client = engine.client
    engine.image("tmpjob")
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        missing("a second host name needs root and unshare(1)")
    repo = Path(__file__).resolve().parent.parent
    tag = f"rcore-repro-{uuid.uuid4().hex[:8]}"
    digests, outputs = [], []
    for n, (host, reader, umask, tz) in enumerate([("build-a", "auto", "022", "UTC"),
                                                   ("build-b", "save", "077", "Asia/Tokyo")]):
        work = tmp_path / f"work{n}"
        work.mkdir()
        output = {"docker-daemon": f"docker-daemon:tracer-test/{tag}:{n}",
                  "docker-archive": f"docker-archive:{tmp_path}/out{n}.tar:tracer-test/x:1",
                  "oci": f"oci:{tmp_path}/out{n}:min"}[transport]
        outputs.append(output)
        report = tmp_path / f"r{n}.json"
        env = {**os.environ, "TRACER_WORKDIR": str(work), "TRACER_IMAGE_READER": reader,
               "TZ": tz}
        script = (f"hostname {host} && umask {umask} && exec {sys.executable} -m tracer "
                  f"minimize profiles/tmpjob.yaml --quiet --output {output} --report {report}")
        proc = subprocess.run([unshare, "--uts", "sh", "-c", script], capture_output=True,
                              text=True, cwd=repo, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        digests.append(json.loads(report.read_text())["output_digest"])
    try:
        assert digests[0] == digests[1] and digests[0].startswith("sha256:")
        keeplists = [(tmp_path / f"r{n}.keeplist").read_text() for n in (0, 1)]
        assert keeplists[0] == keeplists[1] and "traced: " in keeplists[0]
        if transport == "docker-archive":
            assert (tmp_path / "out0.tar").read_bytes() == (tmp_path / "out1.tar").read_bytes()
    finally:
        for output in outputs:
            if output.startswith("docker-daemon:"):
                with contextlib.suppress(Exception):
                    docker_client.images.remove(output.split(":", 1)[1])
