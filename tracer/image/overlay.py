"""Index an engine image in place, from its overlay2 layer directories.

`docker save` streams the whole image (5-11 s for a few hundred MB) only for tracer to
index it; the engine already holds every layer unpacked, one directory per layer. As root
next to a local engine with the overlay2 driver, this module walks those directories
(`GraphDriver.Data` of `docker image inspect`: LowerDir top-first, then UpperDir) and
builds the same FlatImage the archive reader builds, reading no file content: a kept or
inspected file's bytes are read later straight from its layer directory.

The layers are merged the way the kernel's overlayfs merges them, bottom first: an entry
replaces what lower layers had at its path, unless both are directories; a character
device 0/0 is a whiteout (the path is gone); a directory with the xattr
`trusted.overlay.opaque=y` hides every lower-layer child. Names sharing an inode within a
layer are one hardlink group, as the layer's tar made them. Metadata comes from lstat and
the xattrs (overlayfs's own `trusted.overlay.*` are not part of the image).

The storage is the engine's, but checked before it is trusted: the image's config is read
from the engine's image database and must hash to the image id, and every layer directory
must be the one the layer database names for that layer's chain id. Anything else, and
any engine this cannot see (another driver, the containerd image store, a remote engine,
user namespace remapping, not root), is a reason to fall back to `docker save`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tracer.budgets import Budgets
from tracer.errors import ImageFormatError
from tracer.image import documents as doc
from tracer.image.content import ContentRef
from tracer.image.model import Entry, FlatImage
from tracer.image.reference import ImageRef

OPAQUE = "trusted.overlay.opaque"
_OWN_XATTRS = ("trusted.overlay.",)  # overlayfs bookkeeping, never part of the image


class NotReadable(Exception):
    """This engine's storage cannot be read in place; the message says why."""


@dataclass(frozen=True)
class OverlayImage:
    """An engine image's layer directories (bottom first) and its verified config."""

    image_id: str
    config: dict
    config_bytes: bytes
    layer_dirs: list[Path]


