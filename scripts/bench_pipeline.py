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

With `--registry HOST:PORT` (a plain-HTTP registry: scripts/setup starts one on
127.0.0.1:5000), each fixture is first pushed there (not measured), then minimized from
the registry to the registry (on the Docker engine), and tracer's `pull` and `push`
phases are set against `skopeo copy` alone doing the same transfer: pulling the input by
digest into a `dir:`, and pushing the minimized image (a copy of tracer's output) to a new
repository. The baseline talks to the same registry as `localhost:PORT`, so skopeo's blob
cache cannot mount what tracer pushed: both upload every blob.

Usage: scripts/bench_pipeline.py [--granularity file|package|both]
                                 [--engine docker|podman|both] [--registry HOST:PORT]
                                 [FIXTURE ...]
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
import uuid
from pathlib import Path

import yaml

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


def minimize(name: str, granularity: str, work: Path, engine: str,
             registry: str | None = None) -> tuple[dict, float] | None:
    report_path = work / f"{name}-{granularity}-{engine}.json"
    profile = REPO / "profiles" / f"{name}.yaml"
    output = f"docker-daemon:tracer-bench/{name}:min-{granularity}"
    extra: list[str] = []
    if registry is not None:
        profile = registry_profile(name, registry, work)
        output = f"docker://{registry}/tracer-bench/{name}-{uuid.uuid4().hex[:8]}:min"
        extra = ["--tls-verify=false"]
    cmd = [sys.executable, "-m", "tracer", "minimize", str(profile), "--quiet",
           "--output", output, "--report", str(report_path), "--engine", engine, *extra]
    if granularity != "file":
        cmd += ["--granularity", granularity]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if registry is None:  # the engine's own command: Podman's store is not Docker's
        subprocess.run([engine, "rmi", "-f", output.split(":", 1)[1]], capture_output=True)
    if proc.returncode != 0:
        print(f"{name} ({granularity}, {engine}): minimize failed (exit {proc.returncode})\n"
              f"{proc.stderr[-2000:]}")
        return None
    report = json.loads(report_path.read_text())
    if registry is not None:
        report["skopeo_alone"] = skopeo_alone(name, registry, report, output, work)
    return report, wall


# ---------------------------------------------------------------- --registry


def skopeo(*args: str) -> float:
    """Seconds `skopeo ARGS` takes (it must succeed)."""
    t0 = time.monotonic()
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"skopeo {' '.join(args)}: {done.stderr[-1000:]}")
    return time.monotonic() - t0


def registry_profile(name: str, registry: str, work: Path) -> Path:
    """The fixture's profile reading it from the registry (pushed there first)."""
    source = f"docker://{registry}/tracer-bench/{name}:src"
    skopeo("copy", "--quiet", "--dest-tls-verify=false",
           f"docker-daemon:tracer-fixture/{name}:test", source)
    data = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())
    data["image"] = source
    data.pop("output", None)
    path = work / f"{name}-registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def skopeo_alone(name: str, registry: str, report: dict, output: str, work: Path
                 ) -> dict[str, float]:
    """`skopeo copy` alone doing tracer's two transfers, through `localhost:PORT` (the
    same registry, which skopeo's blob cache does not tie to tracer's pushes)."""
    alias = "localhost:" + registry.rsplit(":", 1)[1]
    pulled = work / f"{name}-alone-pull"
    pull = skopeo("copy", "--quiet", "--src-tls-verify=false",
                  f"docker://{alias}/tracer-bench/{name}@{report['input_digest']}",
                  f"dir:{pulled}")
    shutil.rmtree(pulled, ignore_errors=True)
    layout = work / f"{name}-alone-out"
    skopeo("copy", "--quiet", "--src-tls-verify=false", output, f"oci:{layout}:min")
    push = skopeo("copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                  f"oci:{layout}:min",
                  f"docker://{alias}/tracer-bench/{name}-alone-{uuid.uuid4().hex[:8]}:min")
    shutil.rmtree(layout, ignore_errors=True)
    return {"pull": pull, "push": push}


def kept_paths(report: dict) -> list[str]:
    return [line.split("\t", 1)[0]
            for line in Path(report["keeplist_file"]).read_text().splitlines()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--granularity", choices=("file", "package", "both"), default="file")
    parser.add_argument("--engine", choices=("docker", "podman", "both"), default="both")
    parser.add_argument("--registry", metavar="HOST:PORT",
                        help="read and write the images through this plain-HTTP registry "
                        "(on the Docker engine)")
    parser.add_argument("fixtures", nargs="*", default=FIXTURES)
    args = parser.parse_args(argv)
    grains = ["file", "package"] if args.granularity == "both" else [args.granularity]
    engines = ["docker", "podman"] if args.engine == "both" else [args.engine]
    if args.registry:
        engines = ["docker"]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="tracer-bench-"))
    try:
        for name in args.fixtures:
            for engine in engines:
                floor = smoke_floor(REPO / "profiles" / f"{name}.yaml", work, engine)
                for grain in grains:
                    done = minimize(name, grain, work, engine, args.registry)
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
    if args.registry:
        print(f"\n{'fixture':10} {'pull':>7} {'skopeo':>7} {'push':>7} {'skopeo':>7}")
        for name, _grain, _engine, r, _wall, _floor, _paths in rows:
            alone = r["skopeo_alone"]
            print(f"{name:10} {r['seconds'].get('pull', 0):6.2f}s {alone['pull']:6.2f}s "
                  f"{r['seconds'].get('push', 0):6.2f}s {alone['push']:6.2f}s")
        print("pull/push: tracer's phases (resolve, budget checks, skopeo copy, the layout "
              "read or written); skopeo: `skopeo copy` alone, the same transfer")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
