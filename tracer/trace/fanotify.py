"""The fanotify recorder: every open and exec through a container's own root mount.

ptrace cannot follow a setuid exec and sees nothing of what the kernel opens itself (the
ELF interpreter, a `#!` interpreter); fanotify sees every open, whoever makes it. It gives
resolved paths only and no stat/access/readlink/listing, so it is the second recorder,
merged with strace (or the only one, for an app that behaves differently under ptrace).
It needs CAP_SYS_ADMIN on the engine's host; where that is missing `available()` says why
and the run goes on with strace alone.

Attribution: only the traced container's processes count.
- The mark is a MOUNT mark on the container's own root mount, reached through
  /proc/<container pid>/root. That mount exists only in the container's mount namespace:
  a host process reading the same files through the engine's merged directory (`docker
  cp`, an operator's `cat`) goes through another mount and produces no event at all. The
  kernel names each file relative to that mount's root, i.e. as the container sees it.
- Each event's process must also be in one of the traced containers' PID namespaces; an
  event of any other live process (a host process that reached the mount through
  /proc/<pid>/root) is dropped and counted (`foreign`). A process that has already exited
  when its event is read cannot be checked; its event is attributed by the mount alone.

Bounds: the app decides how many opens there are (a loop opening one file makes millions
of events, each naming a command line of up to 64 KiB). An event that says what an
earlier one of the same smoke step said is not kept again, command lines are shared, and
past `max_events` distinct events or `max_bytes` of their text the rest is counted in
`dropped`, not kept. Events are read 128 at a time: the kernel opens a descriptor for
each event it hands over, and one it cannot open (EMFILE) is lost without a trace.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tracer.trace.result import Access

FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FILESYSTEM = 0x00000100
FAN_OPEN = 0x00000020
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_ONDIR = 0x40000000
FAN_NOFD = -1
_METADATA = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata (24 bytes)
_READ = 128 * _METADATA.size  # events per read: at most this many descriptors at once
_OVERHEAD = 64  # bytes of bookkeeping counted per kept event and per command line word
_AT_FDCWD = -100


@dataclass(frozen=True)
class FanEvent:
    """One fanotify event: the path as the container sees it, host pid, kind, host time."""

    path: str
    pid: int
    exec: bool
    ts: float
    program: str = ""
    cmdline: tuple[str, ...] = ()


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_char_p,
    ]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


def available() -> str | None:
    """None if fanotify can be used here, else the reason it cannot."""
    if os.geteuid() != 0:
        # a rootless engine's root is not enough: fanotify marks need CAP_SYS_ADMIN in
        # the host's own user namespace
        return ("not running as root on the engine's host (fanotify needs CAP_SYS_ADMIN "
                "there; a rootless engine's root has none)")
    try:
        fd = _libc().fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, os.O_RDONLY)
    except (OSError, AttributeError) as exc:
        return f"fanotify is not available: {exc}"
    if fd < 0:
        return f"fanotify_init failed: {os.strerror(ctypes.get_errno())}"
    os.close(fd)
    return None


@dataclass
class FanotifyRecorder:
    """Records opens/execs through the root mounts of the containers whose init pids are
    added (`add`), in a background thread."""

    events: list[FanEvent] = field(default_factory=list)
    overflowed: bool = False
    lost: int = 0  # events whose file the kernel could not open for us
    foreign: int = 0  # events of processes outside the traced containers, dropped
    # the smoke step now running, as a number that changes when the next one starts: an
    # event like an earlier one of the same step adds nothing and is not kept
    epoch: Callable[[], int] = lambda: 0
    max_events: int = 2_000_000  # distinct events kept (Budgets.entries)
    max_bytes: int = 2 << 30  # text of the kept events (Budgets.trace_bytes)
    dropped: int = 0  # distinct events past max_events or max_bytes, not kept
    _seen: set[tuple] = field(default_factory=set)
    _programs: dict[str, str] = field(default_factory=dict)  # one copy of each
    _cmdlines: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    _bytes: int = 0
    _fd: int = -1
    _namespaces: set[str] = field(default_factory=set)  # pid namespaces that count
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _wake: tuple[int, int] | None = None  # a pipe: stop() wakes the loop at once

    def start(self, container_pid: int | None) -> None:
        """Open the group and mark the first container (None: none yet, `add` or
        `add_filesystem` follow); raises OSError with the reason if the kernel refuses."""
        libc = _libc()
        fd = libc.fanotify_init(
            FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
            os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC,
        )
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self._fd = fd
        try:
            if container_pid is not None:
                self.add(container_pid)
        except OSError:
            os.close(fd)
            self._fd = -1
            raise
        self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._loop, name="fanotify", daemon=True)
        self._thread.start()

    def add(self, container_pid: int) -> None:
        """Mark the root mount of the container whose process (as the host sees it) is
        `container_pid`, and let its PID namespace count. Call while that process is held
        before the application's first open (strace blocked on its FIFO, or the waiter)."""
        root = f"/proc/{container_pid}/root"
        namespace = os.readlink(f"/proc/{container_pid}/ns/pid")
        rc = _libc().fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_MOUNT,
                                   FAN_OPEN | FAN_OPEN_EXEC | FAN_ONDIR, _AT_FDCWD,
                                   os.fsencode(root))
        if rc < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark {root}: {os.strerror(err)}")
        self._namespaces.add(namespace)

    def add_filesystem(self, mountpoint: str, dev: int, *, remove: bool = False) -> None:
        """Mark (or unmark) the whole filesystem mounted at `mountpoint`, a host path whose
        mount has device number `dev`: for a container's overlay, every mount of it, the
        container's own root mount too, as soon as the engine has mounted it and before
        any process of the container runs. Events through the host's mount name host paths
        (`MOUNTPOINT/...`); the caller tells them apart (tracer.trace.record).

        A short job's overlay may be unmounted before it is marked: the path then names
        the directory under it, on the host's own filesystem, and marking that would
        record every open on the host. So the directory is opened first and marked
        through that descriptor only if it is still the mount of `dev` (FileNotFoundError
        otherwise); the descriptor also keeps the filesystem from going away meanwhile."""
        flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | FAN_MARK_FILESYSTEM
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_dev != dev:
                raise FileNotFoundError(errno.ENOENT, f"{mountpoint} is no longer mounted")
            rc = _libc().fanotify_mark(self._fd, flags, FAN_OPEN | FAN_OPEN_EXEC | FAN_ONDIR,
                                       fd, None)
        finally:
            os.close(fd)
        if rc < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark {mountpoint}: {os.strerror(err)}")

    def stop(self) -> None:
        """Drain what is queued, stop the thread and close the fd; safe to call twice."""
        self._stop.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._wake is not None:
            for end in self._wake:
                os.close(end)
            self._wake = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._drain()
            os.close(self._fd)
            self._fd = -1

    def _loop(self) -> None:
        assert self._wake is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd, self._wake[0]], [], [], 1.0)
            if self._fd in ready:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, _READ)
            except BlockingIOError:
                return
            except OSError:
                # the kernel could not open the file of one event (gone, EPERM, EMFILE):
                # that event is dropped, the ones behind it are still there
                self.lost += 1
                continue
            if not buf:
                return
            self._parse(buf)

    def _parse(self, buf: bytes) -> None:
        now = time.time()
        off = 0
        while off + _METADATA.size <= len(buf):
            event_len, _vers, _res, _mlen, mask, fd, pid = _METADATA.unpack_from(buf, off)
            if event_len < _METADATA.size:
                break
            off += event_len
            if mask & FAN_Q_OVERFLOW:
                self.overflowed = True
            if fd == FAN_NOFD or fd < 0:
                continue
            try:
                self._event(fd, pid, bool(mask & FAN_OPEN_EXEC), now)
            finally:
                os.close(fd)

    def _event(self, fd: int, pid: int, is_exec: bool, now: float) -> None:
        """One event whose file is open as `fd` (closed by the caller)."""
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if not self._ours(pid):
            self.foreign += 1
            return
        program, cmdline = self._program(pid)
        self._keep(FanEvent(path, pid, is_exec, now, program, cmdline))

    def _keep(self, ev: FanEvent) -> None:
        """Keep `ev` unless an earlier event of this step said the same, or the bounds
        are reached (module docstring)."""
        epoch = self.epoch()
        if (ev.path, ev.exec, ev.program, ev.cmdline, epoch) in self._seen:
            return
        cost = _OVERHEAD + len(ev.path)
        program, cmdline = self._programs.get(ev.program), self._cmdlines.get(ev.cmdline)
        if program is None:
            cost += _OVERHEAD + len(ev.program)
        if cmdline is None:
            cost += sum(_OVERHEAD + len(a) for a in ev.cmdline)
        if len(self.events) >= self.max_events or self._bytes + cost > self.max_bytes:
            self.dropped += 1
            return
        self._bytes += cost
        if program is None:
            program = self._programs[ev.program] = ev.program
        if cmdline is None:
            cmdline = self._cmdlines[ev.cmdline] = ev.cmdline
        self._seen.add((ev.path, ev.exec, program, cmdline, epoch))  # the shared copies
        self.events.append(FanEvent(ev.path, ev.pid, ev.exec, ev.ts, program, cmdline))

    def _ours(self, pid: int) -> bool:
        """False for a live process outside every traced container's PID namespace."""
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") in self._namespaces
        except OSError:
            return True  # exited before we looked: the mount mark attributes it

    @staticmethod
    def _program(pid: int) -> tuple[str, tuple[str, ...]]:
        """The process's executable and argv now (best effort: it may have exec'd or exited
        since the event). Not cached: an exec from a bind mount gives no event to
        invalidate a cache with, and a stale program would misattribute every later open.
        The kernel names the executable as the container sees it (its mounts are not
        reachable from our root)."""
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = tuple(os.fsdecode(a) for a in f.read(1 << 16).split(b"\0") if a)
        except OSError:
            return "", ()
        return exe, argv


