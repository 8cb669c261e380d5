"""Apply an image's layers in order into one filesystem, following the OCI image-spec
changeset rules (and Docker's applier where the spec is silent).

Each layer is applied like `docker load` would: a later entry replaces an earlier one unless
both are directories; `.wh.NAME` hides NAME of lower layers, `.wh..wh..opq` hides every
lower-layer child of its directory; hardlinks share an inode, so replacing or whiting out a
link's target leaves the other names with the content. Parent components that are image
symlinks are followed inside the image index, never on the host. Where Docker's overlay2
applier depends on tar order (a whiteout listed after a same-layer file of that name hides
it there), the spec's rule wins: whiteouts only ever hide lower layers.

Flattening only indexes: for every regular file it records where its bytes lie instead of
writing the file out (creating thousands of small files was most of the cost of reading an
image). An uncompressed layer already on disk (a docker-archive's `layer.tar`, an OCI blob)
is pointed into in place; a compressed one is decompressed once, sequentially, into a spool
file in the flatten directory. Digests are still verified as every layer is read.

`extract=True` also builds a host tree (for tools and tests that need one). That tree is
built only from directories this code made: every parent of a created name is a directory
of the index (so a real directory we created), the final component is created with
O_EXCL/O_NOFOLLOW, symlinks are created but never traversed, device nodes and FIFOs stay
index-only, and setuid/setgid bits and owners live only in the index.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError
from tracer.image.content import ContentRef
from tracer.image.model import Entry, FlatImage
from tracer.image.paths import join, link_target_path, member_path, split
from tracer.image.source import ImageSource
from tracer.image.tarstream import Member, TarReader

_HOST_KINDS = ("file", "dir", "symlink")
_MAX_SYMLINK_HOPS = 40
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Node:
    """An inode: shared by every hardlinked name."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str
    xattrs: dict[str, bytes]
    origin: str
    devmajor: int = 0
    devminor: int = 0
    content: ContentRef | None = None


@dataclass
class _Slot:
    node: _Node
    layer: int


