"""Write a set of flattened paths as one uncompressed layer tar, hashing while writing.

Member names are relative without `./` and directories end in `/`, as Docker's own layers
are; owners, modes (setuid included), mtimes, xattrs and hardlinks come from the index, the
bytes straight from the source's layer data (`FlatImage.open_content`). Headers are PAX so
long names and binary `security.capability` values survive. A hardlink's header carries
its inode's xattrs too: an engine applying it chowns the shared inode, which drops a file
capability the header does not set again (see flatten.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tracer.errors import BadInput, ImageFormatError, no_space
from tracer.image.model import Entry, FlatImage
from tracer.image.paths import member_path

_CHUNK = 1 << 20
_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


class HashingWriter:
    """Counts and sha256-hashes every byte on its way to the file."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        self._f.write(data)
        self.count += len(data)

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


@dataclass
class LayerStats:
    diff_id: str
    size: int
    members: int


def closed_paths(flat: FlatImage, keep: Iterable[str]) -> list[str]:
    """`keep` normalized, checked against the image and closed over parent directories,
    in tar order (a parent sorts before its children); "/" itself is not a member."""
    out: set[str] = set()
    for raw in keep:
        path = member_path(raw, "keep list") if raw.startswith("/") else None
        if path is None:
            raise BadInput(f"keep list: {raw!r} is not an absolute in-image path")
        if path not in flat.entries:
            raise BadInput(f"keep list: {path} is not in the image (keep paths must be real "
                           "paths: no parent may be a symlink)")
        while path != "/" and path not in out:
            out.add(path)
            path = path.rsplit("/", 1)[0] or "/"
    for p in out:
        parent = p.rsplit("/", 1)[0] or "/"
        if flat.entries[parent].kind != "dir":
            raise BadInput(f"keep list: {p}: parent {parent} is not a directory in the image")
    return sorted(out)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typ: bytes,
           linkname: bytes, devmajor: int, devminor: int) -> bytes:
    b = bytearray(tarfile.BLOCKSIZE)
    b[0:len(name)] = name
    b[100:108] = b"%07o\0" % mode
    b[108:116] = b"%07o\0" % uid
    b[116:124] = b"%07o\0" % gid
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"%011o\0" % mtime
    b[148:156] = b"        "
    b[156:157] = typ
    b[157:157 + len(linkname)] = linkname
    b[257:265] = b"ustar\x0000"
    b[329:337] = b"%07o\0" % devmajor
    b[337:345] = b"%07o\0" % devminor
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def encode_header(name: str, e: Entry, typ: bytes, size: int, linkname: str,
                  devmajor: int = 0, devminor: int = 0) -> bytes:
    """ustar header block(s) for one member, preceded by a PAX header when a field does not
    fit ustar (long or non-ASCII names, fractional mtimes, big numbers, xattrs).

    Hand-rolled instead of TarInfo.tobuf: it runs once per kept path, and tobuf's generic
    PAX checks cost more than the rest of the write loop.
    """
    pax: dict[str, bytes] = {}
    nb = name.encode("utf-8", "surrogateescape")
    if len(nb) > 100 or not nb.isascii():
        pax["path"] = nb
        nb = nb[:100].decode("ascii", "replace").encode("ascii", "replace")[:100]
    lb = linkname.encode("utf-8", "surrogateescape")
    if len(lb) > 100 or not lb.isascii():
        pax["linkpath"] = lb
        lb = b""
    mtime = e.mtime
    if mtime != int(mtime) or not 0 <= mtime < 8**11:
        pax["mtime"] = (b"%.9f" % mtime).rstrip(b"0").rstrip(b".")
        mtime = max(0, min(int(mtime), 8**11 - 1))
    uid, gid = e.uid, e.gid
    if uid >= 8**7:
        pax["uid"], uid = b"%d" % uid, 0
    if gid >= 8**7:
        pax["gid"], gid = b"%d" % gid, 0
    if size >= 8**11:
        pax["size"] = b"%d" % size
    for k, v in e.xattrs.items():
        pax[f"SCHILY.xattr.{k}"] = v
    head = _block(nb, e.mode & 0o7777, uid, gid, size if size < 8**11 else 0, int(mtime), typ,
                  lb, devmajor, devminor)
    if not pax:
        return head
    records = b"".join(_pax_record(k, v) for k, v in pax.items())
    xhead = _block(b"././@PaxHeader", 0o644, 0, 0, len(records), 0, tarfile.XHDTYPE, b"", 0, 0)
    return xhead + records + bytes((-len(records)) % tarfile.BLOCKSIZE) + head


