#!/usr/bin/env python3
"""What `tracer record` costs a busy service, and how short a job it sees whole.

1. Cost (target: under 5%): the nginx fixture serving its page as fast as it can, loaded
   by `wrk` from inside the container's own network namespace (`--network none`, `wrk` run
   under `nsenter -n`: no port on the host, nothing added to the container). Each round
   measures requests per second plain, with `tracer record` attached, and plain again;
   the recorded rate is compared with the mean of the two plain ones around it (load from
   elsewhere on the machine drifts and hits the three alike), and the median over the
   rounds is the cost. nginx opens its page for every request, so every request is a
   fanotify event: the recorder's worst case for a static server. On a machine shared
   with other work, requests per second swing more than the cost; CPU time per request
   (the container's cgroup, which includes the kernel's fanotify work in nginx's opens,
   plus the recorder's own) barely depends on other load, and is reported beside it.
2. Short jobs: N containers of a private image, each `cat` of its own file (one exec, the
   loader, libc, one read: a few milliseconds) while `tracer record --image` runs, and
   how many of them the recording shows whole. Then the same with marking at the engine's
   `start` event only (an engine without overlay2), with a delay before the read, to
   find how long a job must run before its first open to be seen that way.

Needs root on the engine's host, the Docker engine, `wrk` and `nsenter` (Debian: wrk,
util-linux) and the fixture images (scripts/setup).

    python3 scripts/bench_record.py [--seconds 5] [--rounds 7] [--jobs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.analysis.recording import read_recording  # noqa: E402
from tracer.trace.record import record_container, record_image  # noqa: E402

NGINX = "tracer-fixture/nginx:test"
BASE = "tracer-fixture/base:bookworm"
LABEL = "org.tracer.bench=record"
DELAYS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


class Background:
    """A recorder in a thread; `start()` returns once it records, `stop()` its result."""

    def __init__(self, fn, *args, **kw) -> None:  # noqa: ANN001 - record_* and their args
        self.started, self.stop_event = threading.Event(), threading.Event()
        self.result = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = fn(*args, stop=self.stop_event,
                                 note=lambda _m: self.started.set(), **kw)
            except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
                self.error = exc
                self.started.set()

        self.thread = threading.Thread(target=run, daemon=True)

    def start(self) -> Background:
        self.thread.start()
        self.started.wait(60)
        if self.error:
            raise self.error
        return self

    def stop(self):  # noqa: ANN201
        self.stop_event.set()
        self.thread.join(120)
        if self.error:
            raise self.error
        return self.result


def cpu_ns(pid: str) -> int:
    """CPU time the container has used so far (its cgroup), in nanoseconds: what serving
    costs, including the kernel's fanotify work in its opens, whatever else runs here."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            for top in ("cpuacct", "cpu,cpuacct"):
                usage = Path(f"/sys/fs/cgroup/{top}{path}/cpuacct.usage")
                if usage.exists():
                    return int(usage.read_text())
        if controllers == "":
            stat = Path(f"/sys/fs/cgroup{path}/cpu.stat")
            if stat.exists():
                fields = dict(x.split() for x in stat.read_text().splitlines())
                return int(fields["usage_usec"]) * 1000
    raise SystemExit("cannot find the container's CPU usage in its cgroup")


def wrk(pid: str, seconds: int) -> tuple[float, float]:
    """(requests per second, container CPU microseconds per request)."""
    before = cpu_ns(pid)
    out = subprocess.run(["nsenter", "-t", pid, "-n", "wrk", "-t2", "-c32", f"-d{seconds}s",
                          "http://127.0.0.1:8080/"], check=True, capture_output=True,
                         text=True).stdout
    used = cpu_ns(pid) - before
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rate or not total:
        raise SystemExit(f"wrk said:\n{out}")
    return float(rate.group(1)), used / 1000 / int(total.group(1))


