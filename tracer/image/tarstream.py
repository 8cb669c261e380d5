"""A strict, streaming tar reader for untrusted layers.

Python's tarfile silently treats a corrupt header after the first member as the end of the
archive and reads PAX values as text; a layer whose size field lies would then lose files
without an error, and binary `security.capability` xattrs would be mangled. This reader
parses headers with tarfile's own block decoder but owns the control flow: every problem is
an ImageFormatError naming the layer and the member, data is copied in bounded chunks, and
PAX values stay bytes.

Sparse files are read as Docker reads them (Go's archive/tar), as regular files of their
real size whose holes read as zeros: PAX 1.0 (what GNU tar `--sparse --format=posix`
writes: the map of data segments at the start of the member's data, the real name in
GNU.sparse.name and a made-up one in the header), PAX 0.1 (the map in GNU.sparse.map) and
PAX 0.0 (offset/numbytes records). A map is checked the way Go checks it (segments in
order, not overlapping, inside the file, their lengths adding up to the data stored),
and what the holes add is reported (`holes`, `on_holes`) so that the layer's expansion
budget covers them. The old GNU form (type `S`, plain `tar --sparse`) is refused, naming
the path: Docker's reader refuses it too ("unhandled tar header type 83").
"""

from __future__ import annotations

import math
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from tracer.budgets import BudgetExceeded
from tracer.errors import ImageFormatError

MAX_PATH = 4096  # PATH_MAX: the default budget for a member name or link target
MAX_XATTR = 65536  # XATTR_SIZE_MAX
MAX_MTIME = 1e13  # seconds; far beyond any real timestamp, keeps int() and tar fields safe
BLOCK = 512
CHUNK = 1 << 20
MAX_SPECIAL = 1 << 20  # PAX / GNU long-name payloads; Go's archive/tar uses the same cap
# (and a sparse map: its bytes at the start of a PAX 1.0 member's data, or GNU.sparse.map)
_ZERO = bytes(BLOCK)
KIND_OF_TYPE = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}
# Errors a decompressor raises on a corrupt or truncated stream (zstd's child process
# reports its own as ImageFormatError: see zstd.py).
STREAM_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, ValueError)


@dataclass
class Member:
    """One tar member after PAX / GNU long-name records were applied."""

    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    # a sparse file: its data segments (offset, length) in the file of `size` bytes; the
    # segments' bytes follow one another in the stream; None for a plain file
    sparse: tuple[tuple[int, int], ...] | None = None


@dataclass
class RawHeader:
    """The fields of one 512-byte header block."""

    name: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    type: bytes
    linkname: str
    devmajor: int
    devminor: int


def utf8_len(text: str) -> int:
    """Bytes of a member name as stored (names are decoded with surrogateescape)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _num(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set."""
    if field[0] < 0x80:
        try:  # the common case, "0000644\0": what the general rule below gives, faster
            return int(field.rstrip(b"\0 "), 8)
        except ValueError:
            pass
    if field[0] & 0x80:
        if field[0] == 0xFF:
            raise ValueError("negative base-256 number")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def parse_header(buf: bytes) -> RawHeader:
    """Decode a header block; ValueError on a bad checksum or field.

    Hand-rolled instead of tarfile.TarInfo.frombuf because header parsing is the hot loop
    of flattening (one call per member and per PAX record); the rules are the same: the
    ustar prefix is used only with the POSIX magic, as in Go's archive/tar.
    """
    chk = _num(buf[148:156])
    unsigned = sum(buf) - sum(buf[148:156]) + 256
    if chk != unsigned:
        signed = unsigned - 256 * sum(1 for b in buf if b > 127) + 256 * sum(
            1 for b in buf[148:156] if b > 127)
        if chk != signed:
            raise ValueError("header checksum mismatch")
    name = _text(buf[0:100])
    if buf[257:263] == b"ustar\0" and buf[345] != 0:
        name = _text(buf[345:500]) + "/" + name
    t = buf[156:157]
    if t == tarfile.AREGTYPE and name.endswith("/"):
        t = tarfile.DIRTYPE
    device = t in (tarfile.CHRTYPE, tarfile.BLKTYPE)  # other types have no device numbers
    return RawHeader(name, _num(buf[100:108]), _num(buf[108:116]), _num(buf[116:124]),
                     _num(buf[124:136]), _num(buf[136:148]), t, _text(buf[157:257]),
                     _num(buf[329:337]) if device else 0, _num(buf[337:345]) if device else 0)