def is_tooling(ev: FanEvent, tool_prefix: str) -> bool:
    """True for opens by the tracer itself (strace reading the image's /etc/localtime) or by
    `runc init` setting the container up: they say nothing about what the app needs. An
    exec is always the app's (the bundle lives on a bind mount, not on the overlay)."""
    if ev.exec:
        return False
    return ev.program.startswith(tool_prefix.rstrip("/") + "/") or ev.cmdline[:2] == (
        "runc",
        "init",
    )


def unidentified(ev: FanEvent) -> bool:
    """An open whose process was gone before it could be named. Beside strace that is
    almost always tooling: strace, PID 1 of the container, reads the image's
    /etc/localtime as it exits, and is gone by the time the event is read."""
    return not ev.exec and not ev.program


def to_accesses(
    events: list[FanEvent],
    *,
    step_of: Callable[[float | None], str],
    excluded: Callable[[str], bool],
    tool_prefix: str = "/.tracer",
    keep_unidentified: bool = True,
) -> list[Access]:
    """fanotify events as Access records (`fanotify:open` / `fanotify:exec`, always ok).

    `keep_unidentified=False` (strace records the same processes) drops opens whose
    process had exited before it could be named: strace saw every open of the app's
    own processes, so such an event can only add tooling noise (and made two runs of
    the same profile keep different files).
    """
    out = []
    for ev in events:
        if not ev.path.startswith("/") or excluded(ev.path) or is_tooling(ev, tool_prefix):
            continue
        if not keep_unidentified and unidentified(ev):
            continue
        out.append(
            Access(
                path=ev.path,
                syscall="fanotify:exec" if ev.exec else "fanotify:open",
                ok=True,
                errno=None,
                pid=ev.pid,
                program=ev.program,
                cmdline=ev.cmdline,
                step=step_of(ev.ts),
            )
        )
    return out