class LayerPlan:
    """The layer tar of `paths` (from `closed_paths`), planned before a byte is written:
    every member's header, and its size in total. The size is known up front, so the layer
    can be streamed as a member of an outer tar (into the engine's load) without being
    written anywhere first; `chunks` then yields exactly `size` bytes.

    A hardlink group is written once, as the file, under its first kept name (the paths
    are sorted, so the smallest), the other kept names as links to it: a group whose
    smallest name was not kept still gets its content once.

    `whiteouts`: paths of the layers below this one that it hides (a `.wh.NAME` member
    each, right after its parent, which must be one of `paths`): how an image on a shared
    base keeps out what the base has and its own original image did not (fleet.py).
    `expect_diff_id`: the digest the layer must come to (a fleet's shared base, the same
    in every output); anything else is refused when it has been hashed.
    """

    def __init__(self, flat: FlatImage, paths: list[str], whiteouts: Iterable[str] = (),
                 expect_diff_id: str | None = None) -> None:
        self.flat = flat
        self.expect_diff_id = expect_diff_id
        # (header, path whose bytes follow or "", how many)
        self.members: list[tuple[bytes, str, int]] = []
        written_inode: dict[str, str] = {}  # first path of a link group -> written name
        size = 2 * tarfile.BLOCKSIZE
        hidden = sorted(_whiteout_name(p) for p in whiteouts)
        pending = iter(hidden)
        nxt = next(pending, None)
        for path in paths:
            while nxt is not None and nxt < path:
                header = _whiteout_header(nxt)
                self.members.append((header, "", 0))
                size += len(header)
                nxt = next(pending, None)
            header, content, n = _member(flat, path, written_inode)
            self.members.append((header, content, n))
            size += len(header) + n + (-n) % tarfile.BLOCKSIZE
        while nxt is not None:
            header = _whiteout_header(nxt)
            self.members.append((header, "", 0))
            size += len(header)
            nxt = next(pending, None)
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        """The layer's bytes: headers, then each file's bytes read from the source's layer
        data in bounded chunks."""
        for header, path, n in self.members:
            yield header
            if n:
                yield from _content(self.flat, path, n)
                if n % tarfile.BLOCKSIZE:
                    yield bytes(-n % tarfile.BLOCKSIZE)
        yield bytes(2 * tarfile.BLOCKSIZE)

    def write(self, out: BinaryIO) -> LayerStats:
        """Write the layer to `out`, hashing it on the way.

        A full disk is `errors.no_space` naming the output's directory and about how much
        the whole layer needs (exit 4), never an internal error."""
        w = HashingWriter(out)
        try:
            for chunk in self.chunks():
                w.write(chunk)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            name = getattr(out, "name", None)
            where = os.path.dirname(os.path.abspath(name)) if isinstance(name, str) \
                else "the output"
            raise no_space(where, self.size) from None
        return self.stats(w)

    def stats(self, w: HashingWriter) -> LayerStats:
        """The layer's numbers once `w` has seen all of it (a different size is a bug)."""
        if w.count != self.size:
            raise RuntimeError(f"wrote a {w.count}-byte layer planned as {self.size} bytes")
        if self.expect_diff_id is not None and w.digest() != self.expect_diff_id:
            raise RuntimeError(f"the shared base layer came out as {w.digest()}, not "
                               f"{self.expect_diff_id}: writing it is not reproducible")
        return LayerStats(w.digest(), w.count, len(self.members))

    def digest(self) -> LayerStats:
        """The layer's numbers without writing it anywhere (its bytes are read and hashed)."""
        w = HashingWriter(_Discard())
        for chunk in self.chunks():
            w.write(chunk)
        return self.stats(w)


class _Discard:
    def write(self, data: bytes | memoryview) -> None:
        pass


WHITEOUT_PREFIX = ".wh."


def _whiteout_name(path: str) -> str:
    """The whiteout member hiding `path`, spelled as an index path (for sorting)."""
    parent, _, name = path.rpartition("/")
    return f"{parent}/{WHITEOUT_PREFIX}{name}"


def _whiteout_header(member: str) -> bytes:
    """A whiteout as Docker's own diff writes one: an empty regular file, mode 0, root's,
    here with mtime 0 (nothing of the host or the clock in it)."""
    e = Entry(member, "file", 0, 0, 0, 0.0, 0, "", {}, 0)
    return encode_header(member[1:], e, tarfile.REGTYPE, 0, "")


def write_layer(flat: FlatImage, paths: list[str], out: BinaryIO) -> LayerStats:
    """Write `paths` (from `closed_paths`) as a tar to `out`; return diff_id and size."""
    return LayerPlan(flat, paths).write(out)


def _member(flat: FlatImage, path: str, written_inode: dict[str, str]
            ) -> tuple[bytes, str, int]:
    """One member's header, and which index path's bytes (how many) follow it."""
    e = flat.entries[path]
    name = path[1:]
    group = flat.hardlink_group(path)
    if len(group) > 1:
        first = written_inode.get(group[0])
        if first is not None:
            return encode_header(name, e, tarfile.LNKTYPE, 0, first), "", 0
        written_inode[group[0]] = name
    src = flat.entries[e.linkname] if e.kind == "hardlink" else e
    kind = src.kind
    if kind == "file":
        return encode_header(name, e, tarfile.REGTYPE, src.size, ""), src.path, src.size
    if kind == "dir":
        return encode_header(name + "/", e, tarfile.DIRTYPE, 0, ""), "", 0
    if kind == "symlink":
        return encode_header(name, e, tarfile.SYMTYPE, 0, src.linkname), "", 0
    return encode_header(name, e, _TYPES[kind], 0, "", src.devmajor, src.devminor), "", 0


def _content(flat: FlatImage, path: str, size: int) -> Iterator[bytes]:
    try:
        f = flat.open_content(path)
    except OSError as exc:
        raise ImageFormatError(f"content of {path} cannot be read: {exc}") from exc
    with f:
        left = size
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    if left:
        raise ImageFormatError(f"content of {path} ends {left} bytes short of its {size} "
                               "bytes: the layer data it is read from changed or vanished")
