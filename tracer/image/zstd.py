"""zstd-compressed layers, decompressed by the reference `zstd` command as a stream.

buildkit and Podman can write zstd layers. Rather than a Python binding (one more
dependency than the four the design names) tracer runs the reference decompressor, `zstd
-d` (Debian package `zstd`), as a child process: compressed bytes go to its stdin, the tar
comes back on its stdout, a chunk at a time. It is bounded like every layer stream:

- what it hands out counts against the expansion and image_bytes budgets in the caller
  (streams.LayerStream), which stops reading the moment a budget is over; the child then
  blocks on a full pipe and is killed by `close`, so a bomb costs a pipe's worth of memory;
- its own memory: `--memory` caps the window a frame may ask for (zstd's default, said
  here so it cannot change under us);
- its stderr is kept to a few KiB (the rest is read and dropped, so it never blocks);
- its exit status is checked at the end of its output: a corrupt or truncated stream is
  an ImageFormatError naming the layer with zstd's own words;
- abandoned (an error elsewhere, a budget), it is killed and waited for: no zombie.

One thread: a poll loop feeds stdin and drains stdout and stderr as each is ready, so
neither side can fill a pipe the other waits on.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
from typing import BinaryIO, Protocol

from tracer.errors import EnvironmentProblem, ImageFormatError

_FEED = 256 << 10  # compressed bytes read from the blob and written to zstd at a time
_OUT = 1 << 20  # most bytes handed out by one read
_STDERR_KEPT = 4096
_MEMORY = "128MB"  # largest window a frame may need (zstd's default limit, made explicit)
ZSTD_COMMAND = ("zstd", "-d", "-c", "-q", "--no-progress", f"--memory={_MEMORY}")


class _Readable(Protocol):
    def read(self, n: int = -1) -> bytes: ...


def zstd_path() -> str:
    """The `zstd` command on PATH; EnvironmentProblem (exit 4) saying how to get it."""
    path = shutil.which(ZSTD_COMMAND[0])
    if path is None:
        raise EnvironmentProblem("reading a zstd-compressed layer needs the `zstd` command, "
                                 "which is not on PATH; install it (Debian: apt-get install "
                                 "zstd; scripts/setup does)")
    return path


class ZstdReader:
    """The decompressed bytes of `raw` (a zstd stream), read through a `zstd -d` child."""

    def __init__(self, raw: _Readable | BinaryIO, where: str) -> None:
        self._raw = raw
        self._where = where
        try:
            self._proc = subprocess.Popen(
                [zstd_path(), *ZSTD_COMMAND[1:]], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
        except OSError as exc:
            raise EnvironmentProblem(f"{where}: cannot start zstd to decompress the layer: "
                                     f"{exc.strerror or exc}") from None
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stdin: int | None = self._proc.stdin.fileno()
        self._stdout: int | None = self._proc.stdout.fileno()
        self._stderr: int | None = self._proc.stderr.fileno()
        os.set_blocking(self._stdin, False)
        self._sel = selectors.DefaultSelector()
        self._pending = memoryview(b"")
        self._raw_done = False
        self._errors = bytearray()
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (at least one unless the stream is over)."""
        if n == 0 or self._eof:
            return b""
        want = _OUT if n < 0 else min(n, _OUT)
        while True:
            self._watch()
            for key, _ in self._sel.select():
                fd = key.fd
                if fd == self._stdout:
                    data = os.read(fd, want)
                    if data:
                        return data
                    self._end()
                    return b""
                if fd == self._stderr:
                    self._drain_stderr(fd)
                elif fd == self._stdin:
                    self._feed(fd)

    def _watch(self) -> None:
        """Register what the loop waits for: stdout and stderr while open, stdin while
        there is something to write (refilled from the blob when empty)."""
        if not self._pending and not self._raw_done and self._stdin is not None:
            chunk = self._raw.read(_FEED)
            if chunk:
                self._pending = memoryview(chunk)
            else:
                self._raw_done = True
                self._close_stdin()
        wanted = {fd for fd in (self._stdout, self._stderr) if fd is not None}
        if self._stdin is not None and self._pending:
            wanted.add(self._stdin)
        have = set(self._sel.get_map())
        for fd in have - wanted:
            self._sel.unregister(fd)
        for fd in wanted - have:
            self._sel.register(fd, selectors.EVENT_WRITE if fd == self._stdin
                               else selectors.EVENT_READ)

    def _feed(self, fd: int) -> None:
        try:
            written = os.write(fd, self._pending)
        except BlockingIOError:
            return
        except BrokenPipeError:
            # zstd stopped reading (it found an error): its exit status says which
            self._pending = memoryview(b"")
            self._raw_done = True
            self._close_stdin()
            return
        self._pending = self._pending[written:]

    def _drain_stderr(self, fd: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            self._sel.unregister(fd)
            self._stderr = None
            return
        room = _STDERR_KEPT - len(self._errors)
        if room > 0:
            self._errors += data[:room]

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            if self._stdin in self._sel.get_map():
                self._sel.unregister(self._stdin)
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # type: ignore[union-attr]
            self._stdin = None

    def _end(self) -> None:
        """zstd closed its output: collect its status; anything but 0 is a corrupt stream."""
        self._eof = True
        self._close_stdin()
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.close()
            raise ImageFormatError(f"{self._where}: zstd closed its output but did not "
                                   "exit") from None
        if self._stderr is not None:  # it has exited: what is left in the pipe is all
            os.set_blocking(self._stderr, False)
            with contextlib.suppress(BlockingIOError):
                while self._stderr is not None:
                    self._drain_stderr(self._stderr)
        if code != 0:
            said = self._errors.decode("utf-8", "replace").strip().replace("\n", "; ")
            raise ImageFormatError(f"{self._where}: corrupt zstd stream: zstd exited with "
                                   f"status {code}: {said[:500] or 'no message'}")

    def close(self) -> None:
        """Stop the child (killed if still running) and reap it; never raises."""
        self._eof = True
        with contextlib.suppress(OSError, ValueError):
            self._sel.close()
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]
        self._stdin = self._stdout = self._stderr = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=30)
