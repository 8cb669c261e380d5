"""The pipeline's stages without the engine: the plan, the static closure's roots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from image_builders import M, flat_from_layers, layer

from tracer.budgets import Budgets
from tracer.image.config import ImageConfig
from tracer.pipeline import static_closure
from tracer.profile.model import Profile, RunSpec
from tracer.trace.result import SmokeResult

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("output", ["docker-archive:{tmp}/no/such/dir/out.tar",
                                    "oci:{tmp}/no/such/dir/layout", "oci:{profile}"])
def test_an_unwritable_output_is_bad_input_before_anything_runs(tmp_path: Path,
                                                                output: str) -> None:
    """Exit 2 naming the output at once, not after the trace and the verification (and
    not exit 4 for an engine this run never needed to reach)."""
    profile = REPO / "profiles" / "tmpjob.yaml"
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # nothing runs
    out = output.format(tmp=tmp_path, profile=profile)
    proc = subprocess.run([sys.executable, "-m", "tracer", "minimize", str(profile),
                           "--output", out, "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"output {out}" in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_relative_entrypoint_is_found_in_the_working_directory(tmp_path: Path) -> None:
    """`WORKDIR /app` + `ENTRYPOINT ["./server"]`: the container runs /app/server, and so
    does the static closure (an unresolved "/./server" in the report would be false)."""
    flat = flat_from_layers(tmp_path, layer(M("app", "dir"), M("app/server", data=b"data",
                                                                mode=0o755)))
    prepared = SimpleNamespace(flat=flat, root=flat.rootfs(),
                               config=ImageConfig.from_image_json(flat.config, "test"))
    profile = Profile(name="t", image="docker-daemon:t:1",
                      run=RunSpec(entrypoint=["./server"], workdir="/app"))
    closure, _ = static_closure(profile, prepared, SmokeResult(passed=True), Budgets())
    assert closure.missing == [] and "/app/server" in closure.files


def test_a_report_that_cannot_be_written_is_bad_input_before_anything_runs(
        tmp_path: Path) -> None:
    """Not exit 70 after the trace, when the report's directory turns out to be missing."""
    profile = REPO / "profiles" / "tmpjob.yaml"
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # nothing runs
    report = tmp_path / "no" / "such" / "r.json"
    proc = subprocess.run([sys.executable, "-m", "tracer", "minimize", str(profile),
                           "--output", f"oci:{tmp_path}/out", "--report", str(report)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"--report {report}" in proc.stderr
