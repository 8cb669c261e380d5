"""Every pipe and FIFO tracer writes into may be full: no EAGAIN ends a run (exit 70).

A fanotify-only run (the app refuses to be traced) holds each `command` step's app behind
a gate, a FIFO tracer writes one line into. The gates are mounted read-only, which does
not stop a process running as root in the container from writing into them: it filled the
gate of a later step, and tracer's write failed with EAGAIN, exit 70.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from image_builders import run_tracer
from prereq import missing

from tracer.trace import fanotify

pytestmark = pytest.mark.integration

# refuses to run traced (so tracer records it with fanotify alone), then keeps the gate of
# the later command step full: a writer refills it whenever anything reads from it; the
# service gets ready only once the gate is full (untraced there is no gate)
APP = r"""
if grep -Eq 'TracerPid:[[:space:]]*[1-9]' /proc/self/status; then echo "traced: no"; exit 1; fi
gate=/.tracer-out/go-smoke-0-command.fifo
if [ -p "$gate" ]; then
  exec 3<>"$gate"
  head -c 65536 /dev/zero >&3 || { echo "could not fill $gate"; exit 1; }
  ( while :; do head -c 65536 /dev/zero; done ) >&3 &
fi
echo ready
exec sleep 1000
"""


def test_a_root_app_filling_a_later_steps_gate(fixture_image, tmp_path: Path):
    if fanotify.available() is not None:
        missing(f"fanotify-only runs need fanotify: {fanotify.available()}")
    base = fixture_image("base")
    profile = tmp_path / "p.yaml"
    profile.write_text(
        f"version: 1\nname: gate-filler\nimage: docker-daemon:{base}\n"
        "output: docker-daemon:tracer-test/security-pipes:min\n"
        f"run:\n  entrypoint: [sh, -c, {json.dumps(APP)}]\n  cmd: []\n"
        "  ready: {log: '^ready$', timeout: 60s}\n  timeout: 120s\n"
        "smoke:\n  - command: [cat, /etc/hostname]\n    timeout: 30s\n")
    res = run_tracer(["minimize", str(profile)], env={"TRACER_WORKDIR": str(tmp_path)},
                     timeout=900)
    subprocess.run(["docker", "rmi", "-f", "tracer-test/security-pipes:min"],
                   capture_output=True)
    out = res.stdout + res.stderr
    assert "recorded with fanotify alone" in out, out[-3000:]
    # tracer reads out what the app wrote and opens the gate, unless the app refills it
    # faster: then that step is not started and the smoke test fails on the original
    # (exit 3), saying why; never exit 70 on EAGAIN, never a hang
    assert res.returncode in (0, 3), out[-3000:]
    if res.returncode == 3:
        assert "kept the gate of smoke[0].command full" in out, out[-3000:]
    assert res.seconds < 300 and res.max_rss_mb < 400
