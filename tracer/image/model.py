"""The flattened filesystem: one Entry per path of the final image, and where each regular
file's bytes lie in the layer data.

The index is the truth for metadata and content: owners, setuid bits, xattrs and device
nodes are recorded here and never applied on the host, and file bytes are read on demand
straight from the layer data (see content.py), so reading an image writes no file tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tracer.image.content import ContentRef, open_ref
from tracer.image.reference import ImageRef
from tracer.rootfs import IndexRootFS, RootFS


@dataclass
class Entry:
    """One path of the final filesystem with the metadata the written image must carry."""

    path: str
    kind: str  # file | dir | symlink | hardlink | char | block | fifo
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str
    xattrs: dict[str, bytes]
    layer: int
    devmajor: int = 0
    devminor: int = 0


@dataclass
class FlatImage:
    """Result of `flatten`: every final path, where file bytes lie, and the source's config.

    `root` is the host tree only when flatten was asked to extract one (`extract=True`);
    `workdir` is flatten's own directory, holding any layer data it had to spool.
    """

    entries: dict[str, Entry]
    root: Path | None
    config: dict
    source_digest: str
    source_ref: ImageRef | None = None
    _groups: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _content: dict[str, ContentRef] = field(default_factory=dict, repr=False)
    workdir: Path | None = None
    _rootfs: dict[int | None, RootFS] = field(default_factory=dict, repr=False)
    expanded: int = 0  # bytes its layers' tars came to (holes of sparse files included)

    def host_path(self, path: str) -> Path:
        """Where `path` was extracted (files, dirs and symlinks only; never follow it).

        Only for an image flattened with `extract=True`: the pipeline never extracts.
        """
        if self.root is None:
            raise ValueError("this image was flattened without extracting a host tree")
        return self.root / path.lstrip("/")

    def content_ref(self, path: str) -> ContentRef:
        """Where the bytes of regular file `path` (or of the file a hardlink names) lie."""
        e = self.entries.get(path)
        if e is None:
            raise FileNotFoundError(f"{path}: no such file in the image")
        if e.kind == "hardlink":
            e = self.entries[e.linkname]
        if e.kind == "dir":
            raise IsADirectoryError(f"{path}: is a directory")
        ref = self._content.get(e.path) if e.kind == "file" else None
        if ref is None:
            raise OSError(f"{path}: a {e.kind}, not a regular file")
        return ref

    def open_content(self, path: str) -> BinaryIO:
        """A seekable reader over the bytes of regular file `path`, read from the layer data
        in place and confined to that member's range. `path` is an index key (a real path:
        no symlink is followed here; use `rootfs()` for that)."""
        return open_ref(self.content_ref(path))

    def rootfs(self, walk_limit: int | None = None) -> RootFS:
        """The image as a RootFS answered from this index (links interpreted in-image),
        with `walk_limit` (Budgets.path_walk; None: its default) on every lookup. One
        RootFS (and its caches) per limit: a later call with another limit gets that limit,
        never the one an earlier caller happened to pass (`tracer ldd --budget path_walk`
        was ignored that way)."""
        root = self._rootfs.get(walk_limit)
        if root is None:
            root = self._rootfs[walk_limit] = IndexRootFS(self, walk_limit)
        return root

    def hardlink_group(self, path: str) -> tuple[str, ...]:
        """Every path sharing `path`'s inode, sorted; `(path,)` when it has no other links."""
        return self._groups.get(path, (path,))

    def has_privileged_programs(self) -> bool:
        """Does any regular file carry setuid/setgid bits or file capabilities? A traced
        run must then keep such programs' privilege (see the trace runner)."""
        return any(e.kind == "file" and (e.mode & 0o6000 or "security.capability" in e.xattrs)
                   for e in self.entries.values())

    def content_size(self) -> int:
        """Bytes of regular-file content, each hardlinked inode counted once."""
        return sum(e.size for e in self.entries.values() if e.kind == "file")

    def file_count(self) -> int:
        """Number of paths in the final filesystem, "/" excluded."""
        return len(self.entries) - 1
