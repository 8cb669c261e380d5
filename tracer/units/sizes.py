"""The price of package granularity, per unit: what `file` kept of it, what `package` keeps.

Every kept path is counted once, in the row of its primary unit (or the `(no unit)` row),
so the rows add up exactly: the `file` column sums to the file-level keep-list's bytes,
the `package` column to the package-level keep-list's, and `added` to the difference.
A unit that was not pulled in can still have a row with added bytes (a library the ELF
closure of an added program needs): that too is part of the price. Bytes are regular-file
content as the report counts it (a hardlinked inode once).
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

    @property
    def added_bytes(self) -> int:
        return self.package_bytes - self.file_bytes

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.label, "kind": self.kind, "file_bytes": self.file_bytes,
                "package_bytes": self.package_bytes, "added_bytes": self.added_bytes,
                "file_paths": self.file_paths, "package_paths": self.package_paths}


@dataclass
class SizeTable:
    rows: list[UnitSize] = field(default_factory=list)  # biggest added first
    file_total: int = 0
    package_total: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"file_bytes": self.file_total, "package_bytes": self.package_total,
                "added_bytes": self.package_total - self.file_total,
                "units": [r.to_json() for r in self.rows]}

    def format_text(self, limit: int = 15) -> str:
        added = self.package_total - self.file_total
        pulled = sum(1 for r in self.rows if r.added_bytes and r.label != NO_UNIT)
        lines = [f"package granularity keeps {human_size(self.package_total)}; file granularity "
                 f"would keep {human_size(self.file_total)} (+{human_size(added)} from "
                 f"{pulled} {'unit' if pulled == 1 else 'units'}), biggest first:"]
        priced = [r for r in self.rows if r.file_bytes or r.package_bytes]
        shown = priced[:limit]
        width = max([len(r.label) for r in shown] + [4])
        lines.append(f"  {'unit'.ljust(width)}  {'file':>9}  {'package':>9}  {'added':>10}")
        for r in shown:
            lines.append(f"  {r.label.ljust(width)}  {human_size(r.file_bytes):>9}  "
                         f"{human_size(r.package_bytes):>9}  {'+' + human_size(r.added_bytes):>10}")
        rest = priced[limit:]
        if rest:
            lines.append(f"  ({len(rest)} more, +{human_size(sum(r.added_bytes for r in rest))})")
        return "\n".join(lines)


def unit_sizes(index: UnitIndex, entries: Mapping[str, EntryLike], file_kept: Iterable[str],
               package_kept: Iterable[str]) -> SizeTable:
    """Per-unit bytes of the file-level and the package-level keep-lists (see module doc)."""
    rows: dict[str, UnitSize] = {}
    table = SizeTable()

    def row_of(path: str) -> UnitSize:
        unit = index.unit_of(path)
        key = unit.key if unit is not None else NO_UNIT
        row = rows.get(key)
        if row is None:
            row = rows[key] = UnitSize(unit.label if unit else NO_UNIT, unit.kind if unit else "")
        return row

    for path in set(file_kept):
        e = entries.get(path)
        size = e.size if e is not None and e.kind == "file" else 0
        row = row_of(path)
        row.file_bytes += size
        row.file_paths += 1
        table.file_total += size
    for path in set(package_kept):
        e = entries.get(path)
        size = e.size if e is not None and e.kind == "file" else 0
        row = row_of(path)
        row.package_bytes += size
        row.package_paths += 1
        table.package_total += size
    table.rows = sorted(rows.values(),
                        key=lambda r: (-r.added_bytes, -r.package_bytes, r.label))
    return table
