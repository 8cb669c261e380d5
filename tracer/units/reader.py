"""Reading package databases out of an image: bounded, never trusting, never fatal on garbage.

Every database (dpkg's status and .list files, apk's installed, RECORD files, package.json,
.packlist, installed.json) comes from the image and is hostile input. A crafted one must
not cost unbounded memory or time, so all reads of one index share one byte budget and all
records share the entries budget; crossing either is bad input (exit 2) naming the budget.
Malformed content is only a warning: the index then knows less (the affected paths stay at
file granularity) but the run goes on, because a broken database is the image's problem
and the file-level keep-list is still correct.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator

from tracer.budgets import BudgetExceeded, Budgets
from tracer.rootfs import RootFS, SymlinkLoop, normalize

MAX_WARNINGS = 50  # more are counted, not listed: a garbage image must not flood the report


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
    def canonical(self, path: str) -> str | None:
        """The image's own name for `path`: parents resolved in the image, last not followed.

        This is what makes a .list entry `/lib/x86_64-linux-gnu/libc.so.6` and an image
        entry `/usr/lib/x86_64-linux-gnu/libc.so.6` (merged /usr) the same path, both
        ways. None for paths over the path_length budget (a warning names them).
        """
        if "\0" in path:
            self.warn("a package database names a path with a NUL byte; ignored")
            return None
        if len(path.encode("utf-8", errors="surrogateescape")) > self.budgets.path_length:
            self.warn(f"a package database names a path longer than {self.budgets.path_length}"
                      " bytes; ignored")
            return None
        try:
            return self.root.resolve(normalize(path), follow_last=False).path
        except SymlinkLoop:
            return normalize(path)


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