def cost(seconds: int, rounds: int, work: Path) -> dict[str, float]:
    name = f"tracer-bench-record-{uuid.uuid4().hex[:6]}"
    docker("run", "-d", "--network", "none", "--tmpfs", "/run", "--tmpfs", "/tmp",
           "--label", LABEL, "--name", name, NGINX)
    try:
        pid = docker("inspect", "-f", "{{.State.Pid}}", name)
        time.sleep(1)
        wrk(pid, 2)  # warm up
        plain, recorded, ratios, cpu_plain, cpu_recorded = [], [], [], [], []
        for i in range(rounds):
            before, before_cpu = wrk(pid, seconds)
            bg = Background(record_container, name, work / f"nginx-{i}.rec").start()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            during, during_cpu = wrk(pid, seconds)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            result = bg.stop()
            after, after_cpu = wrk(pid, seconds)
            # against the mean of the plain runs on either side: load from elsewhere on
            # the machine drifts, and hits the three alike
            base = (before + after) / 2
            plain.append(base)
            recorded.append(during)
            ratios.append(during / base)
            mine = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e6
            cpu_plain.append((before_cpu + after_cpu) / 2)
            cpu_recorded.append(during_cpu + mine / (during * seconds))
            print(f"  round {i + 1}: {before:,.0f} / {during:,.0f} / {after:,.0f} req/s "
                  f"plain / recorded / plain; CPU per request {cpu_plain[-1]:.1f} us plain, "
                  f"{cpu_recorded[-1]:.1f} us recorded (nginx and the recorder; "
                  f"{len(result.recording.paths)} paths recorded)", flush=True)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return {"plain": statistics.median(plain), "recorded": statistics.median(recorded),
            "cost_percent": 100 * (1 - statistics.median(ratios)),
            "cpu_plain": statistics.median(cpu_plain),
            "cpu_recorded": statistics.median(cpu_recorded)}


def job_image(work: Path, jobs: int) -> str:
    context = work / "jobs"
    context.mkdir()
    for i in range(jobs):
        (context / f"data-{i}.txt").write_text(f"job {i}\n")
    (context / "Dockerfile").write_text(f"FROM {BASE}\nCOPY data-*.txt /srv/job/\n")
    tag = f"tracer-bench/record-job:{uuid.uuid4().hex[:8]}"
    docker("build", "-q", "--network", "host", "--label", LABEL, "-t", tag, str(context))
    return tag


def seen(tag: str, out: Path, jobs: int, delay: float, early: bool) -> int:
    """How many of `jobs` short containers the recording shows whole (their file read)."""
    bg = Background(record_image, tag, out, early=early).start()
    for i in range(jobs):
        cmd = ["cat", f"/srv/job/data-{i}.txt"] if not delay else \
            ["sh", "-c", f"sleep {delay}; cat /srv/job/data-{i}.txt"]
        subprocess.run(["docker", "run", "--rm", "--network", "none", "--label", LABEL, tag,
                        *cmd], check=True, capture_output=True)
    bg.stop()
    rec = read_recording(out)
    return sum(1 for i in range(jobs)
               if f"/srv/job/data-{i}.txt" in rec.paths and "/usr/bin/cat" in rec.paths)


def short_jobs(jobs: int, work: Path) -> None:
    tag = job_image(work, jobs)
    try:
        t0 = time.monotonic()
        subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "cat",
                        "/srv/job/data-0.txt"], check=True, capture_output=True)
        print(f"  one `docker run --rm IMAGE cat FILE` takes {time.monotonic() - t0:.2f}s "
              "end to end; the job itself a few milliseconds")
        n = seen(tag, work / "early.rec", jobs, 0.0, early=True)
        print(f"  marked as the engine mounts them: {n}/{jobs} jobs of one `cat` seen whole")
        for delay in DELAYS:
            n = seen(tag, work / f"late-{delay}.rec", jobs, delay, early=False)
            print(f"  marked at the start event only: {n}/{jobs} seen when the first open "
                  f"comes {delay * 1000:.0f} ms after start", flush=True)
            if n == jobs:
                break
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    ap.add_argument("--rounds", type=int, default=7,
                    help="plain/recorded/plain triples (the median ratio is reported)")
    ap.add_argument("--jobs", type=int, default=20, help="short jobs per measurement")
    args = ap.parse_args()
    for tool in ("wrk", "nsenter"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install wrk "
                             "util-linux)")
    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        work = Path(tmp)
        print(f"cost on a busy service: nginx fixture, wrk -t2 -c32, {args.rounds} x "
              f"{args.seconds}s each way")
        c = cost(args.seconds, args.rounds, work)
        cpu_cost = 100 * (c["cpu_recorded"] / c["cpu_plain"] - 1)
        print(f"  median: {c['plain']:,.0f} req/s plain, {c['recorded']:,.0f} req/s "
              f"recorded; cost in requests per second {c['cost_percent']:+.1f}% (median of "
              f"the rounds; target: under 5%; below zero is noise); CPU per request "
              f"{c['cpu_plain']:.1f} us plain, {c['cpu_recorded']:.1f} us recorded: "
              f"{cpu_cost:+.1f}%")
        print(f"short jobs: {args.jobs} containers of `cat FILE` each")
        with contextlib.suppress(KeyboardInterrupt):
            short_jobs(args.jobs, work)


if __name__ == "__main__":
    main()
