""""Why is this file kept?" / "why is it not?", answered from a run's saved files.

`tracer minimize --report R.json` leaves R.json (with the exclude decisions), R.keeplist
(every kept path with its reasons) and R.paths.gz (every path of the original image).
Those three answer the question without the image or the engine, which is what someone
debugging a production failure at 3 a.m. has at hand.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from tracer.errors import BadInput


@dataclass
class WhyAnswer:
    path: str
    kept: bool
    reasons: list[str] = field(default_factory=list)
    excluded_by: str | None = None
    in_image: bool | None = None  # None: unknown (no image path list at hand)

    def format_text(self) -> str:
        if self.kept:
            return f"{self.path} is KEPT because:\n" + "\n".join(f"  - {r}"
                                                                 for r in self.reasons)
        if self.excluded_by:
            return (f"{self.path} is NOT kept: it was needed ({'; '.join(self.reasons)}) but "
                    f"the profile's exclude rule {self.excluded_by!r} removed it; add it to "
                    "keep.paths to keep it anyway")
        if self.in_image is False:
            return f"{self.path} is NOT kept: it is not in the original image at all"
        if self.in_image:
            return (f"{self.path} is NOT kept: it is in the original image but nothing needed "
                    "it (not in the ELF closure, not touched by the traced smoke test, not "
                    "matched by keep.paths or keep.packages); add it to keep.paths if the "
                    "application needs it")
        return f"{self.path} is NOT kept (the original image's path list is not available)"


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def _read_keeplist(path: Path) -> dict[str, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the keep-list: {exc}") from None
    kept: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        name, sep, reasons = line.partition("\t")
        if not sep or not name.startswith("/"):
            raise BadInput(f"{path}:{number}: not a keep-list line (PATH<TAB>reasons)")
        kept[name] = reasons.split("; ")
    return kept


def why(source: Path, path: str) -> WhyAnswer:
    """Answer for `path` from a report (.json) or a keep-list file."""
    path = "/" + path.strip("/") if path != "/" else "/"
    report: dict = {}
    if source.suffix == ".json":
        try:
            report = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(f"{source}: not a readable tracer report: {exc}") from None
        keeplist_path = _sibling(source, ".keeplist")
    else:
        keeplist_path = source
        report_path = _sibling(source, ".json")
        if report_path.exists():
            report = json.loads(report_path.read_text(encoding="utf-8"))
    kept = _read_keeplist(keeplist_path)
    if path in kept:
        return WhyAnswer(path=path, kept=True, reasons=kept[path], in_image=True)
    excluded = report.get("excluded_paths") or {}
    paths_file = _sibling(keeplist_path, ".paths.gz")
    in_image: bool | None = None
    if paths_file.exists():
        with gzip.open(paths_file, "rt", encoding="utf-8", errors="surrogateescape") as f:
            in_image = any(line.rstrip("\n") == path for line in f)
    if path in excluded:
        entry = excluded[path]
        return WhyAnswer(path=path, kept=False, excluded_by=entry.get("rule"),
                         reasons=entry.get("reasons", []), in_image=True)
    return WhyAnswer(path=path, kept=False, in_image=in_image)
