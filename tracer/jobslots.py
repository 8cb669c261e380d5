"""How many `tracer batch` jobs run at once: the cores, and the memory jobs really use.

The rule (README, "Nightly jobs"): at most one job per core this process may run on, and
no more than fit in 80% of the memory available when the batch starts, at what one job
was measured to need. A job's memory is the peak, sampled once a second, of its tracer
processes' resident memory (psutil: the `tracer minimize` child and everything it starts)
plus the memory its containers are charged (the engine's cgroup of each container the
child made, found by tracer's owner label). Before any job of the batch has ended, the
measure is the largest a job of this --out used last time (OUT/usage.json), else 1 GiB;
every job that ends updates it, and the limit follows. `--jobs N` fixes it at N.

Only a running child takes a slot: a skipped job, or a fleet's jobs waiting between
their two steps (tracer.stage), take none.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from tracer.engine import connect
from tracer.workdir import OWNER_LABEL

GiB = 1 << 30
FIRST_GUESS = 1 * GiB  # per job, before anything was measured
MEMORY_SHARE = 0.8  # of the memory available when the batch starts
USAGE_FILE = "usage.json"
_CGROUP_FILES = (  # a container's memory: peak where the kernel keeps one, else current
    "/sys/fs/cgroup/memory/docker/{id}/memory.max_usage_in_bytes",  # v1, cgroupfs
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.peak",  # v2, systemd
    "/sys/fs/cgroup/docker/{id}/memory.peak",  # v2, cgroupfs
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current",
    "/sys/fs/cgroup/docker/{id}/memory.current",
)


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def limit_for(per_job: int, available: int, cpus: int) -> int:
    """Jobs at once: one per core, within MEMORY_SHARE of `available` at `per_job` each."""
    return max(1, min(cpus, int(available * MEMORY_SHARE) // max(per_job, 1)))


def read_usage(out: Path) -> dict[str, int]:
    """Peak bytes per job recorded by the last batch in `out` ({} when none)."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((out / USAGE_FILE).read_text(encoding="utf-8"))
        if isinstance(doc, dict):
            return {str(k): int(v) for k, v in doc.items()
                    if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    return {}


def write_usage(out: Path, usage: dict[str, int]) -> None:
    tmp = out / f".{USAGE_FILE}.tmp"
    tmp.write_text(json.dumps(dict(sorted(usage.items())), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / USAGE_FILE)


class Slots:
    """A limit on running children that follows what jobs were measured to use."""

    def __init__(self, fixed: int | None, known: dict[str, int] | None = None,
                 available: int | None = None, cpus: int | None = None) -> None:
        self.fixed = fixed
        self.cpus = cpus or cores()
        self.available = available if available is not None else \
            psutil.virtual_memory().available
        self.per_job = max(known.values()) if known else FIRST_GUESS
        self.measured: dict[str, int] = {}
        self.running = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        if self.fixed is not None:
            return self.fixed
        return limit_for(self.per_job, self.available, self.cpus)

    @property
    def most(self) -> int:
        """The most jobs that can ever run at once (the pool's size)."""
        return self.fixed if self.fixed is not None else self.cpus

    def acquire(self, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait for a slot; False when the batch stops meanwhile."""
        with self._cond:
            while self.running >= self.limit and not stopping():
                self._cond.wait(0.5)
            if stopping():
                return False
            self.running += 1
            return True

    def release(self, job: str, peak: int | None) -> None:
        """A child ended, having used `peak` bytes at most: the measure follows."""
        with self._cond:
            self.running -= 1
            if peak:
                self.measured[job] = max(peak, self.measured.get(job, 0))
                self.per_job = max(self.measured.values())
            self._cond.notify_all()


class Meter:
    """Samples, once a second, the memory of every running child (module doc)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._children: dict[int, int] = {}  # pid -> peak bytes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-memory", daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        with self._lock:
            self._children[pid] = 0

    def done(self, pid: int) -> int:
        """Stop watching `pid`; its peak (one last sample first)."""
        self._sample([pid])
        with self._lock:
            return self._children.pop(pid, 0)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                pids = list(self._children)
            if pids:
                self._sample(pids)

    def _sample(self, pids: list[int]) -> None:
        containers = _containers_by_owner(set(pids))
        for pid in pids:
            used = _tree_rss(pid) + sum(_container_memory(c) for c in containers.get(pid, []))
            with self._lock:
                if pid in self._children:
                    self._children[pid] = max(self._children[pid], used)


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process under it (0 once it is gone)."""
    total = 0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _containers_by_owner(pids: set[int]) -> dict[int, list[str]]:
    """Ids of the running containers made by each of `pids` (tracer's owner label names the
    process that made a container); {} when the engine cannot be asked."""
    out: dict[int, list[str]] = {}
    try:
        listed = connect().api.containers(filters={"label": OWNER_LABEL})
    except Exception:  # noqa: BLE001 - a sample missed is no failure of the batch
        return out
    for c in listed if isinstance(listed, list) else []:
        labels = c.get("Labels") or {} if isinstance(c, dict) else {}
        owner = str(labels.get(OWNER_LABEL, "")).rsplit(":", 2)
        if len(owner) == 3 and owner[1].isdigit() and int(owner[1]) in pids:
            out.setdefault(int(owner[1]), []).append(str(c.get("Id", "")))
    return out


def _container_memory(container_id: str) -> int:
    if not container_id.isalnum():
        return 0
    for pattern in _CGROUP_FILES:
        with contextlib.suppress(OSError, ValueError), \
                open(pattern.format(id=container_id), encoding="ascii") as f:
            return int(f.read(64).strip())
    return 0