def locate(image_id: str, driver: str, driver_data: dict[str, str], root_dir: str,
           budgets: Budgets) -> OverlayImage:
    """The layer directories of `image_id`, checked against the engine's own databases;
    NotReadable when they cannot be used."""
    if driver != "overlay2":
        raise NotReadable(f"the image is stored by the {driver or 'unknown'!r} driver; "
                          "in-place reading knows overlay2 only")
    if os.geteuid() != 0:
        raise NotReadable("not root: the engine's storage is readable by root only")
    upper = driver_data.get("UpperDir")
    if not upper:
        raise NotReadable("the engine names no layer directory for this image")
    lower = driver_data.get("LowerDir")
    dirs = [Path(p) for p in reversed(lower.split(":"))] if lower else []
    dirs.append(Path(upper))
    root = Path(root_dir)
    cfg_path = root / "image" / "overlay2" / "imagedb" / "content" / "sha256" / image_id[7:]
    try:
        with open(cfg_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            doc.check_size(size, f"image config {image_id}", budgets)
            config_bytes = f.read()
    except OSError as exc:
        raise NotReadable(f"the engine's image database is not visible here ({exc.strerror}"
                          f": {cfg_path}); is the engine remote or in another mount "
                          "namespace?") from None
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != image_id:
        raise NotReadable(f"{cfg_path} does not hash to {image_id}: not this engine's storage")
    where = f"image config {image_id}"
    config = doc.parse(config_bytes, where)
    diff_ids = doc.image_config(config, where, len(dirs), budgets)
    chain = ""
    for i, diff_id in enumerate(diff_ids):
        chain = diff_id if i == 0 else \
            "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        cache = root / "image" / "overlay2" / "layerdb" / "sha256" / chain[7:] / "cache-id"
        try:
            cache_id = cache.read_text().strip()
        except OSError as exc:
            raise NotReadable(f"layer {i}: {cache}: {exc.strerror}") from None
        want = root / "overlay2" / cache_id / "diff"
        if want != dirs[i] or not want.is_dir():
            raise NotReadable(f"layer {i}: the layer database names {want}, the image "
                              f"inspect {dirs[i]}")
    assert isinstance(config, dict)
    return OverlayImage(image_id, config, config_bytes, dirs)


@dataclass
class _Inode:
    """An inode of the merged tree: shared by every name of a hardlink group."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str
    xattrs: dict[str, bytes]
    devmajor: int = 0
    devminor: int = 0
    content: ContentRef | None = None


@dataclass
class _Merge:
    """The merged tree so far: path -> (inode, layer that put it there)."""

    budgets: Budgets
    index: dict[str, tuple[_Inode, int]] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index["/"] = (_Inode("dir", 0o755, 0, 0, 0.0, 0, "", {}), 0)
        self.children["/"] = set()

    def put(self, path: str, node: _Inode, layer: int) -> None:
        self.index[path] = (node, layer)
        self.children[path.rsplit("/", 1)[0] or "/"].add(path)
        if node.kind == "dir":
            self.children.setdefault(path, set())
        self.budgets.check("entries", len(self.index), "the image's paths")

    def remove(self, path: str) -> None:
        """Drop `path` and everything below it."""
        if path not in self.index:
            return
        self.children[path.rsplit("/", 1)[0] or "/"].discard(path)
        todo = [path]
        while todo:
            p = todo.pop()
            node, _ = self.index.pop(p)
            if node.kind == "dir":
                todo.extend(self.children.pop(p, ()))

    def apply(self, layer: int, diff: Path) -> None:
        """Merge one layer directory over the tree (parents before children)."""
        links: dict[tuple[int, int], _Inode] = {}
        self._meta_dir("/", diff, layer)
        todo: list[tuple[str, str]] = [("/", os.fsdecode(diff))]
        while todo:
            parent, host = todo.pop()
            with os.scandir(host) as it:
                names = sorted(it, key=lambda d: os.fsencode(d.name))
            below = []
            for d in names:
                path = (parent if parent != "/" else "") + "/" + d.name
                self.budgets.check("path_length", len(os.fsencode(path)), f"{path[:200]}...")
                st = d.stat(follow_symlinks=False)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    self.remove(path)  # a whiteout
                    continue
                if stat.S_ISDIR(st.st_mode):
                    xattrs = _xattrs(d.path)
                    opaque = xattrs.get(OPAQUE) == b"y"
                    existing = self.index.get(path)
                    if existing is not None and (existing[0].kind != "dir" or opaque):
                        if existing[0].kind != "dir":
                            self.remove(path)
                        else:
                            for child in list(self.children[path]):
                                self.remove(child)
                    self._set_dir(path, st, _image_xattrs(xattrs), layer)
                    below.append((path, d.path))
                    continue
                self.remove(path)
                if stat.S_ISSOCK(st.st_mode):
                    continue  # a layer tar cannot hold a socket; the engine never made one
                key = (st.st_dev, st.st_ino)
                shared = links.get(key) if st.st_nlink > 1 else None
                if shared is not None:
                    self.put(path, shared, layer)
                    continue
                node = _inode(d.path, st)
                if st.st_nlink > 1:
                    links[key] = node
                self.put(path, node, layer)
            todo.extend(reversed(below))

    def _meta_dir(self, path: str, host: Path, layer: int) -> None:
        """The root: each layer's own root directory carries the tar's `./` metadata;
        its layer stays 0, as the archive reader records it."""
        st = os.lstat(host)
        self._set_dir(path, st, _image_xattrs(_xattrs(os.fsdecode(host))), 0)
        del layer

    def _set_dir(self, path: str, st: os.stat_result, xattrs: dict[str, bytes],
                 layer: int) -> None:
        existing = self.index.get(path)
        if existing is not None and existing[0].kind == "dir":
            node = existing[0]
            node.mode, node.uid, node.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            node.mtime, node.xattrs = _seconds(st.st_mtime_ns), xattrs
            self.index[path] = (node, layer)
            return
        self.put(path, _Inode("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                              _seconds(st.st_mtime_ns), 0, "", xattrs), layer)

    def entries(self) -> tuple[dict[str, Entry], dict[str, tuple[str, ...]],
                               dict[str, ContentRef]]:
        """The index in FlatImage's terms. A hardlink group's file is its smallest path and
        the others are hardlinks to it: a layer directory keeps no order of names, so only
        a rule that needs none can be the same for every reader."""
        by_node: dict[int, list[str]] = {}
        for path, (node, _) in self.index.items():
            if node.kind != "dir":
                by_node.setdefault(id(node), []).append(path)
        groups: dict[str, tuple[str, ...]] = {}
        canonical: dict[int, str] = {}
        for key, paths in by_node.items():
            if len(paths) > 1:
                paths.sort()
                canonical[key] = paths[0]
                for p in paths:
                    groups[p] = tuple(paths)
        out: dict[str, Entry] = {}
        content: dict[str, ContentRef] = {}
        for path in sorted(self.index):
            n, layer = self.index[path]
            canon = canonical.get(id(n), path)
            linked = canon != path
            if n.content is not None and not linked:
                content[path] = n.content
            out[path] = Entry(path=path, kind="hardlink" if linked else n.kind, mode=n.mode,
                              uid=n.uid, gid=n.gid, mtime=n.mtime,
                              size=n.size if n.kind == "file" and not linked else 0,
                              linkname=canon if linked else n.linkname, xattrs=dict(n.xattrs),
                              layer=layer, devmajor=n.devmajor, devminor=n.devminor)
        return out, groups, content


def _seconds(ns: int) -> float:
    """ns as float seconds, correctly rounded (int / int): the same float the tar
    reader gets from the PAX text of the same time. (ns / 1e9 rounds twice.)"""
    return ns / 1_000_000_000


def _xattrs(host: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(host, name, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile: the engine changed the layer under us
    return out


def _image_xattrs(xattrs: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in xattrs.items() if not k.startswith(_OWN_XATTRS)}


def _inode(host: str, st: os.stat_result) -> _Inode:
    mode = st.st_mode
    xattrs = _image_xattrs(_xattrs(host))
    common = dict(mode=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid,
                  mtime=_seconds(st.st_mtime_ns), xattrs=xattrs)
    if stat.S_ISREG(mode):
        return _Inode("file", size=st.st_size, linkname="", **common,  # type: ignore[arg-type]
                      content=ContentRef(host, 0, st.st_size))
    if stat.S_ISLNK(mode):
        return _Inode("symlink", size=0, linkname=os.readlink(host), **common)  # type: ignore[arg-type]
    kind = {stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}.get(
        stat.S_IFMT(mode))
    if kind is None:
        raise ImageFormatError(f"{host}: a file type no layer can hold")
    return _Inode(kind, size=0, linkname="", **common,  # type: ignore[arg-type]
                  devmajor=os.major(st.st_rdev) if kind != "fifo" else 0,
                  devminor=os.minor(st.st_rdev) if kind != "fifo" else 0)


def index_in_place(ref: ImageRef, image: OverlayImage, dest: Path, budgets: Budgets,
                   progress: object = None) -> FlatImage:
    """The FlatImage of `image`, read from its layer directories. `dest` (new, empty) is
    the result's work dir; nothing is written into it."""
    dest.mkdir(parents=True)
    os.chmod(dest, 0o700)
    merged = _Merge(budgets)
    for i, diff in enumerate(image.layer_dirs):
        if callable(progress):
            progress(f"indexing layer {i} in place ({diff})")
        merged.apply(i, diff)
    entries, groups, content = merged.entries()
    return FlatImage(entries=entries, root=None, config=image.config,
                     source_digest=image.image_id, source_ref=ref, _groups=groups,
                     _content=content, workdir=dest.resolve())
