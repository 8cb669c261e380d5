"""Read one file's bytes straight out of the layer data it came in.

Flattening records where each regular file's bytes lie (a blob on disk, an offset, a size)
instead of writing every file out: creating thousands of small host files was most of the
cost of reading an image. A reader here is confined to its member's byte range, so a file
of the image can never read its neighbours' bytes, whatever offset it seeks to (a sparse
member's segments, its holes read as zeros).

The data is opened again by name long after it was checked (digests verified while the
image was read), so a name is never trusted on its own: a blob is opened without following
a symlink and must still be the very file that was read then (same device and inode), and
a file of a layer directory the engine unpacked (read in place) is opened component by
component below that directory, following no symlink, and must be a regular file of the
size its tar header gave. Anything else is an OSError naming the file.
"""

from __future__ import annotations

import bisect
import errno
import io
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

_BUFFER = 64 << 10
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class ContentRef:
    """Where a regular file's bytes are: `size` bytes at `offset` of the file `blob`.

    `identity` is (st_dev, st_ino) of `blob` when its bytes were checked; with `root` set,
    `blob` is instead a path relative to that directory (a layer directory), offset 0.
    `sparse` (a sparse tar member): the file's data segments (offset in the file, length),
    whose bytes lie one after another from `offset` of `blob`; the rest reads as zeros.
    """

    blob: str
    offset: int
    size: int
    identity: tuple[int, int] | None = None
    root: str | None = None
    sparse: tuple[tuple[int, int], ...] | None = None


def open_checked(ref: ContentRef) -> int:
    """A descriptor of the file `ref` names, checked to be the file it was (module doc)."""
    if ref.root is not None:
        fd = _open_below(ref.root, ref.blob)
        want = f"{ref.root}/{ref.blob}"
    else:
        fd = os.open(ref.blob, _FILE)
        want = ref.blob
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", want)
        if ref.identity is not None and (st.st_dev, st.st_ino) != ref.identity:
            raise OSError(errno.ESTALE, "not the file the image was read from (replaced "
                          "since?)", want)
        if ref.root is not None and st.st_size != ref.size:
            raise OSError(errno.ESTALE, f"{st.st_size} bytes, the layer's tar says "
                          f"{ref.size}: the engine's storage changed", want)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_below(root: str, relpath: str) -> int:
    """Open `root`/`relpath` following no symlink, not even in the parent directories."""
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EINVAL, "not a plain relative path", f"{root}/{relpath}")
    dir_fd = os.open(root, _DIR)
    try:
        for comp in parts[:-1]:
            nxt = os.open(comp, _DIR, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = nxt
        return os.open(parts[-1], _FILE, dir_fd=dir_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f"{root}/{relpath}") from None
    finally:
        os.close(dir_fd)


class _Window(io.RawIOBase):
    """Seekable raw reader over [offset, offset+size) of a file, using pread only."""

    def __init__(self, ref: ContentRef) -> None:
        super().__init__()
        self._fd = open_checked(ref)
        self._base = ref.offset
        self._size = ref.size
        self._pos = 0
        # a sparse file: where each segment starts in the file, and its bytes in the blob
        self._starts: list[int] = []
        self._segments: list[tuple[int, int, int]] = []  # (file offset, length, blob offset)
        stored = ref.offset
        for offset, length in ref.sparse or ():
            self._starts.append(offset)
            self._segments.append((offset, length, stored))
            stored += length
        self._sparse = ref.sparse is not None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        if self._sparse:
            return self._read_sparse(buf, n)
        data = os.pread(self._fd, n, self._base + self._pos)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def _read_sparse(self, buf: bytearray | memoryview, n: int) -> int:
        """Up to `n` bytes at the position: a segment's bytes from the blob, or a hole's
        zeros up to the next segment."""
        i = bisect.bisect_right(self._starts, self._pos) - 1
        if i >= 0:
            offset, length, stored = self._segments[i]
            if self._pos < offset + length:
                n = min(n, offset + length - self._pos)
                data = os.pread(self._fd, n, stored + self._pos - offset)
                if not data:
                    raise OSError(errno.EIO, "the layer data ends inside a sparse file")
                buf[:len(data)] = data
                self._pos += len(data)
                return len(data)
        if i + 1 < len(self._starts):
            n = min(n, self._starts[i + 1] - self._pos)
        buf[:n] = bytes(n)
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._size + pos
        else:
            raise ValueError(f"invalid whence {whence}")
        if new < 0:
            raise OSError(f"negative seek position {new}")
        self._pos = new
        return new

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_ref(ref: ContentRef) -> BinaryIO:
    """A buffered, seekable binary reader over exactly the bytes `ref` names."""
    return io.BufferedReader(_Window(ref), _BUFFER)  # type: ignore[return-value]
