"""Reading package databases out of an image: bounded, never trusting, never fatal on garbage.

Every database (dpkg's status and .list files, apk's installed, RECORD files, package.json,
.packlist, installed.json) comes from the image and is hostile input. A crafted one must
not cost unbounded memory or time, so all reads of one index share one byte budget and all
records share the entries budget; crossing either is bad input (exit 2) naming the budget.
Malformed content is only a warning: the index then knows less (the affected paths stay at
file granularity) but the run goes on, because a broken database is the image's problem
and the file-level keep-list is still correct.

The work is linear in what is read, too: text is split lazily (`lines`, `chunks`), so a
database of a hundred million one-byte records trips the entries budget instead of first
becoming a hundred million strings; the paths a database names are charged to the byte
budget as tracer derives them (a RECORD line `x` below a 4,000-byte directory is a
4,000-byte path); a path is matched against directories of interest (gem homes, stdlib
roots) by one walk down a `DirTrie`, never by trying every directory or every ancestor.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from tracer.budgets import BudgetExceeded, Budgets
from tracer.rootfs import RootFS, SymlinkLoop, normalize

MAX_WARNINGS = 50  # more are counted, not listed: a garbage image must not flood the report

V = TypeVar("V")


def chunks(text: str, sep: str, end: int | None = None) -> Iterator[str]:
    """`text[:end].split(sep)`, one piece at a time: memory for one piece, not all of them."""
    end = len(text) if end is None else end
    start = 0
    while True:
        cut = text.find(sep, start, end)
        if cut < 0:
            yield text[start:end]
            return
        yield text[start:cut]
        start = cut + len(sep)


def lines(text: str) -> Iterator[str]:
    """The lines of `text` one at a time, as `text.split("\\n")` minus a last empty one.

    Only \\n separates: these formats are written one record per \\n line, and a file
    name may hold a \\r (str.splitlines would split there).
    """
    if text:
        yield from chunks(text, "\n", len(text) - 1 if text.endswith("\n") else len(text))


def components(path: str) -> list[str]:
    """The names of an absolute path: `/a/b` -> [a, b], `/` -> []."""
    return [c for c in path.split("/") if c]


class DirTrie(Generic[V]):
    """Directories with a value each; which of them hold a path, in one walk down its names.

    Asking "which of these 5,000 gem homes is this path under" by trying each home, or
    each of a 2,000-component path's ancestors as a string, costs homes x paths or the
    square of the path's length; the walk costs the path's length.
    """

    _VALUE = ""  # the key of a node's value: no component of a path is empty

    def __init__(self) -> None:
        self._root: dict[str, Any] = {}
        self._size = 0

    def setdefault(self, directory: str, value: V) -> V:
        """The value of `directory`, set to `value` first if it has none."""
        node = self._root
        for name in components(directory):
            node = node.setdefault(name, {})
        if self._VALUE not in node:
            node[self._VALUE] = value
            self._size += 1
        return node[self._VALUE]

    def __len__(self) -> int:
        return self._size

    def ancestors(self, names: list[str], *, self_too: bool = False) -> Iterator[tuple[int, V]]:
        """(length, value) of each directory holding the path `names`, outermost first.

        `length` is how many of `names` the directory has; with `self_too` the path itself
        counts when it is one of the directories.
        """
        node = self._root
        last = len(names) if self_too else len(names) - 1
        for depth in range(last + 1):
            if depth:
                node = node.get(names[depth - 1])
                if node is None:
                    return
            if self._VALUE in node:
                yield depth, node[self._VALUE]


class DbReader:
    """Bounded reads from one image root plus the warnings collected while reading."""

    def __init__(self, root: RootFS, budgets: Budgets) -> None:
        self.root = root
        self.budgets = budgets
        # all database files together (and so each one); real images stay far below: a
        # Debian image with 1,500 packages has about 5 MB of status and 30 MB of .list files
        self.limit = budgets.package_db_bytes
        self.used = 0
        self.records = 0
        self.warnings: list[str] = []
        self.more_warnings = 0

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.more_warnings += 1

    def all_warnings(self) -> list[str]:
        extra = [f"... and {self.more_warnings} more warnings"] if self.more_warnings else []
        return self.warnings + extra

    # -- budgets ------------------------------------------------------------------------
    def count(self, n: int, where: str) -> None:
        """Count `n` owned-path records against the entries budget."""
        self.records += n
        self.budgets.check("entries", self.records, f"package databases of the image ({where})")

    def _spend(self, n: int, where: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise BudgetExceeded("package_db_bytes", self.limit,
                                 f"package databases of the image (reading {where})")

    # -- reading ------------------------------------------------------------------------
    def data(self, path: str, *, per_file: tuple[str, int] | None = None) -> bytes | None:
        """Bytes of the in-image file `path`; None (and a warning if it exists) if unreadable.

        `per_file` = (budget name, limit) adds a per-document cap (json_bytes for JSON).
        """
        try:
            st = self.root.stat(path)
            if st is None or not stat.S_ISREG(st.st_mode):
                return None
            if per_file is not None:
                self.budgets.check(per_file[0], st.st_size, f"{path} in the image")
            self._spend(st.st_size, path)
            with self.root.open(path) as f:
                # a lying size in the index must not make us read more than we counted
                raw = f.read(st.st_size + 1)
        except (OSError, SymlinkLoop) as exc:
            self.warn(f"{path}: cannot read it ({exc}); its packages stay at file granularity")
            return None
        if len(raw) > st.st_size:
            self.warn(f"{path}: longer than its recorded size; ignored")
            return None
        return raw

    def text(self, path: str) -> str | None:
        raw = self.data(path)
        return None if raw is None else raw.decode("utf-8", errors="surrogateescape")

    def json(self, path: str) -> object | None:
        """A JSON document (at most budgets.json_bytes); None with a warning when malformed."""
        raw = self.data(path, per_file=("json_bytes", self.budgets.json_bytes))
        if raw is None:
            return None
        try:
            return json.loads(raw.decode("utf-8", errors="surrogateescape"))
        except (ValueError, RecursionError) as exc:
            self.warn(f"{path}: not valid JSON ({str(exc)[:80]}); ignored")
            return None

    # -- paths --------------------------------------------------------------------------
    def canonical(self, path: str, where: str = "a package database") -> str | None:
        """The image's own name for `path`: parents resolved in the image, last not followed.

        This is what makes a .list entry `/lib/x86_64-linux-gnu/libc.so.6` and an image
        entry `/usr/lib/x86_64-linux-gnu/libc.so.6` (merged /usr) the same path, both
        ways. None for paths over the path_length budget (a warning names them). The
        result's bytes count against package_db_bytes (`where` names the database): the
        memory paths take is bounded however short the records that named them.
        """
        if "\0" in path:
            self.warn("a package database names a path with a NUL byte; ignored")
            return None
        if len(path.encode("utf-8", errors="surrogateescape")) > self.budgets.path_length:
            self.warn(f"a package database names a path longer than {self.budgets.path_length}"
                      " bytes; ignored")
            return None
        result = canonical_path(self.root, path)
        self.used += len(result)
        if self.used > self.limit:
            raise BudgetExceeded("package_db_bytes", self.limit,
                                 f"package databases of the image (the paths named in {where})")
        return result

    def own(self, path: str, where: str) -> str | None:
        """canonical(path) for one record of `where`, counted against the entries budget."""
        self.count(1, where)
        return self.canonical(path, where)


def canonical_path(root: RootFS, path: str) -> str:
    """`path` with its parent directories resolved in the image, the last name not followed.

    The parent is resolved (and cached by the root) once for all the files a database lists
    in it, so a .list naming 10,000 files of one 2,000-deep directory walks it once, and
    the root's caches hold directories, not every listed file.
    """
    path = normalize(path)
    if path == "/":
        return path
    parent, _, name = path.rpartition("/")
    try:
        directory = root.resolve(parent or "/").path
    except SymlinkLoop:
        return path
    return ("" if directory == "/" else directory) + "/" + name


def walk(root: RootFS, budgets: Budgets) -> Iterator[str]:
    """Every path of the image (symlinked directories not followed), at most budgets.entries."""
    todo = ["/"]
    seen = 0
    while todo:
        directory = todo.pop()
        for name in root.listdir(directory):
            path = (directory.rstrip("/") + "/" + name)
            seen += 1
            budgets.check("entries", seen, "paths of the image root")
            yield path
            st = root.lstat(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                todo.append(path)
