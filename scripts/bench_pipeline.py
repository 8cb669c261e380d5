#!/usr/bin/env python3
"""Benchmark `tracer minimize` on the fixture images against the docker save+load floor.

For each fixture: original vs minimized size and file count, the wall time of each phase,
and the whole pipeline's time minus the smoke-test time (trace + verify) compared with
`docker save` + `docker load` of the same image, measured in the same run. Target: at
most 2x that floor. Usage: scripts/bench_pipeline.py [FIXTURE ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = ["nginx", "pyapp", "hardcases", "layers"]


def save_load_floor(image: str, work: Path) -> float:
    """Seconds for `docker save` to a file plus `docker load` of it (the I/O floor)."""
    archive = work / "floor.tar"
    t0 = time.monotonic()
    subprocess.run(["docker", "save", "-o", str(archive), image], check=True)
    subprocess.run(["docker", "load", "-q", "-i", str(archive)], check=True,
                   capture_output=True)
    took = time.monotonic() - t0
    archive.unlink()
    return took


def main(names: list[str]) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="tracer-bench-") as tmp:
        work = Path(tmp)
        for name in names or FIXTURES:
            image = f"tracer-fixture/{name}:test"
            floor = save_load_floor(image, work)
            report_path = work / f"{name}.json"
            output = f"docker-daemon:tracer-bench/{name}:min"
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "tracer", "minimize",
                                   str(REPO / "profiles" / f"{name}.yaml"), "--quiet",
                                   "--output", output, "--report", str(report_path)],
                                  capture_output=True, text=True)
            wall = time.monotonic() - t0
            if proc.returncode != 0:
                print(f"{name}: minimize failed (exit {proc.returncode})\n{proc.stderr}")
                continue
            r = json.loads(report_path.read_text())
            s = r["seconds"]
            smoke = s.get("trace", 0) + s.get("verify", 0)
            rows.append((name, r, wall, floor, wall - smoke))
            subprocess.run(["docker", "rmi", "-f", output.split(":", 1)[1]],
                           capture_output=True)
    print(f"{'fixture':10} {'size before':>12} {'after':>10} {'files':>13} {'wall':>7} "
          f"{'-smoke':>7} {'floor':>7} {'ratio':>6}  phases")
    for name, r, wall, floor, no_smoke in rows:
        phases = " ".join(f"{k}={v:.1f}" for k, v in r["seconds"].items())
        print(f"{name:10} {r['size_before'] / 1e6:10.1f}MB {r['size_after'] / 1e6:8.1f}MB "
              f"{r['files_before']:>6}->{r['files_after']:<6} {wall:6.1f}s {no_smoke:6.1f}s "
              f"{floor:6.1f}s {no_smoke / floor:5.2f}x  {phases}")
    print("target: pipeline minus smoke-test time at most 2x docker save + docker load")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
