"""The flattened filesystem: one Entry per path of the final image, plus the host tree.

The index (not the host tree) is the truth for metadata: owners, setuid bits, xattrs and
device nodes are recorded here and never applied on the host, so an untrusted image cannot
plant a setuid-root binary or a device node in the work directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tracer.image.reference import ImageRef

KINDS = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo")


@dataclass
class Entry:
    """One path of the final filesystem with the metadata the written image must carry."""

    path: str
    kind: str
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
    """Result of `flatten`: every final path, the extracted tree, and the source's config."""

    entries: dict[str, Entry]
    root: Path
    config: dict
    source_digest: str
    source_ref: ImageRef | None = None
    _groups: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def host_path(self, path: str) -> Path:
        """Where `path` was extracted (files, dirs and symlinks only; never follow it)."""
        return self.root / path.lstrip("/")

    def hardlink_group(self, path: str) -> tuple[str, ...]:
        """Every path sharing `path`'s inode, sorted; `(path,)` when it has no other links."""
        return self._groups.get(path, (path,))

    def hardlink_groups(self) -> dict[str, tuple[str, ...]]:
        """Each multi-link inode once: canonical (`kind != "hardlink"`) path -> all its paths."""
        out: dict[str, tuple[str, ...]] = {}
        for group in self._groups.values():
            for p in group:
                if self.entries[p].kind != "hardlink":
                    out[p] = group
        return out

    def content_size(self) -> int:
        """Bytes of regular-file content, each hardlinked inode counted once."""
        return sum(e.size for e in self.entries.values() if e.kind == "file")

    def file_count(self) -> int:
        """Number of paths in the final filesystem, "/" excluded."""
        return len(self.entries) - 1
