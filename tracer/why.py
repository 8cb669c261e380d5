""""Why is this file kept?" / "why is it not?", answered from a run's saved files.

`tracer minimize --report R.json` leaves R.json (with the exclude decisions), R.keeplist
(every kept path with its reasons) and R.paths.gz (every path of the original image).
Those three answer the question without the image or the engine, which is what someone
debugging a production failure at 3 a.m. has at hand.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from tracer.errors import BadInput
from tracer.image.model import Entry, FlatImage
from tracer.rootfs import SymlinkLoop


@dataclass
class WhyAnswer:
    path: str
    kept: bool
    image_path: str | None = None  # the same file with the image's symlinks resolved
    reasons: list[str] = field(default_factory=list)
    excluded_by: str | None = None
    in_image: bool | None = None  # None: unknown (no image path list at hand)

    def format_text(self) -> str:
        if self.image_path and self.image_path != self.path:
            inner = WhyAnswer(path=self.image_path, kept=self.kept, reasons=self.reasons,
                              excluded_by=self.excluded_by, in_image=self.in_image)
            return (f"{self.path} is {self.image_path} in the image (through symlinks, "
                    "which are kept with it).\n" + inner.format_text())
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
    excluded = report.get("excluded_paths") or {}
    index = _read_path_index(keeplist_path.with_name(keeplist_path.stem + ".paths.gz"))
    image_path = path
    if index is not None and path not in kept:
        with contextlib.suppress(SymlinkLoop):  # a loop: answer for the path as given
            image_path = index.rootfs().resolve(path, follow_last=False).path
    answer = WhyAnswer(path=path, kept=False, image_path=image_path)
    if index is not None:
        answer.in_image = image_path in index.entries
    if image_path in kept:
        answer.kept, answer.reasons, answer.in_image = True, kept[image_path], True
    elif image_path in excluded:
        entry = excluded[image_path]
        answer.excluded_by = entry.get("rule")
        answer.reasons = entry.get("reasons", [])
        answer.in_image = True
    return answer


def _read_path_index(path: Path) -> FlatImage | None:
    """The original image's paths (`PATH<TAB>kind<TAB>link`) as an index-only FlatImage."""
    if not path.exists():
        return None
    entries: dict[str, Entry] = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            name, _, rest = line.rstrip("\n").partition("\t")
            kind, _, link = rest.partition("\t")
            entries[name] = Entry(path=name, kind=kind or "file", mode=0o755, uid=0, gid=0,
                                  mtime=0.0, size=0, linkname=link, xattrs={}, layer=0)
    entries.setdefault("/", Entry(path="/", kind="dir", mode=0o755, uid=0, gid=0, mtime=0.0,
                                  size=0, linkname="", xattrs={}, layer=0))
    return FlatImage(entries=entries, root=None, config={}, source_digest="")
