"""The price of the granularity dial, per unit: what `file`, `package` (and `deps`) keep of it.

Every kept path is counted once per position, in the row of its primary unit (or the
`(no unit)` row), so the rows add up exactly: the `file` column sums to the file-level
keep-list's bytes, the `package` column to the package-level keep-list's, the `deps`
column (when priced) to the deps-level one's, and `added` (the last position minus
`file`) to the difference. A unit that was not pulled in can still have a row with added
bytes (a library the ELF closure of an added program needs): that too is part of the
price. Bytes are regular-file content as the report counts it (a hardlinked inode once).

The text table lists the rows that add something, biggest first; its header counts
exactly those rows, and the line under the shown rows counts the rest of them, so the
numbers a reader adds up agree (`+28.5 MB from 37 units` = the shown rows + `(22 more)`).
Units kept at file level that add nothing are counted on a line of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis.keeplist import EntryLike
from tracer.report import human_size
from tracer.units.index import UnitIndex

NO_UNIT = "(no unit)"


@dataclass
class UnitSize:
    label: str  # `package libc6`, or NO_UNIT
    kind: str  # the unit kind; "" for NO_UNIT
    file_bytes: int = 0
    package_bytes: int = 0
    file_paths: int = 0
    package_paths: int = 0
    deps_bytes: int | None = None  # None: deps granularity not priced
    deps_paths: int | None = None

    @property
    def added_bytes(self) -> int:
        last = self.package_bytes if self.deps_bytes is None else self.deps_bytes
        return last - self.file_bytes

    def to_json(self) -> dict[str, Any]:
        out = {"unit": self.label, "kind": self.kind, "file_bytes": self.file_bytes,
               "package_bytes": self.package_bytes, "added_bytes": self.added_bytes,
               "file_paths": self.file_paths, "package_paths": self.package_paths}
        if self.deps_bytes is not None:
            out["deps_bytes"], out["deps_paths"] = self.deps_bytes, self.deps_paths
        return out


def _units(n: int) -> str:
    return f"{n} {'unit' if n == 1 else 'units'}"


@dataclass
class SizeTable:
    rows: list[UnitSize] = field(default_factory=list)  # biggest added first
    file_total: int = 0
    package_total: int = 0
    deps_total: int | None = None  # None: deps granularity not priced

    @property
    def positions(self) -> tuple[str, ...]:
        return ("file", "package") if self.deps_total is None else ("file", "package", "deps")

    @property
    def totals(self) -> dict[str, int]:
        """Bytes each position keeps: what safety costs, at a glance."""
        out = {"file": self.file_total, "package": self.package_total}
        if self.deps_total is not None:
            out["deps"] = self.deps_total
        return out

    @property
    def added_total(self) -> int:
        return list(self.totals.values())[-1] - self.file_total

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file_bytes": self.file_total,
                               "package_bytes": self.package_total}
        if self.deps_total is not None:
            out["deps_bytes"] = self.deps_total
        out.update({"added_bytes": self.added_total,
                    "units": [r.to_json() for r in self.rows]})
        return out

    def format_text(self, limit: int = 15) -> str:
        """The table for people; see the module docstring for how its counts agree."""
        positions = self.positions
        totals = self.totals
        adding = [r for r in self.rows if r.added_bytes]
        units = sum(1 for r in adding if r.label != NO_UNIT)
        source = _units(units) + (" and files of no unit" if len(adding) > units else "")
        last = positions[-1]
        others = [f"{p} granularity {human_size(totals[p])}" for p in reversed(positions[:-1])]
        others[0] = others[0].replace(" granularity ", " granularity would keep ", 1)
        lines = [f"{last} granularity keeps {human_size(totals[last])}; {', '.join(others)} "
                 f"(+{human_size(self.added_total)} from {source}), biggest first:"]
        shown = adding[:limit]
        width = max([len(r.label) for r in shown] + [4])
        lines.append(f"  {'unit'.ljust(width)}  "
                     + "  ".join(f"{p:>9}" for p in positions) + f"  {'added':>10}")
        for r in shown:
            cells = [r.file_bytes, r.package_bytes] + ([r.deps_bytes or 0]
                                                       if len(positions) == 3 else [])
            lines.append(f"  {r.label.ljust(width)}  "
                         + "  ".join(f"{human_size(c):>9}" for c in cells)
                         + f"  {'+' + human_size(r.added_bytes):>10}")
        rest = adding[limit:]
        if rest:
            lines.append(f"  ({len(rest)} more, +{human_size(sum(r.added_bytes for r in rest))})")
        idle = [r for r in self.rows if not r.added_bytes and r.file_bytes]
        if idle:
            named = sum(1 for r in idle if r.label != NO_UNIT)
            what = " and ".join(x for x in ((_units(named) if named else ""),
                                            ("files of no unit" if len(idle) > named else ""))
                                if x)
            lines.append(f"  ({what} kept at file level add nothing: "
                         f"{human_size(sum(r.file_bytes for r in idle))})")
        return "\n".join(lines)


def unit_sizes(index: UnitIndex, entries: Mapping[str, EntryLike], file_kept: Iterable[str],
               package_kept: Iterable[str], deps_kept: Iterable[str] | None = None
               ) -> SizeTable:
    """Per-unit bytes of the file-level, package-level (and deps-level) keep-lists (see
    the module doc)."""
    rows: dict[str, UnitSize] = {}
    table = SizeTable(deps_total=None if deps_kept is None else 0)

    def row_of(path: str) -> UnitSize:
        unit = index.unit_of(path)
        key = unit.key if unit is not None else NO_UNIT
        row = rows.get(key)
        if row is None:
            row = rows[key] = UnitSize(unit.label if unit else NO_UNIT, unit.kind if unit else "")
            if deps_kept is not None:
                row.deps_bytes = row.deps_paths = 0
        return row

    def size(path: str) -> int:
        e = entries.get(path)
        return e.size if e is not None and e.kind == "file" else 0

    for path in set(file_kept):
        row, n = row_of(path), size(path)
        row.file_bytes += n
        row.file_paths += 1
        table.file_total += n
    for path in set(package_kept):
        row, n = row_of(path), size(path)
        row.package_bytes += n
        row.package_paths += 1
        table.package_total += n
    if deps_kept is not None:
        total = 0
        for path in set(deps_kept):
            row, n = row_of(path), size(path)
            row.deps_bytes = (row.deps_bytes or 0) + n
            row.deps_paths = (row.deps_paths or 0) + 1
            total += n
        table.deps_total = total
    table.rows = sorted(rows.values(), key=lambda r: (
        -r.added_bytes, -(r.package_bytes if r.deps_bytes is None else r.deps_bytes), r.label))
    return table
