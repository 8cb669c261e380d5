"""Reading what a run printed ends with the run: its timeout bounds it, only the tail is read.

The engine keeps every line a container prints. A job printing empty lines until its 20 s
timeout left millions of them, and tracer then read the whole log (several times: stdout,
stderr, strace's messages) for 693 s; with a 120 s timeout it was still reading after 16
minutes. Now it asks the engine for the last lines only, by a deadline derived from the
run's timeout.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from image_builders import run_tracer

from tracer.trace.docker_runner import DockerRunner, connect

pytestmark = pytest.mark.integration


def test_a_job_printing_empty_lines_until_its_timeout(fixture_image, tmp_path: Path):
    base = fixture_image("base")
    profile = tmp_path / "p.yaml"
    profile.write_text(
        f"version: 1\nname: empty-lines\nimage: docker-daemon:{base}\n"
        "output: docker-daemon:tracer-test/bounds-empty-lines:min\n"
        "run:\n  mode: job\n  entrypoint: ['yes', '']\n  cmd: []\n  timeout: 10s\n")
    res = run_tracer(["minimize", str(profile)], env={"TRACER_WORKDIR": str(tmp_path)},
                     timeout=600)
    # traced, then untraced: each run 10 s, and its output read by 10 s after that
    assert res.returncode == 3, res.stderr[-3000:]
    assert "did not finish within the run timeout of 10s" in res.stderr
    assert res.seconds < 120, f"reading the output took {res.seconds:.0f}s"
    assert res.max_rss_mb < 400


def test_the_tail_is_the_end_of_the_output_and_a_late_read_says_it_was_cut(fixture_image):
    client = connect()
    name = f"tracer-test-logs-{uuid.uuid4().hex[:10]}"
    script = "seq 1 200000; echo LAST"
    container = client.containers.run(fixture_image("base"), ["sh", "-c", script], name=name,
                                      network_mode="none", detach=True,
                                      labels={"org.tracer.test": "logs"})
    try:
        container.wait(timeout=60)
        runner = DockerRunner(client, output_cap=4096)
        text = runner.logs(container)
        assert text.rstrip().endswith("199999\n200000\nLAST")
        assert len(text.encode()) < 4096 + 100  # the cap, and the line saying so
        assert runner.tail_lines < 200_000  # never the whole log
        runner.read_deadline = 0.0  # long past: a read gets MIN_READ seconds, then stops
        assert "LAST" in runner.logs(container)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
