"""How many `tracer batch` jobs run at once: the cores, and the memory jobs really use.

The rule (README, "Nightly jobs"): one job per core this process may run on, and no more
than fit in 80% of the memory available when the batch starts, at the memory one job was
measured to need; at least one. A job's memory is the peak, sampled twice a second, of
its tracer processes' resident memory (psutil: the `tracer minimize` child and everything
it starts) plus what its containers are charged (the engine's cgroup of each container
the child made, found by tracer's owner label); the largest of the jobs measured counts.
Before any job of the batch has ended, that is the largest a job of this --out's last
batch used (OUT/usage.json), else 1 GiB; every job that ends updates it, and the limit
follows. `--jobs N` fixes it at N.

Cores are counted, not measured: a job's CPU time over its wall time says what it got,
not what it wants, on a machine others load too (measured so, jobs that compute looked
like a quarter of a core, and four times as many jobs at once were no faster).

Only a running child takes a slot: a skipped job, or a fleet's job waiting between its
two steps (tracer.stage), takes none.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tracer.engine import connect
from tracer.workdir import OWNER_LABEL

GiB = 1 << 30
FIRST_GUESS = 1 * GiB  # memory per job, before anything was measured
MEMORY_SHARE = 0.8  # of the memory available when the batch starts
USAGE_FILE = "usage.json"
_MEMORY_FILES = (  # a container's memory: peak where the kernel keeps one, else current
    "/sys/fs/cgroup/memory/docker/{id}/memory.max_usage_in_bytes",  # v1, cgroupfs
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.peak",  # v2, systemd
    "/sys/fs/cgroup/docker/{id}/memory.peak",  # v2, cgroupfs
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current",
    "/sys/fs/cgroup/docker/{id}/memory.current",
)


@dataclass(frozen=True)
class Use:
    """What one job was measured to use: its peak bytes."""

    memory: int


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def limit_for(per_job: int, available: int, cpus: int) -> int:
    """Jobs at once: one per core, within MEMORY_SHARE of `available` at `per_job` each."""
    return max(1, min(cpus, int(available * MEMORY_SHARE) // max(per_job, 1)))


def read_usage(out: Path) -> dict[str, Use]:
    """What each job of the last batch in `out` used ({} when nothing was recorded)."""
    found: dict[str, Use] = {}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((out / USAGE_FILE).read_text(encoding="utf-8"))
        for job, value in (doc.items() if isinstance(doc, dict) else ()):
            memory = value.get("memory") if isinstance(value, dict) else value
            if isinstance(memory, int) and not isinstance(memory, bool) and memory > 0:
                found[str(job)] = Use(memory)
    return found


def write_usage(out: Path, usage: dict[str, Use]) -> None:
    doc = {job: {"memory": u.memory} for job, u in sorted(usage.items())}
    tmp = out / f".{USAGE_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / USAGE_FILE)


class Slots:
    """A limit on running children that follows what jobs were measured to use."""

    def __init__(self, fixed: int | None, known: dict[str, Use] | None = None,
                 available: int | None = None, cpus: int | None = None) -> None:
        self.fixed = fixed
        self.cpus = cpus or cores()
        self.available = available if available is not None else \
            psutil.virtual_memory().available
        self.known = dict(known or {})  # the last batch's measures, until this one's come
        self.measured: dict[str, Use] = {}
        self.running = 0
        self._cond = threading.Condition()

    def _measures(self) -> list[Use]:
        return list((self.measured or self.known).values())

    @property
    def per_job(self) -> int:
        """Bytes one job needs: the most a job was measured to use."""
        uses = self._measures()
        return max(u.memory for u in uses) if uses else FIRST_GUESS

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

    def release(self, job: str, use: Use | None) -> None:
        """A child ended (or went waiting), having used `use`: the measures follow."""
        with self._cond:
            self.running -= 1
            if use is not None and use.memory:
                old = self.measured.get(job)
                self.measured[job] = Use(max(use.memory, old.memory if old else 0))
            self._cond.notify_all()


class Meter:
    """Samples the memory of every running child twice a second (module doc); the engine
    is asked which containers each child made once a second."""

    def __init__(self, interval: float = 0.5, ask_engine_every: int = 2) -> None:
        self.interval = interval
        self.ask_engine_every = ask_engine_every
        self._ticks = 0
        self._known: dict[int, list[str]] = {}  # child pid -> its containers, last asked
        self._children: dict[int, int] = {}  # pid -> peak bytes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-memory", daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        with self._lock:
            self._children[pid] = 0

    def done(self, pid: int) -> Use:
        """Stop watching `pid` (one last sample first): what it used."""
        self._sample([pid])
        with self._lock:
            return Use(self._children.pop(pid, 0))

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                pids = list(self._children)
            if pids:
                self._sample(pids)

    def _sample(self, pids: list[int]) -> None:
        with self._lock:
            ask = self._ticks % self.ask_engine_every == 0
            self._ticks += 1
            watched = set(self._children) | set(pids)
        if ask:
            found = _containers_by_owner(watched)
            with self._lock:
                self._known = found
        for pid in pids:
            used = _tree_rss(pid) + sum(_container_memory(c)
                                        for c in self._known.get(pid, []))
            with self._lock:
                if pid in self._children:
                    self._children[pid] = max(self._children[pid], used)


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process under it (0 once it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
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


def _read_small(pattern: str, container_id: str) -> str | None:
    with contextlib.suppress(OSError), \
            open(pattern.format(id=container_id), encoding="ascii") as f:
        return f.read(4096)
    return None


def _container_memory(container_id: str) -> int:
    if not container_id.isalnum():
        return 0
    for pattern in _MEMORY_FILES:
        text = _read_small(pattern, container_id)
        if text is not None and text.strip().isdigit():
            return int(text.strip())
    return 0
