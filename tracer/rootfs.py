"""Path resolution inside an image root: a host directory, or a flattened image's index.

An image's symlinks are untrusted: `/lib -> /usr/lib` must mean the image's /usr/lib, and
`/etc/x -> ../../../../etc/shadow` must never reach the host. The host kernel would follow
both onto the host, so this module never lets it: every path is walked one component at a
time (lstat + readlink), absolute targets restart at the image root and ".." is clamped at
it, the way openat2(RESOLVE_IN_ROOT) does. Files are then opened component by component
with O_NOFOLLOW, so even a tree changed behind our back cannot make the host follow a link.

The root is treated as read-only for the life of a RootFS: lstat and readlink results are
cached, which is what makes resolving thousands of library paths cheap.

Two backends share all of the resolution logic: `RootFS(dir)` answers the four primitives
(lstat, readlink, listdir, open of an already resolved path) from a host directory;
`IndexRootFS(flat)` answers them from a flattened image's index and reads file bytes
straight from the layer data, so an image never has to be extracted to be inspected.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tracer.errors import BadInput

if TYPE_CHECKING:
    from tracer.image.model import Entry, FlatImage

MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS: ELOOP after this many links in one lookup


class SymlinkLoop(Exception):
    """A lookup inside the image crossed more than MAX_SYMLINKS links (ELOOP)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: too many levels of symbolic links inside the image")
        self.path = path


@dataclass(frozen=True)
class Resolved:
    """The result of resolving an in-image path.

    `links` lists every symlink crossed, because a minimized image must keep each of them
    (the program opens `/lib/x86_64-linux-gnu/libc.so.6`, which needs the `/lib` link).
    """

    path: str
    links: tuple[str, ...]
    exists: bool


def normalize(path: str) -> str:
    """Lexically normalize an absolute in-image path, clamping ".." at the root."""
    out: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        out.append(comp)
    return "/" + "/".join(out)


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts)


