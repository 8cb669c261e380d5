"""Opening the files of an image input (an OCI layout's blobs, a docker-archive) so that
no link inside the input ever leads outside it.

An OCI layout comes from elsewhere: `blobs/sha256/<digest>` may be a symlink to
`/etc/shadow` or `/dev/zero`, a FIFO that blocks a reader forever, or a directory. Paths
inside the input are therefore opened component by component relative to the input's
own directory descriptor with O_NOFOLLOW (the way rootfs opens image files), with
O_NONBLOCK so a FIFO cannot block the open, and the result must be a regular file. The
name the operator gave for the input itself (the layout directory, the archive file) is
trusted and may be a symlink.

An opened file is then named by `/proc/self/fd/N` while the image is read (digests
checked, layers flattened), so swapping the path meanwhile cannot redirect those reads.
File content that the flattened image later reads in place (an uncompressed layer) is
read by the checked path: an input read in place must not be changed while it is used.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from tracer.errors import BadInput, ImageFormatError
from tracer.operatorfiles import check_regular, open_regular

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_root(path: Path, what: str) -> int:
    """A descriptor of the input directory the operator named (symlinks followed here)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadInput(f"{what}: no such directory") from None
    except NotADirectoryError:
        raise BadInput(f"{what}: not a directory") from None
    except PermissionError as exc:
        raise BadInput(f"{what}: cannot open: {exc.strerror}") from None


def open_input_file(path: Path, what: str) -> int:
    """A descriptor of the input file the operator named, checked to be a regular file."""
    return open_regular(path, "file", label=what)


def open_beneath(root_fd: int, relpath: str, where: str) -> int:
    """Open the regular file `relpath` (no `..`, no absolute path) below `root_fd`
    without following any symlink; ImageFormatError when it is missing, a link, or not a
    regular file."""
    parts = relpath.split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ImageFormatError(f"{where}: invalid path {relpath!r} in the input")
    dir_fd = root_fd
    try:
        for comp in parts[:-1]:
            try:
                nxt = os.open(comp, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _refusal(exc, relpath, where, "directory") from None
            if dir_fd != root_fd:
                os.close(dir_fd)
            dir_fd = nxt
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise _refusal(exc, relpath, where, "file") from None
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
    _require_regular(fd, f"{where}: {relpath}", ImageFormatError)
    return fd


def read_all(fd: int, size: int) -> bytes:
    """`size` bytes from the start of `fd` (a regular file), with pread."""
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(size - pos, 1 << 20), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _require_regular(fd: int, what: str, error: type[Exception]) -> None:
    check_regular(fd, "file", what, error)


def _refusal(exc: OSError, relpath: str, where: str, what: str) -> ImageFormatError:
    if exc.errno == errno.ENOENT:
        return ImageFormatError(f"{where}: {relpath} is missing")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ImageFormatError(f"{where}: {relpath}: a symlink or not a {what}; links in "
                                "an image input are never followed")
    return ImageFormatError(f"{where}: {relpath}: cannot open: {exc.strerror}")


def file_identity(path: Path) -> str:
    """sha256 of a file's bytes ("missing" when it cannot be read): a cheap identity of
    an input for `tracer batch`."""
    try:
        fd = open_input_file(path, str(path))
    except (BadInput, OSError):
        return "missing"
    try:
        return sha256_of(fd)
    finally:
        os.close(fd)


def sha256_of(fd: int) -> str:
    """`sha256:HEX` of the whole file open as `fd` (read with pread, 1 MiB at a time)."""
    h = hashlib.sha256()
    pos = 0
    while chunk := os.pread(fd, 1 << 20, pos):
        h.update(chunk)
        pos += len(chunk)
    return "sha256:" + h.hexdigest()
