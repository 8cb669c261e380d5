"""How trace data crosses from the container to tracer: FIFOs tracer made, read with a cap.

Everything a container writes is hostile. strace runs inside the container, so its output
is written by a process the application shares a kernel namespace and maybe a user with.
The rules here:

- tracer creates one FIFO per trace stream (the main run, each exec step, each command
  step) BEFORE any container starts, in a directory only tracer can write (0755, inside
  its private work dir), and bind-mounts that directory READ-ONLY into the container. A
  FIFO can be opened for writing through a read-only mount; nothing in it can be replaced,
  added or removed from the container (no symlink swap, no planted file, no filling the
  host's disk through it).
- tracer opens each FIFO with O_RDONLY|O_NOFOLLOW and checks with fstat that it is the
  very FIFO it made (type, device, inode) before reading a byte. The open blocks until
  strace opens its end, which is what holds the application back until the fanotify mark
  is in place.
- once opened, the FIFO's name is removed: no second writer can find it by path.
- the bytes are copied into a file in tracer's private work dir (never mounted anywhere),
  at most `cap` bytes for the whole run (Budgets.trace_bytes). Past the cap the stream is
  still drained and discarded, so the application never blocks on a full pipe, and the
  result's notes say the trace was cut.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 16


@dataclass
class _Channel:
    name: str
    fifo: Path
    ident: tuple[int, int]  # (st_dev, st_ino) of the FIFO tracer made
    dest: Path
    thread: threading.Thread | None = None
    opened: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class TraceChannels:
    """The FIFOs of one run, their pumps and the private copies they fill."""

    def __init__(self, scratch: Path, names: list[str], *, cap: int, mount: str,
                 writer_mode: int = 0o600) -> None:
        """Create `names` as FIFOs (mode `writer_mode`: 0600 when strace runs as root in the
        container, so a non-root app cannot even open them)."""
        self.mount, self.cap = mount, cap
        self.host_dir = Path(scratch) / "fifos"
        self.store = Path(scratch) / "traces"
        self.host_dir.mkdir(mode=0o755)
        self.host_dir.chmod(0o755)  # whatever the umask: readable, never writable, by others
        self.store.mkdir(mode=0o700)
        self.used = 0
        self.cut_streams: list[str] = []
        self.rejected: list[str] = []
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        for name in names:
            fifo = self.host_dir / f"{name}.fifo"
            os.mkfifo(fifo, 0o600)
            os.chmod(fifo, writer_mode, follow_symlinks=False)
            st = os.lstat(fifo)
            self._channels[name] = _Channel(name, fifo, (st.st_dev, st.st_ino),
                                            self.store / f"{name}.trace")

    def container_path(self, name: str) -> str:
        """Where the container sees `name`'s FIFO (strace's `-o`)."""
        return f"{self.mount}/{name}.fifo"

    def open(self, name: str) -> None:
        """Start reading `name` (once): the pump's open waits for strace's."""
        ch = self._channels[name]
        if ch.thread is None:
            ch.thread = threading.Thread(target=self._pump, args=(ch,), name=f"trace-{name}",
                                         daemon=True)
            ch.thread.start()

    def _pump(self, ch: _Channel) -> None:
        try:
            fd = os.open(ch.fifo, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            self.rejected.append(f"{ch.name}: cannot open its FIFO: {exc.strerror}")
            ch.done.set()
            return
        ch.opened.set()
        try:
            st = os.fstat(fd)
            if not stat.S_ISFIFO(st.st_mode) or (st.st_dev, st.st_ino) != ch.ident:
                self.rejected.append(f"{ch.name}: not the FIFO tracer made; not read")
                return
            with contextlib.suppress(OSError):
                os.unlink(ch.fifo)  # no other writer can find it by name any more
            self._copy(fd, ch)
        finally:
            os.close(fd)
            ch.done.set()

    def _copy(self, fd: int, ch: _Channel) -> None:
        out = os.open(ch.dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600)
        full = False
        try:
            while data := os.read(fd, CHUNK):
                if full:
                    continue  # drained and dropped: strace must never block on us
                with self._lock:
                    room = self.cap - self.used
                    take = data if len(data) <= room else data[: data.rfind(b"\n", 0, room) + 1]
                    self.used += len(take)
                if take:
                    os.write(out, take)
                if len(take) < len(data):
                    full = True
                    self.cut_streams.append(ch.name)
        finally:
            os.close(out)

    def close(self, timeout: float = 10.0) -> None:
        """Unblock pumps whose writer never came (strace did not start) and end them.

        Call after every container is gone: then every writer is dead and each pump reads
        its end of file.
        """
        import time

        deadline = time.monotonic() + timeout
        for ch in self._channels.values():
            while ch.thread is not None and ch.thread.is_alive():
                if not ch.opened.is_set():
                    with contextlib.suppress(OSError):  # ENXIO: its open() is not there yet
                        os.close(os.open(ch.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
                ch.thread.join(0.05 if not ch.opened.is_set() else
                               max(deadline - time.monotonic(), 0))
                if time.monotonic() >= deadline:
                    break

    def traces(self) -> dict[str, Path]:
        """The private copies that were filled (name -> file), in name order."""
        return {n: ch.dest for n, ch in sorted(self._channels.items()) if ch.dest.exists()}

    def notes(self) -> list[str]:
        from tracer.budgets import human

        out = list(self.rejected)
        if self.cut_streams:
            out.append(
                f"the trace was cut at the trace_bytes budget of {human(self.cap)} (streams: "
                f"{', '.join(sorted(set(self.cut_streams)))}); what came later was not "
                "recorded: raise it with --budget trace_bytes=N")
        return out


GATE_TRIES = 16  # rounds of reading out what someone else keeps writing into a gate


def _drain(fd: int, limit: int = 1 << 20) -> None:
    """Read out (and drop) what a non-blocking FIFO holds, at most `limit` bytes."""
    got = 0
    while got < limit:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not data:
            return
        got += len(data)


class Gate:
    """A FIFO the container's waiter reads before it execs the application (fanotify-only
    runs: without strace's blocking open, this is what holds the app until the mark is in
    place). Readable by any user, writable by tracer alone; `release()` writes one line
    into it without ever blocking, whether or not the waiter came."""

    def __init__(self, channels: TraceChannels, name: str) -> None:
        self.fifo = channels.host_dir / f"{name}.fifo"
        self.container_path = channels.container_path(name)
        os.mkfifo(self.fifo, 0o600)
        os.chmod(self.fifo, 0o644, follow_symlinks=False)
        st = os.lstat(self.fifo)
        self._ident = (st.st_dev, st.st_ino)
        self._fd = -1
        self.stuck = False  # release() could not write its line (see there)

    def release(self) -> None:
        """Let the waiter go: O_RDWR never blocks on a FIFO, and one short line fits its
        buffer; the fd stays open until close() so a waiter that comes late still reads it.

        Nothing else should write into the FIFO, but an app running as root in its
        container can (it is mounted read-only, which does not stop writes into a FIFO),
        and fill its buffer: then what it wrote is read out and the line written after a
        newline (ending any line it left unfinished). If it keeps the buffer full even so,
        the gate stays shut and `stuck` says so: that app's own step times out; tracer
        never blocks and never fails on it."""
        if self._fd >= 0:
            return
        fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            raise OSError(f"{self.fifo} is not the FIFO tracer made")
        self._fd = fd
        line = b"go\n"
        for _ in range(GATE_TRIES):
            try:
                os.write(fd, line)
                return
            except BlockingIOError:
                _drain(fd)
                line = b"\ngo\n"
        self.stuck = True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