def parse_pax(data: bytes, where: str) -> dict[str, bytes]:
    """Parse PAX extended header records (`LEN KEY=VALUE\\n`), keeping values as bytes."""
    out: dict[str, bytes] = {}
    sparse: list[bytes] = []  # PAX 0.0 sparse records, offset and numbytes alternating
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp]) if sp > pos else -1
        except ValueError:
            length = -1
        if length <= 0 or pos + length > len(data) or data[pos + length - 1:pos + length] != b"\n":
            raise ImageFormatError(f"{where}: malformed PAX header record at byte {pos}")
        key, eq, value = data[sp + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise ImageFormatError(f"{where}: malformed PAX header record at byte {pos}")
        k = key.decode("utf-8", "surrogateescape")
        if k in ("GNU.sparse.offset", "GNU.sparse.numbytes"):
            if (k == "GNU.sparse.offset") != (len(sparse) % 2 == 0):
                raise ImageFormatError(f"{where}: sparse map records out of order at byte "
                                       f"{pos}")
            sparse.append(value)
        elif value:
            out[k] = value
        else:
            out.pop(k, None)
        pos += length
    if sparse:  # as Go's archive/tar does: one map, as PAX 0.1 writes it
        out["GNU.sparse.map"] = b",".join(sparse)
    return out


def _sparse_kind(pax: dict[str, bytes], type_: bytes) -> str | None:
    """The sparse format of a member: "1.0" (map in the data), "0.x" (map in the PAX
    header: 0.1's GNU.sparse.map, or 0.0's offset/numbytes records, which parse_pax joins
    into one), "GNU" (type S), "unknown"; None if not sparse."""
    if type_ == tarfile.GNUTYPE_SPARSE:
        return "GNU"
    if not pax or not any(k.startswith("GNU.sparse.") for k in pax):
        return None
    major, minor = pax.get("GNU.sparse.major"), pax.get("GNU.sparse.minor")
    if major == b"1" and minor == b"0":
        return "1.0"
    if "GNU.sparse.map" in pax and major in (None, b"0"):
        return "0.x"
    return "unknown"


def _numbers(text: bytes, sep: bytes | None, where: str) -> list[int]:
    """Decimal numbers separated by `sep` (None: one number): each at most 20 digits."""
    out = []
    for word in text.split(sep) if sep is not None else [text]:
        if not word.isdigit() or len(word) > 20:
            raise ImageFormatError(f"{where}: malformed sparse map (not a number: "
                                   f"{word[:40]!r})")
        out.append(int(word))
    return out


class TarReader:
    """Iterate members of one layer stream; call `copy_data` or nothing before `next`."""

    def __init__(self, stream: BinaryIO, where: str, max_path: int = MAX_PATH,
                 on_holes: Callable[[int, str], None] | None = None) -> None:
        self._f = stream
        self._where = where
        self._max_path = max_path
        self._remaining = 0
        self._stored = 0  # bytes of data the current member has in the stream
        self._pad = 0
        self._current: Member | None = None
        # bytes the holes of sparse members add to the layer, and who is told (the
        # layer's stream, which holds them to its expansion budget) as each is read
        self.holes = 0
        self._on_holes = on_holes
        self.last_name = "(start of layer)"
        # Bytes consumed from the stream so far, and where the current member's data starts:
        # flatten records that offset instead of copying the data out.
        self.offset = 0
        self.data_offset = 0

    def _at(self) -> str:
        return f"{self._where}: member {self.last_name!r}"

    def _read(self, n: int) -> bytes:
        """Read up to n bytes (short only at end of stream); decompression errors -> format."""
        parts = []
        try:
            while n > 0:
                chunk = self._f.read(n)
                if not chunk:
                    break
                parts.append(chunk)
                n -= len(chunk)
                self.offset += len(chunk)
        except STREAM_ERRORS as exc:
            raise ImageFormatError(f"{self._at()}: corrupt or truncated stream: {exc}") from exc
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _read_special(self, size: int, what: str) -> bytes:
        if size > MAX_SPECIAL:
            raise ImageFormatError(f"{self._at()}: {what} of {size} bytes exceeds the "
                                   f"{MAX_SPECIAL}-byte limit")
        data = self._read(size + (-size) % BLOCK)
        if len(data) < size:
            raise ImageFormatError(f"{self._at()}: stream ends inside a {what}")
        return data[:size]

    def _skip_rest(self) -> None:
        skip = getattr(self._f, "skip", None)
        if skip is not None and self._remaining:
            # a stream of headers only (a layer read in place): the data is not in it
            skip(self._remaining)
            self.offset += self._remaining
            self._remaining = 0
        while self._remaining:
            n = min(CHUNK, self._remaining)
            if len(self._read(n)) != n:
                self._truncated()
            self._remaining -= n
        if self._pad:
            if len(self._read(self._pad)) != self._pad:
                raise ImageFormatError(f"{self._at()}: stream ends inside the padding after "
                                       "the member's data")
            self._pad = 0

    def _truncated(self) -> None:
        size = self._stored
        raise ImageFormatError(
            f"{self._at()}: declares {size} bytes of data but the stream ends after "
            f"{size - self._remaining} (truncated layer or a size that lies)")

    def next(self) -> Member | None:
        """Return the next member, or None at the end of the archive."""
        self._skip_rest()
        pax: dict[str, bytes] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            buf = self._read(BLOCK)
            if not buf:
                return None
            if len(buf) < BLOCK:
                raise ImageFormatError(f"{self._where}: stream ends inside the tar header "
                                       f"after member {self.last_name!r}")
            if buf == _ZERO:
                nxt = self._read(BLOCK)
                if nxt and nxt != _ZERO:
                    raise ImageFormatError(f"{self._where}: data after a zero block following "
                                           f"member {self.last_name!r} (corrupt tar)")
                return None
            try:
                ti = parse_header(buf)
            except ValueError as exc:
                raise ImageFormatError(f"{self._where}: invalid tar header after member "
                                       f"{self.last_name!r}: {exc} (corrupt tar or a size "
                                       "that lies)") from exc
            t = ti.type
            if t in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                # a later PAX header replaces an earlier one (as Go's archive/tar does):
                # merging would let a chain of headers pile up keys without bound
                pax = parse_pax(self._read_special(ti.size, "PAX header"), self._at())
                continue
            if t == tarfile.XGLTYPE:  # global PAX header: ignored, as Docker does
                self._read_special(ti.size, "PAX global header")
                continue
            if t == tarfile.GNUTYPE_LONGNAME:
                raw = self._read_special(ti.size, "GNU long name")
                long_name = raw.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if t == tarfile.GNUTYPE_LONGLINK:
                raw = self._read_special(ti.size, "GNU long link name")
                long_link = raw.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            break
        return self._member(ti, pax, long_name, long_link)

    def _member(self, ti: RawHeader, pax: dict[str, bytes], long_name: str | None,
                long_link: str | None) -> Member:
        def text(key: str, default: str) -> str:
            return pax[key].decode("utf-8", "surrogateescape") if key in pax else default

        name = text("path", long_name if long_name is not None else ti.name)
        sparse_kind = _sparse_kind(pax, ti.type)
        if sparse_kind is not None and "GNU.sparse.name" in pax:
            name = text("GNU.sparse.name", name)  # the header's name is made up
        self.last_name = name[:200]
        link = text("linkpath", long_link if long_link is not None else ti.linkname)
        for what, value in (("name", name), ("link target", link)):
            if utf8_len(value) > self._max_path:
                # every parent of a name becomes a path of the index: a huge name would
                # cost memory quadratic in its length; Linux refuses such paths (PATH_MAX)
                raise BudgetExceeded("path_length", self._max_path,
                                     f"{self._where}: member {name[:80]!r}...: {what} is "
                                     f"{utf8_len(value)} bytes long")
        if sparse_kind == "GNU":
            raise ImageFormatError(f"{self._at()}: a sparse file in the old GNU format (tar "
                                   "type S), which Docker refuses too; write the layer with "
                                   "--format=posix (PAX sparse files are read)")
        if sparse_kind == "unknown":
            raise ImageFormatError(f"{self._at()}: a sparse file in a format tracer does not "
                                   "know (PAX GNU.sparse.* keys without a map)")
        kind = KIND_OF_TYPE.get(ti.type)
        if kind is None:
            raise ImageFormatError(f"{self._at()}: unsupported tar member type {ti.type!r}")
        if sparse_kind is not None and kind != "file":
            raise ImageFormatError(f"{self._at()}: sparse file headers on a {kind}")
        try:
            size = int(pax["size"]) if "size" in pax else ti.size
            uid = int(pax["uid"]) if "uid" in pax else ti.uid
            gid = int(pax["gid"]) if "gid" in pax else ti.gid
            mtime = float(pax["mtime"]) if "mtime" in pax else float(ti.mtime)
        except ValueError as exc:
            raise ImageFormatError(f"{self._at()}: bad numeric PAX field: {exc}") from exc
        if size < 0 or uid < 0 or gid < 0:
            raise ImageFormatError(f"{self._at()}: negative size or owner id")
        if not math.isfinite(mtime) or abs(mtime) > MAX_MTIME:
            raise ImageFormatError(f"{self._at()}: mtime {mtime!r} out of range")
        xattrs = {k[len("SCHILY.xattr."):]: v for k, v in pax.items()
                  if k.startswith("SCHILY.xattr.")} if pax else {}
        if any(len(v) > MAX_XATTR for v in xattrs.values()):
            raise ImageFormatError(f"{self._at()}: xattr value over {MAX_XATTR} bytes "
                                   "(Linux allows at most 64 KiB)")
        m = Member(
            name=name,
            kind=kind,
            mode=ti.mode & 0o7777,
            uid=uid,
            gid=gid,
            mtime=mtime,
            size=size if kind == "file" else 0,
            linkname=link,
            devmajor=ti.devmajor,
            devminor=ti.devminor,
            xattrs=xattrs,
        )
        self._current = m
        # Only regular files carry data: header-only types ignore their size (as Go and
        # tarfile do), so a lying size on a symlink cannot swallow the next members.
        self._stored = m.size
        self._pad = (-m.size) % BLOCK
        if sparse_kind is not None:
            self._sparse(m, pax, sparse_kind)
        self._remaining = self._stored
        self.data_offset = self.offset
        return m

    def _sparse(self, m: Member, pax: dict[str, bytes], version: str) -> None:
        """Make `m` the sparse file its headers describe: its size the real size, its
        segments from the map (read from the data for 1.0, which consumes whole blocks)."""
        key = "GNU.sparse.realsize" if version == "1.0" else "GNU.sparse.size"
        try:
            real = int(pax[key])
        except (KeyError, ValueError):
            raise ImageFormatError(f"{self._at()}: sparse file without a valid {key}") from None
        if real < 0 or real > 1 << 62:
            raise ImageFormatError(f"{self._at()}: sparse file of {real} bytes")
        stored = self._stored
        if getattr(self._f, "skip", None) is not None:
            # headers only (a layer the engine unpacked, its tar-split records): the file
            # on disk is whole, and the record that stands for its data stands for all of
            # it (the map, which 1.0 keeps in the data, is not recorded); the stream counts
            # those bytes, holes included, as it passes over them
            m.size = self._stored = real
            return
        if version == "1.0":
            numbers, used = self._read_sparse_map(stored)
            self._stored = stored - used  # the padding after the data stays as it was
            pairs = numbers[1:]
        else:
            pairs = _numbers(pax["GNU.sparse.map"], b",", self._at())
        if len(pairs) % 2:
            raise ImageFormatError(f"{self._at()}: malformed sparse map (an offset without "
                                   "its length)")
        segments: list[tuple[int, int]] = []
        end = 0
        for offset, length in zip(pairs[0::2], pairs[1::2], strict=True):
            if offset < end or offset + length > real:
                raise ImageFormatError(f"{self._at()}: sparse map segments overlap, are out "
                                       f"of order or end past the file's {real} bytes")
            end = offset + length
            if length:
                segments.append((offset, length))
        data = sum(length for _, length in segments)
        if data != self._stored:
            raise ImageFormatError(f"{self._at()}: the sparse map names {data} bytes of data, "
                                   f"the member holds {self._stored}")
        m.size, m.sparse = real, tuple(segments)
        self._report_holes(real - data, m.name)

    def _report_holes(self, n: int, name: str) -> None:
        self.holes += n
        if self._on_holes is not None and n:
            self._on_holes(n, name)

    def _read_sparse_map(self, stored: int) -> tuple[list[int], int]:
        """The numbers of a PAX 1.0 sparse map (count, then offset and length pairs, each
        a decimal line) and the bytes of whole blocks it took from the member's data."""
        numbers: list[int] = []
        want = 1
        used = 0
        text = b""
        pos = 0
        while len(numbers) < want:
            nl = text.find(b"\n", pos)
            if nl >= 0:
                numbers += _numbers(text[pos:nl], None, self._at())
                pos = nl + 1
                if len(numbers) == 1:
                    want = 1 + 2 * numbers[0]
                    if want > MAX_SPECIAL:
                        raise ImageFormatError(f"{self._at()}: sparse map of {numbers[0]} "
                                               "segments")
                continue
            if used + BLOCK > min(stored, MAX_SPECIAL):
                raise ImageFormatError(f"{self._at()}: the sparse map does not end within "
                                       f"the member's data (or {MAX_SPECIAL} bytes)")
            block = self._read(BLOCK)
            if len(block) < BLOCK:
                raise ImageFormatError(f"{self._at()}: stream ends inside a sparse map")
            used += BLOCK
            text = text[pos:] + block
            pos = 0
        return numbers, used

    def copy_data(self, fd: int) -> None:
        """Write the current member's data to `fd` in bounded chunks (a sparse file's
        segments at their offsets, its holes left as holes, its size the real size)."""
        m = self._current
        if m is not None and m.sparse is not None:
            for offset, length in m.sparse:
                self._copy(fd, length, offset)
            os.ftruncate(fd, m.size)
            return
        if self._remaining > 0 and self._remaining + self._pad <= CHUNK:
            # small member: data and its padding in one read (the common case)
            want = self._remaining + self._pad
            chunk = self._read(want)
            if len(chunk) < self._remaining:
                self._remaining -= len(chunk)
                self._truncated()
            if len(chunk) < want:
                raise ImageFormatError(f"{self._at()}: stream ends inside the padding after "
                                       "the member's data")
            view = memoryview(chunk)[:self._remaining]
            self._remaining = self._pad = 0
            while view:
                view = view[os.write(fd, view):]
            return
        self._copy(fd, self._remaining, None)

    def _copy(self, fd: int, length: int, offset: int | None) -> None:
        """`length` bytes of the member's data to `fd`, CHUNK at a time: at `offset` (a
        sparse segment), or where `fd` stands (None)."""
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            chunk = self._read(n)
            if len(chunk) != n:
                self._remaining -= len(chunk)
                self._truncated()
            view = memoryview(chunk)
            while view:
                if offset is None:
                    written = os.write(fd, view)
                else:
                    written = os.pwrite(fd, view, offset + done + n - len(view))
                view = view[written:]
            done += n
            self._remaining -= n
