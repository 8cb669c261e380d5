"""Apply an image's layers in order into one filesystem, following the OCI image-spec
changeset rules, and where the spec is silent what the Docker engine's overlay2 storage
makes of them (what `docker export` of a container of the image shows).

Each layer is applied like `docker load` would: a later entry replaces an earlier one unless
both are directories; `.wh.NAME` hides NAME of lower layers, `.wh..wh..opq` hides every
lower-layer child of its directory; hardlinks share an inode, so replacing or whiting out a
link's target leaves the other names with the content. Where Docker's overlay2 applier
depends on tar order (a whiteout listed after a same-layer file of that name hides it
there), the spec's rule wins: whiteouts only ever hide lower layers.

The engine unpacks each layer into an empty directory of its own and stacks those with
overlayfs, and that decides the cases the spec leaves open:
- a member's parent directories are looked up in its own layer only. One the layer does not
  name is made there as Docker's MkdirAll makes it: 0755, root:root, no xattrs (the engine
  gives it the unpack time; the index gives it mtime 0: no image data holds that time).
  Stacked, that directory's metadata covers a lower layer's directory of the same path,
  and a lower symlink or file there is hidden by it: a lower-layer symlink is never
  followed. A symlink of the same layer is (inside the image, never on the host);
- `/` is never taken from a layer (Docker skips a layer's `./`): it is 0755 root:root with
  mtime 0 and no xattrs, in every reader (it is never written to an output either);
- a symlink's mode is 0777 whatever its header says (Linux has no mode for symlinks);
- of a hardlink group, the smallest path is the file and the others link to it: a rule
  that needs no tar order, so the in-place reader (overlay.py) gives the same index;
- a hardlink header sets the shared inode's owner, mode, mtime and xattrs; setting the
  owner drops the inode's `security.capability` (the kernel's chown rule), so a file's
  capability survives a later link header only if that header carries it as well (the
  writer, layerwrite.py, puts an inode's xattrs on each of its names' headers).

Flattening reads one thing: an `Image` (interface.py), whatever transport opened it, so
every reader gives its index by the same rules under the same budgets. It only indexes:
for every regular file it records where its bytes lie instead of writing the file out
(creating thousands of small files was most of the cost of reading an image). Where that is
comes from the layer stream's placement: an uncompressed layer already on disk (a
docker-archive's `layer.tar`, an OCI blob) is pointed into in place (`InFile`); a layer the
engine holds unpacked (overlay.py) serves its tar's headers only and each file's bytes stay
in its layer directory (`InDirectory`); a compressed one is decompressed once, sequentially,
into a spool file in the flatten directory. Digests are verified as every layer is read.

`extract=True` also builds a host tree (for tools and tests that need one). That tree is
built only from directories this code made: every parent of a created name is a directory
of the index (so a real directory we created), the final component is created with
O_EXCL/O_NOFOLLOW, symlinks are created but never traversed, device nodes and FIFOs stay
index-only, and setuid/setgid bits and owners live only in the index.

Layers are hostile input, so the index is a tree of names keyed by their parent (each name
costs its own component, never its full path), full paths are spelled out once at the end,
and every dimension an attacker controls is bounded by the run's Budgets: bytes per layer
and per image (streams.py), members per layer, paths per image, bytes of one path and of all
paths together, and the components walked resolving names through image symlinks. Work and
memory stay linear in the input; what the budgets refuse is a BudgetExceeded naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tracer.budgets import DEFAULT, BudgetExceeded, Budgets, human
from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError, TracerError, no_space
from tracer.image.content import ContentRef
from tracer.image.interface import Image, InDirectory, InFile, Layer, TarStream
from tracer.image.layercache import Seed
from tracer.image.model import Entry, FlatImage
from tracer.image.paths import link_target_path, member_path
from tracer.image.tarstream import Member, TarReader, utf8_len

_HOST_KINDS = ("file", "dir", "symlink")
_MAX_SYMLINK_HOPS = 40
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
CAPABILITY = "security.capability"


class _Inode:
    """An inode: shared by every hardlinked name."""

    __slots__ = ("kind", "mode", "uid", "gid", "mtime", "size", "linkname", "xattrs",
                 "born", "devmajor", "devminor", "content")

    def __init__(self, kind: str, mode: int, uid: int, gid: int, mtime: float, size: int,
                 linkname: str, xattrs: dict[str, bytes], devmajor: int = 0,
                 devminor: int = 0) -> None:
        self.kind, self.mode, self.uid, self.gid = kind, mode, uid, gid
        self.mtime, self.size, self.linkname, self.xattrs = mtime, size, linkname, xattrs
        self.devmajor, self.devminor = devmajor, devminor
        self.born = 0  # the layer that made it (its bytes are in that layer's data)
        self.content: ContentRef | None = None


class _Dentry:
    """One name: its component, its parent directory and the inode it names.

    `plen` is the length of its full path (kept as a number; the string is only built at
    the end), `layer` the layer that last wrote it, `clean` the layer for which every
    lower-layer name below it is known to be gone (so repeated whiteouts of one directory
    cost nothing), `dead` that it was removed (its inode may live on under other names).
    """

    __slots__ = ("name", "parent", "inode", "layer", "children", "plen", "dead", "clean")

    def __init__(self, name: str, parent: _Dentry | None, inode: _Inode, layer: int,
                 plen: int) -> None:
        self.name, self.parent, self.inode, self.layer, self.plen = (
            name, parent, inode, layer, plen)
        self.children: dict[str, _Dentry] | None = {} if inode.kind == "dir" else None
        self.dead = False
        self.clean = -1


def path_of(d: _Dentry) -> str:
    """The full in-image path of a name (also of a removed one: its chain of parents is
    what it was when it was removed)."""
    parts = []
    while d.parent is not None:
        parts.append(d.name)
        d = d.parent
    parts.reverse()
    return "/" + "/".join(parts)


class _Applier:
    def __init__(self, root: Path | None, budgets: Budgets) -> None:
        self.extract = root is not None
        self.root = str(root)
        # where the current layer's tar bytes lie: member data is at base + stream offset
        self.blob = ""
        self.base = 0
        # or, read in place (overlay.py), the layer's own directory: a file's bytes are the
        # file of the same path there
        self.layer_dir: str | None = None
        self.budgets = budgets
        top = _Inode("dir", 0o755, 0, 0, 0.0, 0, "", {})
        # Directories created because a member needs them as parents all look alike: they
        # share this inode until a member names one (copy on write, in `apply`), which
        # halves what a deep implied tree costs.
        self.implied = _Inode("dir", 0o755, 0, 0, 0.0, 0, "", {})
        self.top = _Dentry("", None, top, 0, 1)
        # What an in-image directory path (as this layer's members spell it) resolves to: a
        # cache in front of walking the tree, for the current layer only (a directory the
        # layer did not make yet resolves differently: see `_in_layer`), emptied whenever a
        # directory or symlink is removed (only a removal can change what an already
        # resolved path means).
        self.lookup: dict[str, _Dentry] = {"/": self.top}
        self.layer = 0
        self.where = ""
        self.count = 0  # live names, "/" excluded
        self.path_bytes = 1  # bytes of all live paths ("/" included)
        self.walked = 0  # path components walked by the slow path of resolve_dir

    def start_layer(self, index: int, where: str) -> None:
        self.layer = index
        self.where = where
        self.lookup.clear()
        self.lookup["/"] = self.top

    # ---------------------------------------------------------------- index helpers

    def host(self, path: str) -> str:
        return self.root + path

    def _add(self, parent: _Dentry, name: str, inode: _Inode, member: str) -> _Dentry:
        plen = parent.plen + 1 + (len(name) if name.isascii() else utf8_len(name))
        if parent.parent is None:
            plen -= 1  # "/" + name, not "//" + name
        b = self.budgets
        if plen > b.path_length:
            raise BudgetExceeded("path_length", b.path_length,
                                 f"{self.where}: member {member[:80]!r}: its path in the "
                                 f"image ({path_of(parent)[:80]}.../{name[:40]}) is {plen} "
                                 "bytes long")
        self.count += 1
        self.path_bytes += plen
        if self.count > b.entries:
            raise BudgetExceeded("entries", b.entries, f"{self.where}: the image has more "
                                 f"than {b.entries:,} paths")
        if self.path_bytes > b.index_bytes:
            raise BudgetExceeded("index_bytes", b.index_bytes,
                                 f"{self.where}: the image's paths add up to more than "
                                 f"{human(b.index_bytes)} (very deep or very long names?)")
        d = _Dentry(name, parent, inode, self.layer, plen)
        parent.children[name] = d  # type: ignore[index]
        return d

    def remove(self, d: _Dentry) -> None:
        """Remove the name `d` (and its subtree) from the index and the host."""
        kind = d.inode.kind
        path = path_of(d) if self.extract else ""
        assert d.parent is not None and d.parent.children is not None
        del d.parent.children[d.name]
        if kind in ("dir", "symlink"):
            self.lookup.clear()
            self.lookup["/"] = self.top
        stack = [d]
        while stack:  # a loop, not recursion: an image's tree may be thousands deep
            x = stack.pop()
            x.dead = True
            self.count -= 1
            self.path_bytes -= x.plen
            if x.children:
                stack.extend(x.children.values())
        if not self.extract:
            return
        if kind == "dir":
            shutil.rmtree(self.host(path))
        elif kind in _HOST_KINDS:
            os.unlink(self.host(path))

    def remove_lower(self, d: _Dentry) -> None:
        """Hide what lower layers put at `d`: entries from this layer stay (spec)."""
        if d.layer < self.layer:
            self.remove(d)
        elif d.children is not None:
            self.hide_lower_below(d)

    def hide_lower_below(self, d: _Dentry) -> None:
        """Remove every lower-layer name below directory `d` (an opaque whiteout)."""
        layer = self.layer
        if d.clean == layer:
            return  # done before in this layer; names added since are all this layer's
        d.clean = layer
        assert d.children is not None
        stack = list(d.children.values())
        while stack:
            x = stack.pop()
            if x.layer < layer:
                self.remove(x)
            elif x.children is not None and x.clean != layer:
                x.clean = layer
                stack.extend(x.children.values())

    def resolve_dir(self, path: str, create: bool, member: str) -> _Dentry | None:
        """The directory `path` names, following image symlinks in the index.

        With `create`, `path` is a member's parent and is looked up the way the engine
        unpacks a layer: in this layer only (`_in_layer`), following this layer's symlinks.
        Without, it is a hardlink's target, looked up in the whole image (a link to a lower
        layer's file is refused by Docker, accepted here), and None is returned for a
        missing or non-directory path.
        """
        d = self.lookup.get(path)
        if d is not None:
            return d  # the common case: a directory met before
        cur = self.top
        parts = [p for p in path.split("/") if p]
        parts.reverse()
        hops = 0
        walked = 0
        while parts:
            name = parts.pop()
            walked += 1
            if name == ".":
                continue
            if name == "..":
                cur = cur.parent or cur
                continue
            assert cur.children is not None
            nxt = cur.children.get(name)
            if create:
                nxt = self._in_layer(cur, name, nxt, member)
            elif nxt is None:
                cur = None  # type: ignore[assignment]
                break
            if nxt.children is not None:
                cur = nxt
            elif nxt.inode.kind == "symlink":
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise ImageFormatError(f"{self.where}: member {member!r}: too many levels "
                                           f"of symbolic links resolving {path}")
                target = nxt.inode.linkname
                if target.startswith("/"):
                    cur = self.top
                parts.extend(reversed([p for p in target.split("/") if p]))
            else:
                if not create:
                    cur = None  # type: ignore[assignment]
                    break
                raise ImageFormatError(f"{self.where}: member {member!r}: parent "
                                       f"{path_of(nxt)} is a {nxt.inode.kind}, not a "
                                       "directory")
        self.walked += walked
        if self.walked > self.budgets.path_walk:
            raise BudgetExceeded("path_walk", self.budgets.path_walk,
                                 f"{self.where}: member {member[:80]!r}: resolving names "
                                 "through the image's symlinks walked more than "
                                 f"{self.budgets.path_walk:,} path components")
        if cur is not None and create:
            self.lookup[path] = cur
        return cur

    def _in_layer(self, parent: _Dentry, name: str, d: _Dentry | None,
                  member: str) -> _Dentry:
        """`name` in `parent` as this layer's own directory holds it, making the directory
        Docker's MkdirAll makes when the layer does not have it: over a lower layer's
        directory it shows the new directory's metadata, a lower layer's symlink or file it
        hides."""
        if d is not None and d.layer == self.layer:
            return d
        if d is not None and d.children is not None:
            d.inode = self.implied  # only ever replaced, never changed: see `apply`
            d.layer = self.layer
            return d
        if d is not None:
            self.remove(d)
        d = self._add(parent, name, self.implied, member)
        if self.extract:
            os.mkdir(self.host(path_of(d)), 0o700)
        return d

    def load_seed(self, flat: FlatImage) -> None:
        """Start from the index of the image's lowest layers (layercache.Seed) instead of
        reading them: the tree is rebuilt from its entries, bottom layers as they were
        (each name with the layer that last wrote it, hardlinked names sharing one inode,
        each file's bytes where the seed found them), under the same budgets."""
        by_path: dict[str, _Dentry] = {"/": self.top}
        inodes: dict[str, _Inode] = {}
        content = flat._content
        self.where = "the batch's index of the lowest layers"
        for path in sorted(flat.entries):
            if path == "/":
                continue
            e = flat.entries[path]
            i = path.rfind("/")
            parent = by_path[path[:i] or "/"]
            if e.kind == "hardlink":
                node = inodes[e.linkname]  # the group's smallest name: sorted before
            else:
                node = _Inode(e.kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname,
                              dict(e.xattrs), e.devmajor, e.devminor)
                ref = content.get(path)
                if ref is not None:
                    node.content = ref
                    # read in place, a file's bytes are its name in the layer that made it
                    home = flat.entries.get("/" + ref.blob) if ref.root is not None else None
                    node.born = home.layer if home is not None else e.layer
                inodes[path] = node
            self.layer = e.layer
            d = self._add(parent, path[i + 1:], node, path)
            by_path[path] = d
        self.layer = 0

    # ---------------------------------------------------------------- applying members

    def apply(self, m: Member, reader: TarReader) -> None:
        path = member_path(m.name, self.where)
        if path == "/":
            if m.kind != "dir":
                raise ImageFormatError(f"{self.where}: member {m.name!r}: the root is not "
                                       "a directory")
            return  # Docker skips a layer's root: "/" keeps its fixed metadata
        i = path.rfind("/")
        parent, base = path[:i] or "/", path[i + 1:]
        if path.startswith("/.wh..wh."):
            return  # AUFS metadata (.wh..wh.plnk etc.): skipped, as Docker does
        if base.startswith(".wh."):
            self._whiteout(parent, base, m)
            return
        real_parent = self.resolve_dir(parent, True, m.name)
        assert real_parent is not None and real_parent.children is not None
        existing = real_parent.children.get(base)
        if existing is not None:
            if m.kind == "dir" and existing.children is not None:
                if existing.inode is self.implied:
                    existing.inode = _Inode("dir", 0, 0, 0, 0.0, 0, "", {})
                self._set_meta(existing.inode, m)
                existing.layer = self.layer
                self.lookup[path] = existing
                return
            # What it replaces may be how `parent` was reached (symlink `l` -> `.`, then a
            # directory `l/l` replaces `l`): the member's own path is not cached below.
            self.remove(existing)
        if m.kind == "hardlink":
            self._hardlink(real_parent, base, m)
            return
        symlink = m.kind == "symlink"
        inode = _Inode(m.kind, 0o777 if symlink else m.mode, m.uid, m.gid, m.mtime, m.size,
                       m.linkname if symlink else "", m.xattrs, m.devmajor, m.devminor)
        inode.born = self.layer
        if m.kind == "file":
            # in place, the file's name in its layer is only known at the end (`entries`)
            inode.content = ContentRef(self.blob, self.base + reader.data_offset, m.size,
                                       sparse=m.sparse) \
                if self.layer_dir is None else ContentRef("", 0, m.size, root=self.layer_dir)
            d = self._add(real_parent, base, inode, m.name)
            if self.extract:
                self._write_file(path_of(d), m, reader)
        elif m.kind == "dir":
            d = self._add(real_parent, base, inode, m.name)
            if self.extract:
                os.mkdir(self.host(path_of(d)), 0o700)
            if existing is None:
                self.lookup[path] = d
        elif m.kind == "symlink":
            if not m.linkname or "\0" in m.linkname:
                raise ImageFormatError(f"{self.where}: member {m.name!r}: empty symlink target")
            d = self._add(real_parent, base, inode, m.name)
            if self.extract:
                os.symlink(m.linkname, self.host(path_of(d)))
        else:  # char, block, fifo: recorded, never created on the host
            self._add(real_parent, base, inode, m.name)

    def _whiteout(self, parent: str, base: str, m: Member) -> None:
        # Docker creates a whiteout's missing parents like any member's (overlay2 and vfs)
        real_parent = self.resolve_dir(parent, True, m.name)
        assert real_parent is not None and real_parent.children is not None
        if base == ".wh..wh..opq":
            self.hide_lower_below(real_parent)
            return
        if base.startswith(".wh..wh."):
            return  # other AUFS metadata
        hidden = base[len(".wh."):]
        if hidden in ("", ".", ".."):
            # a bare ".wh." once wiped a whole directory in another flattener
            raise ImageFormatError(f"{self.where}: member {m.name!r}: whiteout names no file")
        d = real_parent.children.get(hidden)
        if d is not None:
            self.remove_lower(d)

    def _hardlink(self, real_parent: _Dentry, base: str, m: Member) -> None:
        target = link_target_path(m.linkname, m.name, self.where)
        i = target.rfind("/")
        tparent, tbase = target[:i] or "/", target[i + 1:]
        real_tparent = self.resolve_dir(tparent, False, m.name)
        t = real_tparent.children.get(tbase) if real_tparent is not None else None  # type: ignore[union-attr]
        if t is None:
            raise ImageFormatError(f"{self.where}: member {m.name!r}: hardlink target "
                                   f"{m.linkname!r} does not exist")
        node = t.inode
        if node.kind == "dir":
            raise ImageFormatError(f"{self.where}: member {m.name!r}: hardlink to directory "
                                   f"{m.linkname!r}")
        d = self._add(real_parent, base, node, m.name)
        if self.extract and node.kind in _HOST_KINDS:
            os.link(self.host(path_of(t)), self.host(path_of(d)), follow_symlinks=False)
        # Docker applies a link header's owner and xattrs to the shared inode, and its mode
        # and mtime too unless the inode is a symlink. Its owner by lchown, which makes the
        # kernel drop the inode's file capability (chown(2) does on anything but a
        # directory, even to the same owner), before the header's own xattrs are set: a
        # capability survives a link header only if the header carries it too. Other
        # xattrs stay. (Every engine's applier does the same: containerd's, Podman's.)
        node.uid, node.gid = m.uid, m.gid
        node.xattrs.pop(CAPABILITY, None)
        node.xattrs.update(m.xattrs)
        if node.kind != "symlink":
            node.mode, node.mtime = m.mode, m.mtime
            if self.extract and node.kind == "file":
                os.chmod(self.host(path_of(d)), (m.mode & 0o777) | 0o600)

    def _set_meta(self, node: _Inode, m: Member) -> None:
        node.mode, node.uid, node.gid, node.mtime = m.mode, m.uid, m.gid, m.mtime
        node.xattrs = m.xattrs  # each Member has its own dict: nothing else holds it

    def _write_file(self, real: str, m: Member, reader: TarReader) -> None:
        fd = os.open(self.host(real), _O_CREATE, 0o600)
        try:
            reader.copy_data(fd)
            # Host copy: permission bits only, always owner-readable; setuid/setgid and
            # owners stay in the index so nothing privileged lands on the host.
            os.fchmod(fd, (m.mode & 0o777) | 0o600)
            t = int(m.mtime * 1e9)
            os.utime(fd, ns=(t, t))
        except BaseException:
            _close_quietly(fd)
            raise
        os.close(fd)

    # ---------------------------------------------------------------- result

    def paths(self) -> list[tuple[str, _Dentry]]:
        """Every live name with its full path, sorted by path: the only place full paths
        are spelled out (their total size is what the index_bytes budget bounds)."""
        out: list[tuple[str, _Dentry]] = [("/", self.top)]
        stack: list[tuple[str, _Dentry]] = [("", self.top)]
        while stack:
            prefix, d = stack.pop()
            assert d.children is not None
            for name, child in d.children.items():
                p = f"{prefix}/{name}"
                out.append((p, child))
                if child.children:
                    stack.append((p, child))
        out.sort(key=lambda item: item[0])
        return out

    def finish_host(self, paths: list[tuple[str, _Dentry]]) -> None:
        """Directory permissions and times last: adding children changes dir mtimes."""
        for path, d in reversed(paths):
            if d.children is None:
                continue
            node = d.inode
            h = self.host(path) if path != "/" else self.root
            os.chmod(h, (node.mode & 0o777) | 0o700)
            t = int(node.mtime * 1e9)
            os.utime(h, ns=(t, t))

    def entries(self, paths: list[tuple[str, _Dentry]]
                ) -> tuple[dict[str, Entry], dict[str, tuple[str, ...]], dict[str, ContentRef]]:
        """The index in FlatImage's terms, from `paths` (sorted). Of a hardlink group, the
        smallest path is the file, the others link to it."""
        by_node: dict[int, list[str]] = {}
        linked_nodes: dict[int, _Inode] = {}
        # read in place: where each file's bytes are, its first name in the layer that
        # made it (a later name, from a link to a lower layer, is not in that layer)
        home: dict[int, str] = {}
        for path, d in paths:
            if d.children is None:
                n = d.inode
                names = by_node.setdefault(id(n), [])
                names.append(path)
                if len(names) == 2:
                    linked_nodes[id(n)] = n
                if n.content is not None and n.content.root is not None \
                        and d.layer == n.born and id(n) not in home:
                    home[id(n)] = path
        groups: dict[str, tuple[str, ...]] = {}
        canonical: dict[int, str] = {}
        for key in linked_nodes:
            names = by_node[key]  # sorted already: `paths` is
            canonical[key] = names[0]
            group = tuple(names)
            for p in names:
                groups[p] = group
        out: dict[str, Entry] = {}
        content: dict[str, ContentRef] = {}
        for path, d in paths:
            n = d.inode
            canon = canonical.get(id(n), path)
            linked = canon != path
            if n.content is not None and not linked:
                ref = n.content
                if ref.root is not None:
                    if id(n) not in home:
                        raise ImageFormatError(f"{path}: its data is in no name of the layer "
                                               f"that made it ({ref.root})")
                    ref = ContentRef(home[id(n)][1:], 0, ref.size, None, ref.root)
                content[path] = ref
            out[path] = Entry(
                path=path,
                kind="hardlink" if linked else n.kind,
                mode=n.mode, uid=n.uid, gid=n.gid, mtime=n.mtime,
                size=n.size if n.kind == "file" and not linked else 0,
                linkname=canon if linked else n.linkname,
                xattrs=dict(n.xattrs), layer=d.layer,
                devmajor=n.devmajor, devminor=n.devminor)
        return out, groups, content


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Without the cycle collector while the index is built: it only allocates (tens of
    thousands of objects that all live on), and the collector's passes over them cost a
    tenth of indexing. Reference counting still frees everything dropped on the way."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _close_quietly(fd: int) -> None:
    """Close while another error is on its way out: that error is the one to report."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _host_error(exc: OSError, where: str, member: str, directory: str,
                needed: int) -> Exception:
    """A host-side failure while extracting: full disk or no permission is the machine's
    problem (exit 4), anything else (a name too long to create...) is the image's."""
    if exc.errno in DISK_FULL:
        return no_space(directory, needed)
    msg = f"{where}: member {member!r}: cannot extract: {exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentProblem(msg)
    return ImageFormatError(msg)


class _Spool:
    """Pass-through reader that also writes what it hands out to a spool file, so the member
    offsets the tar reader reports are offsets into that file.

    A write that fails is the disk's problem, never the stream's (the tar reader would
    otherwise call it a corrupt layer): a full disk is `no_space` (exit 4), with the
    layer's estimated size as what was needed.
    """

    def __init__(self, stream: TarStream, path: Path, where: str) -> None:
        self._stream = stream
        self._path = path
        self._where = where
        try:
            self._out = open(path, "xb", buffering=1 << 20)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise self._failed(exc) from None

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        try:
            self._out.write(data)
        except OSError as exc:
            raise self._failed(exc) from None
        return data

    def close(self) -> None:
        """Flush and close; a full disk at the last flush is reported like any other."""
        try:
            self._out.close()
        except OSError as exc:
            raise self._failed(exc) from None

    def discard(self) -> None:
        """Close while another error is on its way out (its flush may fail the same way)."""
        with contextlib.suppress(OSError):
            self._out.close()

    def _failed(self, exc: OSError) -> TracerError:
        if exc.errno in DISK_FULL:
            return no_space(self._path.parent, self._stream.estimated_size())
        return EnvironmentProblem(f"{self._where}: cannot spool the decompressed layer to "
                                  f"{self._path}: {exc.strerror or exc}")


def _apply_members(applier: _Applier, reader: TarReader, where: str, budgets: Budgets) -> None:
    members = 0
    while (m := reader.next()) is not None:
        members += 1
        if members > budgets.entries:
            raise BudgetExceeded("entries", budgets.entries, f"{where}: the layer has more "
                                 f"than {budgets.entries:,} members")
        try:
            applier.apply(m, reader)
        except OSError as exc:
            raise _host_error(exc, where, m.name, applier.root, m.size) from exc


def _apply_layer(applier: _Applier, layer: Layer, dest: Path, budgets: Budgets,
                 image_used: int) -> int:
    """Apply one layer; return how many bytes its tar came to."""
    stream = layer.open(budgets, image_used)
    spool: _Spool | None = None
    try:
        placement = stream.placement
        applier.layer_dir = None
        tar_in: TarStream | _Spool = stream
        if isinstance(placement, InFile):
            applier.blob, applier.base = placement.path, placement.base
        elif isinstance(placement, InDirectory):
            if applier.extract:
                raise BadInput(f"{layer.where}: extracting a host tree needs the layer as a "
                               "tar stream, not the engine's layer directory")
            applier.layer_dir = placement.root
        else:
            path = dest / f"layer-{layer.index}.tar"
            spool = _Spool(stream, path, layer.where)
            applier.blob, applier.base = str(path), 0
            tar_in = spool
        reader = TarReader(tar_in, layer.where, budgets.path_length,  # type: ignore[arg-type]
                           on_holes=stream.add_holes)
        _apply_members(applier, reader, layer.where, budgets)
        stream.finish()
        if spool is not None:
            spool.close()
            spool = None
    except BaseException:
        if spool is not None:
            spool.discard()
        with contextlib.suppress(Exception):  # the error on its way out is the one to report
            stream.close()
        raise
    stream.close()
    return stream.expanded


def _apply_image(applier: _Applier, image: Image, dest: Path, tree: Path | None,
                 budgets: Budgets, progress: Callable[[str], None] | None,
                 seed: Seed | None
                 ) -> tuple[dict[str, Entry], dict[str, tuple[str, ...]], dict[str, ContentRef],
                            int]:
    used = 0
    layers = image.layers
    if seed is not None:
        applier.load_seed(seed.flat)
        used = seed.expanded
        budgets.check("image_bytes", used, f"{image.ref}: its lowest {len(seed.diff_ids)} "
                      "layers")
        if progress:
            progress(f"its lowest {len(seed.diff_ids)} layer(s) indexed once for the batch "
                     f"({seed.chain_id[:19]})")
        layers = layers[len(seed.diff_ids):]
    for layer in layers:
        applier.start_layer(layer.index, layer.where)
        if progress:
            progress(f"applying {layer.where}")
        used += _apply_layer(applier, layer, dest, budgets, used)
    paths = applier.paths()
    if tree is not None:
        applier.finish_host(paths)
    return (*applier.entries(paths), used)


def flatten(image: Image, dest: Path,
            progress: Callable[[str], None] | None = None, *,
            extract: bool = False, budgets: Budgets = DEFAULT,
            seed: Seed | None = None) -> FlatImage:
    """Index every layer of `image`, in the new directory `dest`, without extracting files.

    `dest` holds what the result reads from: spooled decompressed layers and a hardlink to
    the image's saved archive (the image deletes its own temp files on close); with
    `extract`, also the host tree at `dest/rootfs`. On any error `dest` is removed and the
    error re-raised; `dest` must not exist or be empty (it is never merged into). Whatever
    the image would cost beyond `budgets` is refused with BudgetExceeded (exit 2); a full
    disk is `errors.no_space` (exit 4).

    `seed` (layercache.py): the index of the image's lowest layers, made once for a batch;
    used only when those layers are exactly the image's (same diff_ids, bottom first) and
    no host tree is asked for, and then only the layers above it are read. What the seed's
    index reads from lies where the seed was made, not in `dest`.
    """
    if seed is not None and (extract or not seed.matches(image.layers)):
        seed = None
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise BadInput(f"flatten destination {dest} exists and is not an empty directory")
    budgets.check("layers", len(image.layers), f"{image.ref}: {len(image.layers):,} layers")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, 0o700)
        dest = dest.resolve()
        tree = dest / "rootfs" if extract else None
        if tree is not None:
            tree.mkdir(0o700)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise no_space(dest.parent) from None
        raise
    applier = _Applier(tree, budgets)
    try:
        with _no_gc():
            entries, groups, content, used = _apply_image(applier, image, dest, tree,
                                                          budgets, progress, seed)
        seeded = {r.blob: (r.blob, r.identity) for r in seed.flat._content.values()
                  if r.root is None and r.identity is not None} if seed is not None else {}
        try:
            kept = {b: seeded[b] if b in seeded else image.keep_file(b, dest)
                    for b in {r.blob for r in content.values() if r.root is None}}
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise no_space(dest) from None
            raise
        content = {p: r if r.root is not None else  # sparse maps and all kept
                   dataclasses.replace(r, blob=kept[r.blob][0], identity=kept[r.blob][1])
                   for p, r in content.items()}
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return FlatImage(entries=entries, root=tree, config=image.config,
                     source_digest=image.digest, source_ref=image.ref, _groups=groups,
                     _content=content, workdir=dest, expanded=used)