class RootFS:
    """An image root with every lookup interpreted inside it.

    This class is the directory backend (an image root extracted to a host directory) and
    holds all the resolution logic; IndexRootFS swaps in the index-backed primitives.
    """

    def __init__(self, root: Path, walk_limit: int | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise BadInput(f"image root {self.root} is not a directory")
        self._init_caches(walk_limit)

    def _init_caches(self, walk_limit: int | None = None) -> None:
        if walk_limit is None:
            from tracer.budgets import DEFAULT

            walk_limit = DEFAULT.path_walk
        self.walk_limit = walk_limit  # Budgets.path_walk: see _spend_links
        self._link_components = 0
        self._lstat_cache: dict[str, os.stat_result | None] = {}
        self._link_cache: dict[str, str] = {}
        self._resolve_cache: dict[tuple[str, bool], Resolved] = {}

    # -- raw access, only for paths whose components are all already resolved ---------------
    def host_path(self, path: str) -> Path:
        """Host path for an in-image path whose components are already resolved.

        Lexical only: ".." is clamped, but symlinks in `path` would be followed by the host,
        so callers pass paths that came out of resolve().
        """
        rel = normalize(path).lstrip("/")
        return self.root / rel if rel else self.root

    def _raw_lstat(self, path: str) -> os.stat_result | None:
        try:
            return self._lstat_cache[path]
        except KeyError:
            pass
        try:
            st: os.stat_result | None = os.lstat(self.host_path(path))
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            st = None  # a name the host cannot hold cannot exist in this tree either
        self._lstat_cache[path] = st
        return st

    def _raw_readlink(self, path: str) -> str:
        try:
            return self._link_cache[path]
        except KeyError:
            target = os.readlink(self.host_path(path))
            self._link_cache[path] = target
            return target

    def _raw_listdir(self, path: str) -> list[str]:
        """Names in the resolved directory `path`."""
        return os.listdir(self.host_path(path))

    def _open_resolved(self, path: str, asked: str) -> BinaryIO:
        """Open the resolved file `path` (`asked` is the caller's name for error messages).

        Each component is opened relative to the previous one with O_NOFOLLOW, so the host
        never follows a link even if the tree changed since resolve().
        """
        parts = [p for p in path.split("/") if p]
        dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in parts[:-1]:
                nxt = os.open(
                    comp,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
                os.close(dir_fd)
                dir_fd = nxt
            if not parts:
                raise IsADirectoryError(f"{asked}: is a directory")
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        return os.fdopen(fd, "rb")

    # -- resolution -----------------------------------------------------------------------
    def resolve(self, path: str, *, follow_last: bool = True, cwd: str = "/") -> Resolved:
        """Resolve `path` inside the image, as the kernel would inside a chroot.

        A missing component ends the walk: the rest is appended lexically and `exists` is
        False, so callers still get a stable name and the links crossed so far.
        Raises SymlinkLoop after MAX_SYMLINKS links.
        """
        if not path.startswith("/"):
            path = cwd.rstrip("/") + "/" + path
        key = (path, follow_last)
        hit = self._resolve_cache.get(key)
        if hit is not None:
            return hit
        result = self._walk(path, follow_last)
        self._resolve_cache[key] = result
        return result

    def _walk(self, path: str, follow_last: bool) -> Resolved:
        todo = [c for c in reversed(path.split("/")) if c not in ("", ".")]
        cur: list[str] = []
        # the path of cur[:i+1] for each i: a component adds one string, not a join of
        # all before it (a 2,000-component name would cost the square of its length)
        prefixes: list[str] = []
        links: list[str] = []
        count = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur:
                    cur.pop()
                    prefixes.pop()
                continue
            candidate = (prefixes[-1] if prefixes else "") + "/" + comp
            cur.append(comp)
            prefixes.append(candidate)
            st = self._raw_lstat(candidate)
            if st is None:
                return Resolved(normalize(_join(cur + todo[::-1])), tuple(links), False)
            if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
                count += 1
                if count > MAX_SYMLINKS:
                    raise SymlinkLoop(path)
                links.append(candidate)
                target = self._raw_readlink(candidate)
                cur.pop()
                prefixes.pop()
                if target.startswith("/"):
                    cur, prefixes = [], []
                if not target:
                    return Resolved(normalize(_join(cur + todo[::-1])), tuple(links), False)
                parts = [c for c in reversed(target.split("/")) if c not in ("", ".")]
                self._spend_links(len(parts), path)
                todo.extend(parts)
                continue
            if todo and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                # ENOTDIR: a file used as a directory
                return Resolved(normalize(_join(cur + todo[::-1])), tuple(links), False)
        return Resolved(prefixes[-1] if prefixes else "/", tuple(links), True)

    def _spend_links(self, components: int, path: str) -> None:
        """Count path components that the image's symlinks add to lookups. One lookup may
        cross 40 links of 2,000 components each (as the kernel allows): a chain of such
        links made every lookup through it cost 80,000 steps, and a trace or an ELF can
        ask for thousands. Over all lookups of this root, at most the path_walk budget."""
        self._link_components += components
        if self._link_components > self.walk_limit:
            from tracer.budgets import BudgetExceeded

            raise BudgetExceeded("path_walk", self.walk_limit,
                                 f"looking up {path[:200]!r} in the image: its symlinks "
                                 f"led lookups through more than {self.walk_limit:,} path "
                                 "components in all")

    # -- safe accessors (every one interprets links inside the image) ----------------------
    def lstat(self, path: str) -> os.stat_result | None:
        """lstat of the last component; links in the parent directories are followed in-image."""
        res = self.resolve(path, follow_last=False)
        return self._raw_lstat(res.path) if res.exists else None

    def stat(self, path: str) -> os.stat_result | None:
        """stat following every link inside the image; None when missing or a link loops."""
        try:
            res = self.resolve(path)
        except SymlinkLoop:
            return None
        return self._raw_lstat(res.path) if res.exists else None

    def readlink(self, path: str) -> str:
        """Target of the symlink `path` (its parents resolved in the image)."""
        res = self.resolve(path, follow_last=False)
        st = self._raw_lstat(res.path) if res.exists else None
        if st is None or not stat.S_ISLNK(st.st_mode):
            raise OSError(f"{path}: not a symbolic link inside the image")
        return self._raw_readlink(res.path)

    def listdir(self, path: str) -> list[str]:
        """Names in the directory `path` (links followed in the image); [] when not a dir."""
        st = self.stat(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return []
        return sorted(self._raw_listdir(self.resolve(path).path))

    def open(self, path: str) -> BinaryIO:
        """Open a file for reading after resolving `path` in the image."""
        res = self.resolve(path)
        if not res.exists:
            raise FileNotFoundError(f"{path}: no such file inside the image")
        return self._open_resolved(res.path, path)

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_file(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)


_S_IFMT = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


class IndexRootFS(RootFS):
    """A flattened image's index as a RootFS: nothing on the host is looked at.

    lstat results are synthesized from the index entries (type bits, permission bits, owner,
    size, mtime; hardlinked names share an inode number) and file bytes come from
    `FlatImage.open_content`, i.e. straight from the layer data.
    """

    def __init__(self, flat: FlatImage, walk_limit: int | None = None) -> None:
        # no host root on purpose: every primitive below answers from the index
        self._flat = flat
        self._children: dict[str, list[str]] | None = None
        self._inodes: dict[str, int] = {}
        self._init_caches(walk_limit)

    def host_path(self, path: str) -> Path:
        raise TypeError(f"{path}: an index-backed image root has no host path")

    def _canonical(self, e: Entry) -> Entry:
        return self._flat.entries[e.linkname] if e.kind == "hardlink" else e

    def _raw_lstat(self, path: str) -> os.stat_result | None:
        try:
            return self._lstat_cache[path]
        except KeyError:
            pass
        e = self._flat.entries.get(path)
        st: os.stat_result | None = None
        if e is not None:
            c = self._canonical(e)
            ino = self._inodes.setdefault(c.path, len(self._inodes) + 1)
            size = c.size if c.kind == "file" else len(c.linkname) if c.kind == "symlink" else 0
            rdev = os.makedev(c.devmajor, c.devminor) if c.kind in ("char", "block") else 0
            nlink = len(self._flat.hardlink_group(path))
            st = os.stat_result((_S_IFMT[c.kind] | (c.mode & 0o7777), ino, 0, nlink, c.uid,
                                 c.gid, size, c.mtime, c.mtime, c.mtime),
                                {"st_rdev": rdev})
        self._lstat_cache[path] = st
        return st

    def _raw_readlink(self, path: str) -> str:
        e = self._flat.entries.get(path)
        if e is None or self._canonical(e).kind != "symlink":
            raise OSError(f"{path}: not a symbolic link inside the image")
        return self._canonical(e).linkname

    def _raw_listdir(self, path: str) -> list[str]:
        if self._children is None:
            children: dict[str, list[str]] = {}
            for p in self._flat.entries:
                if p != "/":
                    parent, _, name = p.rpartition("/")
                    children.setdefault(parent or "/", []).append(name)
            self._children = children
        return list(self._children.get(path, ()))

    def _open_resolved(self, path: str, asked: str) -> BinaryIO:
        e = self._flat.entries.get(path)
        if e is None:
            raise FileNotFoundError(f"{asked}: no such file inside the image")
        if self._canonical(e).kind == "dir":
            raise IsADirectoryError(f"{asked}: is a directory")
        return self._flat.open_content(path)
