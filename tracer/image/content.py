"""Read one file's bytes straight out of the layer data it came in.

Flattening records where each regular file's bytes lie (a blob on disk, an offset, a size)
instead of writing every file out: creating thousands of small host files was most of the
cost of reading an image. A reader here is confined to its member's byte range, so a file
of the image can never read its neighbours' bytes, whatever offset it seeks to.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

_BUFFER = 64 << 10


@dataclass(frozen=True)
class ContentRef:
    """Where a regular file's bytes are: `size` bytes at `offset` of the file `blob`."""

    blob: str
    offset: int
    size: int


class _Window(io.RawIOBase):
    """Seekable raw reader over [offset, offset+size) of a file, using pread only."""

    def __init__(self, ref: ContentRef) -> None:
        super().__init__()
        self._fd = os.open(ref.blob, os.O_RDONLY | os.O_CLOEXEC)
        self._base = ref.offset
        self._size = ref.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._base + self._pos)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

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
