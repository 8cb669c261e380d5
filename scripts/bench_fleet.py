#!/usr/bin/env python3
"""Benchmark `tracer batch --share-base` on a fleet of real images built on one base.

The fleet: nine small job images `FROM tracer-fixture/base:bookworm`, each with other real
Debian programs (jq, sqlite3, gawk, Lua, bc, Perl from the base, Python, xz, OpenSSL) and a
smoke test that does a few seconds of real work with them. They are built once with
`docker build --network host` (Debian's apt sources) and rebuilt only when their
Dockerfile changes (label tracer.bench.hash); the first build downloads about 10 MB of
packages (and Debian's package lists).

Measured, in one run:
- the floor of each job: two plain (untraced) runs of its smoke test on the original
  image, one after the other (what any minimizer that proves its result must run), next
  to the seconds its two steps in the batch worked (the report's total);
- `tracer batch --share-base --force` over the whole fleet into a fresh --out: wall time,
  against the sum of the floors divided by the number of jobs the batch ran at once
  (target: at most 1.3x), and against the wall time of the same floors run that many at
  once (after the batch: on a machine others load too, N jobs at once are not N times as
  fast, for tracer or anyone); and the peak resident memory of the batch with all its
  processes (sampled twice a second) next to the largest a job was measured to use
  (its processes and containers, summary.json);
- unique bytes of all outputs (the shared base once, plus each output's own layer: what a
  registry stores and a node pulls once) against the sum of the one-layer outputs the same
  keep-lists give (target: at most 0.6x), and what each image pays for the base;
- that every output passed verification (status passed, or unchanged: verified, and
  the output tag already held that very image).

The batch's --out is kept between runs (default /var/tmp/tracer-bench-fleet), as a
nightly job keeps its own: the number of jobs at once follows what the jobs of the last
run used (jobslots.py), so the first run on a machine starts from one job per core.

Usage: scripts/bench_fleet.py [--jobs N] [--out DIR] [--keep] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tracer.profile.load import load_profile  # noqa: E402 - after the path setup above
from tracer.trace.run import run_smoke  # noqa: E402

BASE = "tracer-fixture/base:bookworm"
HASH_LABEL = "tracer.bench.hash"


@dataclass(frozen=True)
class App:
    """One image of the fleet: Debian packages, a job script, what it must print."""

    name: str
    packages: tuple[str, ...]
    script: str  # the body of /usr/local/bin/job (sh)
    stdout: str  # regex on the job's output

    @property
    def image(self) -> str:
        return f"tracer-bench/fleet-{self.name}:1"

    def dockerfile(self) -> str:
        lines = [f"FROM {BASE}"]
        if self.packages:
            lines.append("RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install "
                         f"-y --no-install-recommends {' '.join(self.packages)} && "
                         "rm -rf /var/lib/apt/lists/*")
        body = ("#!/bin/sh\nset -e\n" + self.script + "\n").encode()
        lines.append(f"RUN printf '%b' '{_octal(body)}' > /usr/local/bin/job && "
                     "chmod 755 /usr/local/bin/job")
        lines.append('ENTRYPOINT ["/usr/local/bin/job"]')
        return "\n".join(lines) + "\n"


def _octal(data: bytes) -> str:
    """`data` as printf %b escapes: no quoting problem whatever the script holds."""
    return "".join(f"\\0{b:03o}" for b in data)


APPS = [
    App("jq", ("jq",), "seq 1 3000000 | jq -s 'add'", r"^4500001500000$"),
    App("sqlite", ("sqlite3",),
        "sqlite3 :memory: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c "
        "WHERE x<9000000) SELECT sum(x) FROM c;'", r"^40500004500000$"),
    App("gawk", ("gawk",), "gawk 'BEGIN { for (i = 1; i <= 30000000; i++) s += i % 7; "
        "print s }'", r"^89999997$"),
    App("lua", ("lua5.4",), "lua5.4 -e 'local s = 0 for i = 1, 180000000 do s = s + i % 7 "
        "end print(s)'", r"^540000000$"),
    App("bc", ("bc",), "echo 'scale=2200; 4*a(1)' | bc -l | tr -d '\\\\\\n' | cut -c1-12",
        r"^3\.1415926535$"),
    App("perl", (), "perl -e '$s = 0; $s += $_ % 7 for 1 .. 30000000; print \"$s\\n\"'",
        r"^89999997$"),
    App("python", ("python3-minimal",),
        "python3 -c 'import hashlib\nh = b\"x\"\nfor _ in range(4000000): "
        "h = hashlib.sha256(h).digest()\nprint(h.hex()[:16])'", r"^[0-9a-f]{16}$"),
    App("xz", ("xz-utils",), "head -c 150000000 /dev/zero | xz -6 -T1 | xz -d | wc -c",
        r"^150000000$"),
    App("openssl", ("openssl",), "head -c 1200000000 /dev/zero | openssl dgst -sha256 | "
        "cut -d' ' -f2", r"^[0-9a-f]{64}$"),
]


def build(app: App) -> str:
    """The app's image, built unless it is there with the same Dockerfile."""
    text = app.dockerfile()
    digest = hashlib.sha256((text + _base_id()).encode()).hexdigest()
    done = subprocess.run(["docker", "image", "inspect", "-f",
                           f'{{{{index .Config.Labels "{HASH_LABEL}"}}}}', app.image],
                          capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip() == digest:
        return app.image
    print(f"bench_fleet: building {app.image}", file=sys.stderr, flush=True)
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    subprocess.run(["docker", "build", "--network", "host", "-q", "-t", app.image,
                    "--label", f"{HASH_LABEL}={digest}", "-"], input=text.encode(), env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return app.image


def _base_id() -> str:
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", BASE],
                          capture_output=True, text=True, check=True).stdout.strip()


def write_profile(app: App, where: Path) -> Path:
    doc = {"version": 1, "name": app.name, "image": f"docker-daemon:{app.image}",
           "output": f"docker-daemon:tracer-bench/fleet-{app.name}:min",
           "run": {"network": "none", "mode": "job", "exit": 0, "stdout": app.stdout,
                   "timeout": "300s"},
           "smoke": [],
           "exclude": ["/usr/share/doc/**", "/usr/share/man/**", "/var/lib/apt/**",
                       "/var/cache/apt/**"]}
    path = where / f"{app.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def floors_at_once(paths: list[Path], work: Path, n: int) -> float:
    """Wall seconds of every job's floor, `n` jobs at once (as the batch runs them)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(lambda p: floor(p, work / "at-once"), paths))
    return time.monotonic() - t0


def floor(profile_path: Path, work: Path) -> float:
    """Two plain untraced smoke runs on the original, one after the other."""
    profile = load_profile(profile_path)
    image = profile.image.split(":", 1)[1]
    t0 = time.monotonic()
    for i in range(2):
        result = run_smoke(profile, image, traced=False, workdir=work / f"{profile.name}-{i}")
        if not result.passed:
            raise SystemExit(f"{profile_path}: the smoke test fails untraced: {result.failure}")
    return time.monotonic() - t0


class PeakMemory:
    """Peak resident memory of a process and everything under it, sampled."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_batch(profiles: Path, out: Path, jobs: int | None) -> tuple[float, int, str]:
    cmd = [sys.executable, "-m", "tracer", "batch", str(profiles), "--out", str(out),
           "--share-base", "--force"] + (["--jobs", str(jobs)] if jobs else [])
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    meter = PeakMemory(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - t0
    peak = meter.stop()
    if proc.returncode != 0:
        print(stdout + stderr[-4000:], file=sys.stderr)
    return wall, peak, stderr


def parallel_jobs(stderr: str, given: int | None) -> int:
    """How many jobs the batch ran at once (said on its first line)."""
    if given:
        return given
    for line in stderr.splitlines():
        if " at a time" in line:
            return int(line.split(" at a time")[0].rsplit(" ", 1)[1])
    return 1


def _busy(out: Path, job: str) -> float:
    """Seconds the job's two steps worked (its report's total: trace, write, verify...)."""
    report = json.loads((out / job / "report.json").read_text())
    return float(report["seconds"]["total"])


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help="as tracer batch --jobs (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs and profiles")
    parser.add_argument("--out", type=Path, default=Path("/var/tmp/tracer-bench-fleet"),
                        help="the batch's --out, kept between runs (what jobs used)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    for app in APPS:
        build(app)
    work = Path(tempfile.mkdtemp(prefix="tracer-bench-fleet-"))
    profiles = work / "profiles"
    profiles.mkdir()
    paths = [write_profile(app, profiles) for app in APPS]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        print("bench_fleet: floors (two plain smoke runs per job) ...", file=sys.stderr)
        floors = {p.stem: floor(p, work / "floors") for p in paths}
        print("bench_fleet: tracer batch --share-base ...", file=sys.stderr)
        load_before = os.getloadavg()[0]
        wall, peak, stderr = run_batch(profiles, out, args.jobs)
        summary = json.loads((out / "summary.json").read_text())
        jobs = {j["name"]: j for j in summary["jobs"]}
        [fleet] = summary["fleets"]
        at_once = parallel_jobs(stderr, args.jobs)
        ideal = sum(floors.values()) / at_once
        print(f"bench_fleet: the floors again, {at_once} jobs at once ...", file=sys.stderr)
        par = floors_at_once(paths, work / "floors", at_once)
        verified = sum(j["status"] in ("passed", "unchanged") for j in jobs.values())
        numbers = {
            "jobs": len(jobs), "verified": verified, "parallel": at_once,
            "wall_seconds": round(wall, 1), "floors_seconds": round(sum(floors.values()), 1),
            "wall_over_floors_per_slot": round(wall / ideal, 2),
            "floors_at_once_seconds": round(par, 1),
            "wall_over_floors_at_once": round(wall / par, 2),
            "unique_bytes": fleet["unique_bytes"],
            "single_layer_bytes": fleet["single_layer_bytes"],
            "unique_over_single": fleet["ratio"], "base_bytes": fleet["base"]["size"],
            "peak_memory_batch": peak,
            "peak_memory_job": max(j["peak_memory"] or 0 for j in jobs.values()),
            "load_average_before": round(load_before, 1),
            "per_job": {n: {"floor": round(floors[n], 1), "seconds": _busy(out, n),
                            "status": jobs[n]["status"],
                            "own_bytes": (jobs[n]["shared_base"] or {}).get("own_bytes"),
                            "single_layer_bytes": (jobs[n]["shared_base"] or {}).get(
                                "single_layer_bytes"),
                            "pays_for_base": (jobs[n]["shared_base"] or {}).get("extra_bytes")}
                        for n in sorted(jobs)}}
        print(f"{'job':8} {'floor':>6} {'tracer':>7} {'status':8} {'own layer':>10} "
              f"{'one-layer':>10} {'pays for base':>14}")
        for n, row in numbers["per_job"].items():
            print(f"{n:8} {row['floor']:5.1f}s {row['seconds']:6.1f}s {row['status']:8} "
                  f"{mb(row['own_bytes'] or 0):>10} {mb(row['single_layer_bytes'] or 0):>10} "
                  f"{mb(row['pays_for_base'] or 0):>14}")
        print(f"\n{len(jobs)} jobs, {verified} verified, {at_once} at a time; "
              f"load average {load_before:.1f} before the batch")
        print(f"batch wall time {wall:.1f}s; sum of floors {sum(floors.values()):.1f}s / "
              f"{at_once} = {ideal:.1f}s; ratio {wall / ideal:.2f}x (target <= 1.3x)")
        print(f"the same floors run {at_once} at once took {par:.1f}s: ratio {wall / par:.2f}x")
        print(f"unique output bytes {mb(fleet['unique_bytes'])} (base {mb(fleet['base']['size'])}"
              f" once) against {mb(fleet['single_layer_bytes'])} of one-layer outputs: "
              f"{fleet['ratio']:.2f}x (target <= 0.6x)")
        print(f"peak memory: the batch with all its processes {mb(peak)}; the most one job "
              f"used (its processes and containers) {mb(numbers['peak_memory_job'])}")
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        return 0 if verified == len(jobs) else 1
    finally:
        if not args.keep:
            for app in APPS:
                subprocess.run(["docker", "rmi", "-f", f"tracer-bench/fleet-{app.name}:min"],
                               capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
