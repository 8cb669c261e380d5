#!/usr/bin/env python3
"""Benchmark `tracer minimize` on the fixture images against the least any honest pipeline does.

The floor, measured in the same run for each fixture: one plain untraced run of the
profile's smoke test against the original image (container start, ready check, every step,
stop), times two, because a minimizer that proves its result runs the smoke test at least
twice (once to learn what is used, once on the result). Reported per fixture: sizes and
file counts before and after, each phase's seconds, the whole `tracer minimize` wall time
and its ratio to the floor (target: at most 2x). With `--granularity` both, also the
sizes `file` and `package` granularity keep, side by side. Each on the Docker engine and
on Podman (`--engine`, default both), with the floor measured on that engine, and whether
both engines kept the same paths.

Usage: scripts/bench_pipeline.py [--granularity file|package|both]
                                 [--engine docker|podman|both] [FIXTURE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tracer.profile.load import load_profile  # noqa: E402 - after the path setup above
from tracer.trace.run import run_smoke  # noqa: E402

FIXTURES = ["nginx", "pyapp", "hardcases", "layers"]


def smoke_floor(profile_path: Path, work: Path, engine: str) -> float:
    """Seconds of one untraced smoke run on the original image, times two, on `engine`."""
    profile = load_profile(profile_path)
    image = profile.image.split(":", 1)[1] if profile.image.startswith("docker-daemon:") \
        else profile.image
    os.environ["TRACER_ENGINE"] = engine
    t0 = time.monotonic()
    result = run_smoke(profile, image, traced=False, workdir=work)
    took = time.monotonic() - t0
    if not result.passed:
        raise SystemExit(f"{profile_path}: the smoke test fails untraced: {result.failure}")
    return 2 * took


def minimize(name: str, granularity: str, work: Path, engine: str
             ) -> tuple[dict, float] | None:
    report_path = work / f"{name}-{granularity}-{engine}.json"
    output = f"docker-daemon:tracer-bench/{name}:min-{granularity}"
    cmd = [sys.executable, "-m", "tracer", "minimize", str(REPO / "profiles" / f"{name}.yaml"),
           "--quiet", "--output", output, "--report", str(report_path), "--engine", engine]
    if granularity != "file":
        cmd += ["--granularity", granularity]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    # the engine's own command: Podman's store is not Docker's
    subprocess.run([engine, "rmi", "-f", output.split(":", 1)[1]], capture_output=True)
    if proc.returncode != 0:
        print(f"{name} ({granularity}, {engine}): minimize failed (exit {proc.returncode})\n"
              f"{proc.stderr[-2000:]}")
        return None
    return json.loads(report_path.read_text()), wall


def kept_paths(report: dict) -> list[str]:
    return [line.split("\t", 1)[0]
            for line in Path(report["keeplist_file"]).read_text().splitlines()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--granularity", choices=("file", "package", "both"), default="file")
    parser.add_argument("--engine", choices=("docker", "podman", "both"), default="both")
    parser.add_argument("fixtures", nargs="*", default=FIXTURES)
    args = parser.parse_args(argv)
    grains = ["file", "package"] if args.granularity == "both" else [args.granularity]
    engines = ["docker", "podman"] if args.engine == "both" else [args.engine]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="tracer-bench-"))
    try:
        for name in args.fixtures:
            for engine in engines:
                floor = smoke_floor(REPO / "profiles" / f"{name}.yaml", work, engine)
                for grain in grains:
                    done = minimize(name, grain, work, engine)
                    if done is not None:
                        rows.append((name, grain, engine, done[0], done[1], floor,
                                     kept_paths(done[0])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'fixture':10} {'grain':7} {'engine':7} {'size before':>12} {'after':>9} "
          f"{'files':>13} {'wall':>6} {'floor':>6} {'ratio':>6}  phases")
    for name, grain, engine, r, wall, floor, _ in rows:
        phases = " ".join(f"{k}={v:.2f}" for k, v in r["seconds"].items() if k != "total")
        print(f"{name:10} {grain:7} {engine:7} {r['size_before'] / 1e6:10.1f}MB "
              f"{r['size_after'] / 1e6:7.1f}MB {r['files_before']:>6}->{r['files_after']:<6} "
              f"{wall:5.1f}s {floor:5.1f}s {wall / floor:5.2f}x  {phases}")
    print("floor: two untraced runs of the same smoke test on the original image, on the "
          "same engine; target: tracer minimize (verification included) at most 2x the floor")
    if len(engines) == 2:
        print(f"\n{'fixture':10} {'grain':7} {'docker':>7} {'podman':>7}  same keep-list")
        by = {(n, g, e): (wall, paths) for n, g, e, _, wall, _, paths in rows}
        for name in args.fixtures:
            for grain in grains:
                d, p = by.get((name, grain, "docker")), by.get((name, grain, "podman"))
                if d and p:
                    print(f"{name:10} {grain:7} {d[0]:6.1f}s {p[0]:6.1f}s  "
                          f"{'yes' if d[1] == p[1] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
