"""On a busy build host tracer gives the same verdicts and leaves nothing behind.

On a loaded 2-core host (load average ~180) a smoke container of a stopped service was
left behind: the engine, slow to kill it, refused its forced removal, and cleanup tried
once. Here CPU hogs keep every core busy while a small batch runs (a service stopped with
a command and an exec step, and a job); the verdicts must be those of a quiet host and
nothing of the runs may be left, found by their own labels and names.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
HOGS_PER_CPU = 6

STOPPER = ('trap "cat /etc/debian_version >/dev/null; exit 0" TERM; sleep 1000 & '
           'until grep -q sleep /proc/$!/cmdline 2>/dev/null; do :; done; echo ready; wait')


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """`n` busy loops beside the test, ended (by pid) afterwards."""
    procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _profiles(root: Path, base: str, run_id: str) -> dict[str, str]:
    """Two profiles (name -> output reference) written under `root`."""
    docs = {
        f"load-service-{run_id}": {
            "run": {"entrypoint": ["sh", "-c", STOPPER], "cmd": [],
                    "ready": {"log": "^ready$", "timeout": "120s"}, "timeout": "300s"},
            "smoke": [{"command": ["cat", "/etc/hostname"]},
                      {"exec": ["cat", "/etc/os-release"], "stdout": "Debian"},
                      {"sleep": "1s"}],
        },
        f"load-job-{run_id}": {
            "run": {"mode": "job", "entrypoint": ["cat", "/etc/debian_version"], "cmd": [],
                    "stdout": "^12", "timeout": "300s"},
        },
    }
    outputs = {}
    for name, doc in docs.items():
        outputs[name] = f"docker-daemon:tracer-test/{name}:min"
        full = {"version": 1, "name": name, "image": f"docker-daemon:{base}",
                "output": outputs[name], **doc}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return outputs


def _left(names: list[str]) -> list[str]:
    """Containers and temporary images of these runs that are still there."""
    left = []
    for name in names:
        left += subprocess.run(["docker", "ps", "-aq", "--filter",
                                f"label=org.tracer.smoke={name}"],
                               capture_output=True, text=True, check=True).stdout.split()
        left += subprocess.run(["docker", "images", "-q", f"tracer-tmp/{name}"],
                               capture_output=True, text=True, check=True).stdout.split()
    return left


def test_a_batch_beside_cpu_hogs_gives_the_same_verdicts_and_leaves_nothing(
        fixture_image, host_strace, tmp_path: Path) -> None:
    base = fixture_image("base")
    run_id = uuid.uuid4().hex[:8]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    outputs = _profiles(profiles, base, run_id)
    out = tmp_path / "out"
    try:
        with cpu_hogs(HOGS_PER_CPU * (os.cpu_count() or 1)):
            proc = subprocess.run([sys.executable, "-m", "tracer", "batch", str(profiles),
                                   "--jobs", "2", "--out", str(out)], capture_output=True,
                                  text=True, cwd=REPO, timeout=1800,
                                  env={**os.environ, "TRACER_WORKDIR": str(tmp_path)})
        summary = json.loads((out / "summary.json").read_text())
        verdicts = {j["name"]: j["status"] for j in summary["jobs"]}
        assert verdicts == {name: "passed" for name in outputs}, proc.stdout + proc.stderr
        assert proc.returncode == 0
        assert "could not remove" not in proc.stderr + "".join(
            (out / name / "run.log").read_text() for name in outputs)
        assert _left(list(outputs)) == [], "a container or temporary image of a run is left"
    finally:
        for ref in outputs.values():
            subprocess.run(["docker", "rmi", "-f", ref.split(":", 1)[1]], capture_output=True)
