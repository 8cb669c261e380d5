"""Which unit owns a path, and what else it owns: one index per image root.

Built once from the image (a host directory RootFS or an IndexRootFS over a flattened
image; nothing is extracted for the latter), it answers in the image's own names:
every path, whether it came from a database or a query, is canonicalized the same way
(parent directories resolved through the image's symlinks), so a .list file's
`/lib/x86_64-linux-gnu/libc.so.6`, a traced `/lib/x86_64-linux-gnu/libc.so.6` and the
image's `/usr/lib/x86_64-linux-gnu/libc.so.6` all find libc6.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.budgets import DEFAULT, Budgets
from tracer.rootfs import RootFS, normalize
from tracer.units.apk import read_apk
from tracer.units.dpkg import read_dpkg
from tracer.units.model import PRIORITY, Unit
from tracer.units.node import read_node
from tracer.units.perl import read_perl
from tracer.units.php import read_composer
from tracer.units.python import read_distributions, read_stdlib
from tracer.units.reader import DbReader, canonical_path, walk
from tracer.units.ruby import read_gems


@dataclass
class UnitIndex:
    """Units of one image root, and for every owned path its owners (primary first)."""

    root: RootFS
    units: dict[str, Unit] = field(default_factory=dict)  # key -> unit
    owners: dict[str, tuple[str, ...]] = field(default_factory=dict)  # path -> unit keys
    warnings: list[str] = field(default_factory=list)  # malformed databases, in words

    @classmethod
    def build(cls, root: RootFS, *, paths: Iterable[str] | None = None,
              budgets: Budgets = DEFAULT) -> UnitIndex:
        """Read every supported database of the image at `root`.

        `paths`: every path of the image if the caller has them (a flattened image's
        `entries`), else the root is walked. Raises BudgetExceeded (exit 2) when the
        databases are larger than budgets allow; malformed content only adds warnings.
        """
        reader = DbReader(root, budgets)
        all_paths = sorted(p for p in (paths if paths is not None else walk(root, budgets))
                           if p != "/")
        budgets.check("entries", len(all_paths), "paths of the image root")
        units: list[Unit] = []
        units += read_dpkg(reader)
        units += read_apk(reader)
        units += read_distributions(reader, all_paths)
        units += read_gems(reader, all_paths)
        units += read_perl(reader, all_paths)
        units += read_composer(reader, all_paths)
        units += read_node(reader, all_paths)
        units += read_stdlib(reader, all_paths)
        index = cls(root)
        owners: dict[str, list[str]] = {}
        for unit in units:
            if unit.key in index.units:
                reader.warn(f"{unit.source}: a second {unit.kind} unit named {unit.name!r}; "
                            "ignored")
                continue
            index.units[unit.key] = unit
            for path in unit.paths:
                keys = owners.setdefault(path, [])
                if not keys or keys[-1] != unit.key:
                    keys.append(unit.key)
        def rank(key: str) -> tuple[int, str]:
            return PRIORITY.get(index.units[key].kind, 9), key

        for path, keys in owners.items():
            index.owners[path] = (keys[0],) if len(keys) == 1 else tuple(sorted(keys, key=rank))
        index.warnings = reader.all_warnings()
        return index

    def units_of(self, path: str) -> list[Unit]:
        """Every unit that lists `path`, the primary one first (system packages win)."""
        keys = (self.owners.get(canonical_path(self.root, path))
                or self.owners.get(normalize(path), ()))
        return [self.units[k] for k in keys]

    def unit_of(self, path: str) -> Unit | None:
        """The unit `path` belongs to (the primary owner), None when no unit lists it."""
        owners = self.units_of(path)
        return owners[0] if owners else None

    def find(self, name: str, kind: str | None = None) -> list[Unit]:
        """Units called `name` (any architecture), e.g. `find("libc6", "dpkg")`."""
        return [u for u in self.units.values()
                if u.name == name and (kind is None or u.kind == kind)]
