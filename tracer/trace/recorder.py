"""The recorder of `tracer record`: fanotify events of containers into a bounded table.

tracer.trace.fanotify's recorder serves the traced run: every event with its process's
command line, per smoke step. Recording production needs less per event and must cost a
busy service next to nothing (scripts/bench_record.py), so this one keeps each distinct
(path, kind, program) once in a `PathTable`, looks up what a process is once a second
rather than per event, and silences in the kernel a file already recorded for the program
that opens it again (an ignore mark on its inode): a page served 10,000 times a second
costs two events, not 10,000.

Attribution (which events count) is described in tracer.trace.record; `snapshot` reads
what a container that was running before the recorder came has mapped and open.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tracer.analysis.recording import MAX_PROGRAMS, PathUse
from tracer.trace import fanotify

_OVERHEAD = 64  # bytes of bookkeeping counted per recorded path and per program of a path
_MAPS_BYTES = 8 << 20  # of one process's /proc/PID/maps read at attach
_FDS = 65536  # descriptors of one process looked at, at attach
RUNTIME = "/"  # what /proc/PID/exe says for `runc init` (its executable is not in the image)
DELETED = " (deleted)"
_EXECUTED = 65536  # pids whose last exec is remembered (then forgotten all at once)
_WHO_SECONDS = 1.0  # how long what a process is (ours? which program?) is taken as known
_SILENCED = 100_000  # files silenced at most: each ignore mark holds its inode in memory
_FAN_MARK_IGNORED_MASK = 0x00000020
_FAN_MARK_IGNORED_SURV_MODIFY = 0x00000040
# the ELF interpreter a program's exec opens as well (glibc's ld-linux*.so.N, ld64.so.N,
# musl's ld-musl-ARCH.so.1): the process runs the program, not it
_LOADER = re.compile(r"ld(-linux[-\w.]*|-musl-\w+|64)?\.so(\.\d+)?")


# -- what has been seen ----------------------------------------------------------------------

@dataclass
class _Use:
    kinds: set[str] = field(default_factory=set)
    programs: set[str] = field(default_factory=set)
    extra: set[str] = field(default_factory=set)  # programs past MAX_PROGRAMS (counted)


class PathTable:
    """Every distinct (path, kind, program) seen, bounded: at most `max_paths` paths and
    about `max_bytes` of text; past that, new uses are counted in `dropped`."""

    def __init__(self, max_paths: int, max_bytes: int) -> None:
        self.max_paths, self.max_bytes = max_paths, max_bytes
        self.uses: dict[str, _Use] = {}
        self.dropped = 0
        self._bytes = 0
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def add(self, path: str, kind: str, program: str) -> bool:
        """Record one use; False when exactly this use was recorded before."""
        key = (path, kind, program)
        if key in self._seen:  # the common case: a busy service opens the same files
            return False
        with self._lock:
            use = self.uses.get(path)
            cost = (_OVERHEAD + len(path) if use is None else 0) + (
                _OVERHEAD + len(program) if use is None or program not in use.programs
                and program not in use.extra else 0)
            if (use is None and len(self.uses) >= self.max_paths) or \
                    self._bytes + cost > self.max_bytes:
                self.dropped += 1
                return True
            self._bytes += cost
            if use is None:
                use = self.uses[path] = _Use()
            use.kinds.add(kind)
            if program in use.programs or program in use.extra:
                pass
            elif len(use.programs) < MAX_PROGRAMS:
                use.programs.add(program)
            else:
                use.extra.add(program)
            self._seen.add(key)
            return True

    def __len__(self) -> int:
        return len(self.uses)

    def result(self) -> dict[str, PathUse]:
        with self._lock:
            return {path: PathUse(frozenset(u.kinds), tuple(sorted(u.programs)), len(u.extra))
                    for path, u in self.uses.items()}


# -- the fanotify side -----------------------------------------------------------------------

class ContainerRecorder(fanotify.FanotifyRecorder):
    """The traced run's fanotify recorder, with events going to a PathTable.

    `any_container`: events of every process outside this host's own PID namespace count
    (an image's containers, marked before their PID namespace exists); otherwise only
    those of the namespaces of containers `add`ed. `host_views` are the mount points of
    marked overlays as this host sees them: events through them are not a container's.

    What a process is (ours? which program?) is looked up once per `_WHO_SECONDS` per pid;
    opens of a silenced file by another program are not attributed to that program (the
    path is recorded already); executions are never silenced."""

    def __init__(self, table: PathTable, *, any_container: bool,
                 max_silenced: int = _SILENCED) -> None:
        super().__init__()
        self.table = table
        self.any_container = any_container
        self.own_namespace = os.readlink("/proc/self/ns/pid")
        # pid -> what it last executed (exec events), for a process gone before it is named
        self.executed: dict[int, str] = {}
        # replaced, never changed in place: the event thread reads it without a lock
        self.host_views: tuple[str, ...] = ()
        self._who: dict[int, tuple[float, bool, str]] = {}  # pid -> (until, ours, program)
        self._silenced = 0
        self._max_silenced = max_silenced
        self._fanotify_mark = fanotify._libc().fanotify_mark

    def _event(self, fd: int, pid: int, is_exec: bool, now: float) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if self.host_views and self._host_view(path):
            self.foreign += 1
            return
        ours, program = self._process(pid, now)
        if not ours:
            self.foreign += 1
            return
        path = path.removesuffix(DELETED)  # read, then removed by the app: still needed
        if is_exec:
            # what ran; the process's own name at read time may be either side of the exec
            self.table.add(path, "exec", path)
            self._who.pop(pid, None)
            if not _LOADER.fullmatch(posixpath.basename(path)):
                if len(self.executed) >= _EXECUTED:
                    self.executed.clear()
                self.executed[pid] = path
            return
        if program == RUNTIME:
            return  # `runc init` setting the container up, not the application
        if not self.table.add(path, "open", program):
            self._silence(fd)

    def _process(self, pid: int, now: float) -> tuple[bool, str]:
        """(is it one of ours, its program) of `pid`, at most `_WHO_SECONDS` old."""
        known = self._who.get(pid)
        if known is not None and known[0] > now:
            return known[1], known[2]
        try:
            ours = self._ours(pid)
            program = os.readlink(f"/proc/{pid}/exe").removesuffix(DELETED)
        except OSError:  # exited before we looked: the mark attributes it
            return True, self.executed.get(pid, "")
        if len(self._who) >= _EXECUTED:
            self._who.clear()
        self._who[pid] = (now + _WHO_SECONDS, ours, program)
        return ours, program

    def _silence(self, fd: int) -> None:
        """No more open events for the file of `fd` (an ignore mark on its inode)."""
        if self._silenced >= self._max_silenced:
            return
        self._silenced += 1
        self._fanotify_mark(self._fd, fanotify.FAN_MARK_ADD | _FAN_MARK_IGNORED_MASK
                            | _FAN_MARK_IGNORED_SURV_MODIFY, fanotify.FAN_OPEN, fd, None)

    def _host_view(self, path: str) -> bool:
        return any(path == view or path.startswith(view + "/") for view in self.host_views)

    def _ours(self, pid: int) -> bool:
        if not self.any_container:
            return super()._ours(pid)
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") != self.own_namespace
        except OSError:
            return True  # exited before we looked: the mark attributes it


def snapshot(pid_namespace: str, root_dev: int, table: PathTable) -> int:
    """Record what every process of a container has mapped (its program, libraries,
    plugins) or open right now, as the container names it; returns how many processes.

    For a container that was running before the recorder came: what it loaded at start
    makes no event any more. Only files of the container's root filesystem count
    (`root_dev`); a volume's files are not the image's."""
    processes = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        base = f"/proc/{entry}"
        try:
            if os.readlink(f"{base}/ns/pid") != pid_namespace:
                continue
            exe = os.readlink(f"{base}/exe").removesuffix(DELETED)
            with open(f"{base}/maps", "rb") as f:
                maps = f.read(_MAPS_BYTES)
        except OSError:
            continue  # gone, or a kernel thread
        if exe == RUNTIME:
            continue
        processes += 1
        if exe.startswith("/"):
            table.add(exe, "exec", exe)
        for path in _mapped_files(maps, root_dev):
            table.add(path, "mapped", exe)
        for path in _open_files(base, root_dev):
            table.add(path, "open", exe)
    return processes


def _mapped_files(maps: bytes, root_dev: int) -> Iterator[str]:
    """File-backed mappings on `root_dev`; maps writes a newline in a name as `\\012`."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith(b"/"):
            continue
        major, _, minor = fields[3].partition(b":")
        try:
            dev = os.makedev(int(major, 16), int(minor, 16))
        except ValueError:
            continue
        if dev == root_dev:
            yield os.fsdecode(fields[5].replace(b"\\012", b"\n")).removesuffix(DELETED)


def _open_files(base: str, root_dev: int) -> Iterator[str]:
    """Regular files on `root_dev` the process has open (at most `_FDS` descriptors are
    looked at: a process may hold a million)."""
    try:
        with os.scandir(f"{base}/fd") as entries:
            fds = [e.name for _, e in zip(range(_FDS), entries, strict=False)]
    except OSError:
        return
    for fd in fds:
        try:
            st = os.stat(f"{base}/fd/{fd}")
            if stat.S_ISREG(st.st_mode) and st.st_dev == root_dev:
                yield os.readlink(f"{base}/fd/{fd}").removesuffix(DELETED)
        except OSError:
            continue
