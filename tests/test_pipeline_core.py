"""The pipeline's own promises, end to end against the real engine.

- The image that is read is the image that is traced: a tag moved mid-run (a build or a
  pull on the same host retags `app:latest`) must not give a keep-list of one image
  written from another.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path

import pytest

import tracer.pipeline as pipeline
from tracer.profile import load_profile
from tracer.progress import Progress

pytestmark = pytest.mark.integration

RETAG_DOCKERFILE = """FROM tracer-fixture/base:bookworm
RUN mkdir -p /app && echo "config {name} ok" > /app/{name}.conf
ENTRYPOINT ["/bin/cat", "/app/{name}.conf"]
"""


@pytest.fixture(scope="module")
def two_images(docker_client, fixture_image, tmp_path_factory):
    """Two images whose job reads a different file each (`/app/a.conf`, `/app/b.conf`)."""
    fixture_image("base")
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


@pytest.mark.parametrize("user", ["0", "65534"])  # read while traced / read, then traced
def test_a_tag_moved_mid_run_changes_neither_the_read_nor_the_traced_image(
        two_images, docker_client, host_strace, monkeypatch, tmp_path: Path,
        user: str) -> None:
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
        docker_client.images.get(ids["b"]).tag(repo, "input")
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
