"""The leftover sweep removes what dead tracer processes made, never what an image says.

A container inherits its image's labels. An image (or a base image, whose labels every
image built on it inherits) labelled `org.tracer.owner=HOST:1:1` with a scope naming
another boot looked like a dead tracer's leftover: the next tracer run on HOST removed,
with force and with their anonymous volumes, containers nobody made with tracer.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tracer.workdir import OWNER_LABEL, SCOPE_LABEL, sweep_engine

pytestmark = pytest.mark.integration


def test_containers_of_an_image_labelled_as_a_dead_tracer_stay(docker_client, fixture_image,
                                                               tmp_path: Path):
    import docker

    base = fixture_image("base")
    tag = f"tracer-test/rsec-owner-label:{uuid.uuid4().hex[:8]}"
    forged = {OWNER_LABEL: f"{socket.gethostname()}:1:1", SCOPE_LABEL: "another-boot/1"}
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\n")
    labels = [a for k, v in forged.items() for a in ("--label", f"{k}={v}")]
    subprocess.run(["docker", "build", "--network", "none", "-q", *labels, "-t", tag,
                    str(ctx)], check=True, capture_output=True)
    name = f"tracer-test-rsec-victim-{uuid.uuid4().hex[:8]}"
    # a dead tracer's leftover: the same labels, set on the container itself
    leftover = f"tracer-test-rsec-leftover-{uuid.uuid4().hex[:8]}"
    made = []
    try:
        made.append(docker_client.containers.create(tag, ["true"], name=name))
        made.append(docker_client.containers.create(base, ["true"], name=leftover,
                                                    labels=forged))
        removed = {r.name for r in sweep_engine(docker_client) if r.kind == "container"}
        assert name not in removed
        docker_client.containers.get(name)  # still there
        assert leftover in removed, "a real leftover is still swept"
    finally:
        for c in made:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