class _Applier:
    def __init__(self, root: Path | None) -> None:
        self.extract = root is not None
        self.root = str(root)
        # where the current layer's tar bytes lie: member data is at base + stream offset
        self.blob = ""
        self.base = 0
        self.index: dict[str, _Slot] = {
            "/": _Slot(_Node("dir", 0o755, 0, 0, 0.0, 0, "", {}, "/"), 0)}
        self.children: dict[str, set[str]] = {"/": set()}
        self.layer = 0
        self.where = ""

    # ---------------------------------------------------------------- index helpers

    def host(self, path: str) -> str:
        return self.root + path

    def _add(self, path: str, node: _Node) -> None:
        self.index[path] = _Slot(node, self.layer)
        self.children[split(path)[0]].add(path)
        if node.kind == "dir":
            self.children[path] = set()

    def _forget(self, path: str) -> None:
        """Drop `path` and its subtree from the index (the host is handled by the caller)."""
        slot = self.index.pop(path)
        if slot.node.kind == "dir":
            for child in self.children.pop(path):
                self._forget(child)

    def remove(self, path: str) -> None:
        """Remove `path` (and its subtree) from the index and the host."""
        slot = self.index[path]
        self.children[split(path)[0]].discard(path)
        self._forget(path)
        kind = slot.node.kind
        if not self.extract:
            return
        if kind == "dir":
            shutil.rmtree(self.host(path))
        elif kind in _HOST_KINDS:
            os.unlink(self.host(path))

    def remove_lower(self, path: str) -> None:
        """Hide what lower layers put at `path`: entries from this layer stay (spec)."""
        slot = self.index.get(path)
        if slot is None:
            return
        if slot.layer < self.layer:
            self.remove(path)
        elif slot.node.kind == "dir":
            for child in list(self.children[path]):
                self.remove_lower(child)

    def resolve_dir(self, path: str, create: bool, member: str) -> str | None:
        """Real in-image path of directory `path`, following image symlinks in the index.

        Missing directories are created (as Docker's MkdirAll does) when `create`; otherwise
        None is returned for a missing or non-directory path.
        """
        slot = self.index.get(path)
        if slot is not None and slot.node.kind == "dir":
            return path  # index keys are real paths: the fast, common case
        cur = "/"
        parts = [p for p in path.split("/") if p]
        parts.reverse()
        hops = 0
        while parts:
            name = parts.pop()
            if name == ".":
                continue
            if name == "..":
                cur = split(cur)[0]
                continue
            nxt = join(cur, name)
            s = self.index.get(nxt)
            if s is None:
                if not create:
                    return None
                self._add(nxt, _Node("dir", 0o755, 0, 0, 0.0, 0, "", {}, nxt))
                if self.extract:
                    os.mkdir(self.host(nxt), 0o700)
                cur = nxt
            elif s.node.kind == "dir":
                cur = nxt
            elif s.node.kind == "symlink":
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise ImageFormatError(f"{self.where}: member {member!r}: too many levels "
                                           f"of symbolic links resolving {path}")
                target = s.node.linkname
                if target.startswith("/"):
                    cur = "/"
                parts.extend(reversed([p for p in target.split("/") if p]))
            else:
                if not create:
                    return None
                raise ImageFormatError(f"{self.where}: member {member!r}: parent {nxt} is a "
                                       f"{s.node.kind}, not a directory")
        return cur

    # ---------------------------------------------------------------- applying members

    def apply(self, m: Member, reader: TarReader) -> None:
        path = member_path(m.name, self.where)
        if path == "/":
            if m.kind != "dir":
                raise ImageFormatError(f"{self.where}: member {m.name!r}: the root is not "
                                       "a directory")
            self._set_meta(self.index["/"].node, m)
            return
        parent, base = split(path)
        if path.startswith("/.wh..wh."):
            return  # AUFS metadata (.wh..wh.plnk etc.): skipped, as Docker does
        if base.startswith(".wh."):
            self._whiteout(parent, base, m)
            return
        real_parent = self.resolve_dir(parent, True, m.name)
        assert real_parent is not None
        real = join(real_parent, base)
        existing = self.index.get(real)
        if existing is not None:
            if m.kind == "dir" and existing.node.kind == "dir":
                self._set_meta(existing.node, m)
                existing.layer = self.layer
                return
            self.remove(real)
        if m.kind == "hardlink":
            self._hardlink(real, m)
            return
        node = _Node(m.kind, m.mode, m.uid, m.gid, m.mtime, m.size,
                     m.linkname if m.kind == "symlink" else "", dict(m.xattrs), real,
                     m.devmajor, m.devminor)
        if m.kind == "file":
            node.content = ContentRef(self.blob, self.base + reader.data_offset, m.size)
            self._add(real, node)
            if self.extract:
                self._write_file(real, m, reader)
        elif m.kind == "dir":
            if self.extract:
                os.mkdir(self.host(real), 0o700)
            self._add(real, node)
        elif m.kind == "symlink":
            if not m.linkname or "\0" in m.linkname:
                raise ImageFormatError(f"{self.where}: member {m.name!r}: empty symlink target")
            if self.extract:
                os.symlink(m.linkname, self.host(real))
            self._add(real, node)
        else:  # char, block, fifo: recorded, never created on the host
            self._add(real, node)

    def _whiteout(self, parent: str, base: str, m: Member) -> None:
        # Docker creates a whiteout's missing parents like any member's (overlay2 and vfs)
        real_parent = self.resolve_dir(parent, True, m.name)
        if base == ".wh..wh..opq":
            if real_parent is not None:
                for child in list(self.children[real_parent]):
                    self.remove_lower(child)
            return
        if base.startswith(".wh..wh."):
            return  # other AUFS metadata
        hidden = base[len(".wh."):]
        if hidden in ("", ".", ".."):
            # a bare ".wh." once wiped a whole directory in another flattener
            raise ImageFormatError(f"{self.where}: member {m.name!r}: whiteout names no file")
        if real_parent is not None:
            self.remove_lower(join(real_parent, hidden))

    def _hardlink(self, real: str, m: Member) -> None:
        target = link_target_path(m.linkname, m.name, self.where)
        tparent, tbase = split(target)
        real_tparent = self.resolve_dir(tparent, False, m.name)
        treal = join(real_tparent, tbase) if real_tparent is not None else None
        slot = self.index.get(treal) if treal else None
        if slot is None:
            raise ImageFormatError(f"{self.where}: member {m.name!r}: hardlink target "
                                   f"{m.linkname!r} does not exist")
        node = slot.node
        if node.kind == "dir":
            raise ImageFormatError(f"{self.where}: member {m.name!r}: hardlink to directory "
                                   f"{m.linkname!r}")
        assert treal is not None
        if self.extract and node.kind in _HOST_KINDS:
            os.link(self.host(treal), self.host(real), follow_symlinks=False)
        self._add(real, node)
        # Docker applies a link header's owner and xattrs to the shared inode, and its mode
        # and mtime too unless the inode is a symlink.
        node.uid, node.gid = m.uid, m.gid
        node.xattrs.update(m.xattrs)
        if node.kind != "symlink":
            node.mode, node.mtime = m.mode, m.mtime
            if self.extract and node.kind == "file":
                os.chmod(self.host(real), (m.mode & 0o777) | 0o600)

    def _set_meta(self, node: _Node, m: Member) -> None:
        node.mode, node.uid, node.gid, node.mtime = m.mode, m.uid, m.gid, m.mtime
        node.xattrs = dict(m.xattrs)

    def _write_file(self, real: str, m: Member, reader: TarReader) -> None:
        fd = os.open(self.host(real), _O_CREATE, 0o600)
        try:
            reader.copy_data(fd)
            # Host copy: permission bits only, always owner-readable; setuid/setgid and
            # owners stay in the index so nothing privileged lands on the host.
            os.fchmod(fd, (m.mode & 0o777) | 0o600)
            t = int(m.mtime * 1e9)
            os.utime(fd, ns=(t, t))
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- result

    def finish_host(self) -> None:
        """Directory permissions and times last: adding children changes dir mtimes."""
        for path in sorted((p for p, s in self.index.items() if s.node.kind == "dir"),
                           reverse=True):
            node = self.index[path].node
            h = self.host(path) if path != "/" else self.root
            os.chmod(h, (node.mode & 0o777) | 0o700)
            t = int(node.mtime * 1e9)
            os.utime(h, ns=(t, t))

    def entries(self) -> tuple[dict[str, Entry], dict[str, tuple[str, ...]],
                               dict[str, ContentRef]]:
        by_node: dict[int, list[str]] = {}
        for path, slot in self.index.items():
            if slot.node.kind != "dir":
                by_node.setdefault(id(slot.node), []).append(path)
        groups: dict[str, tuple[str, ...]] = {}
        canonical: dict[int, str] = {}
        for key, paths in by_node.items():
            if len(paths) > 1:
                paths.sort()
                node = self.index[paths[0]].node
                canonical[key] = node.origin if node.origin in paths else paths[0]
                for p in paths:
                    groups[p] = tuple(paths)
        out: dict[str, Entry] = {}
        content: dict[str, ContentRef] = {}
        for path in sorted(self.index):
            slot = self.index[path]
            n = slot.node
            canon = canonical.get(id(n), path)
            linked = canon != path
            if n.content is not None and not linked:
                content[path] = n.content
            out[path] = Entry(
                path=path,
                kind="hardlink" if linked else n.kind,
                mode=n.mode, uid=n.uid, gid=n.gid, mtime=n.mtime,
                size=n.size if n.kind == "file" and not linked else 0,
                linkname=canon if linked else n.linkname,
                xattrs=dict(n.xattrs), layer=slot.layer,
                devmajor=n.devmajor, devminor=n.devminor)
        return out, groups, content


