"""What `tracer minimize` decides before any work: the plan's references are usable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