def _host_error(exc: OSError, where: str, member: str) -> Exception:
    """A host-side failure while extracting: full disk or no permission is the machine's
    problem (exit 4), anything else (a name too long to create...) is the image's."""
    msg = f"{where}: member {member!r}: cannot extract: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentProblem(msg)
    return ImageFormatError(msg)


class _Spool:
    """Pass-through reader that also writes what it hands out to a spool file, so the member
    offsets the tar reader reports are offsets into that file."""

    def __init__(self, inner: BinaryIO, out: BinaryIO, where: str) -> None:
        self._inner = inner
        self._out = out
        self._where = where

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        try:
            self._out.write(data)
        except OSError as exc:
            # not a stream error (the tar reader would call it a corrupt layer): the disk's
            raise EnvironmentProblem(f"{self._where}: cannot spool the decompressed layer: "
                                     f"{exc.strerror or exc}") from exc
        return data


def flatten(source: ImageSource, dest: Path,
            progress: Callable[[str], None] | None = None, *,
            extract: bool = False) -> FlatImage:
    """Index every layer of `source`, in the new directory `dest`, without extracting files.

    `dest` holds what the result reads from: spooled decompressed layers and a hardlink to
    the source's saved archive (the source deletes its own temp files on close); with
    `extract`, also the host tree at `dest/rootfs`. On any error `dest` is removed and the
    error re-raised; `dest` must not exist or be empty (it is never merged into).
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise BadInput(f"flatten destination {dest} exists and is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    dest = dest.resolve()
    tree = dest / "rootfs" if extract else None
    if tree is not None:
        tree.mkdir(0o700)
    applier = _Applier(tree)
    try:
        for layer in source.layers:
            applier.layer = layer.index
            applier.where = layer.where
            if progress:
                progress(f"applying {layer.where}")
            stream = layer.open()
            spool: BinaryIO | None = None
            try:
                if stream.compression == "none" and layer.location is not None:
                    applier.blob, applier.base = layer.location
                    tar_in: BinaryIO = stream  # type: ignore[assignment]
                else:
                    path = dest / f"layer-{layer.index}.tar"
                    spool = open(path, "xb", buffering=1 << 20)  # noqa: SIM115
                    applier.blob, applier.base = str(path), 0
                    tar_in = _Spool(stream, spool, layer.where)  # type: ignore[arg-type]
                reader = TarReader(tar_in, layer.where)
                while (m := reader.next()) is not None:
                    try:
                        applier.apply(m, reader)
                    except OSError as exc:
                        raise _host_error(exc, layer.where, m.name) from exc
                stream.finish()
            finally:
                stream.close()
                if spool is not None:
                    spool.close()
        if tree is not None:
            applier.finish_host()
        entries, groups, content = applier.entries()
        kept = {b: source.keep_file(b, dest) for b in {r.blob for r in content.values()}}
        content = {p: replace(r, blob=kept[r.blob]) for p, r in content.items()}
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return FlatImage(entries=entries, root=tree, config=source.config,
                     source_digest=source.digest, source_ref=source.ref, _groups=groups,
                     _content=content, workdir=dest)
