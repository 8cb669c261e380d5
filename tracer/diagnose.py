""""Why is this file missing?": turn a traced run of a minimized image into a fix.

A minimized image that fails is diagnosed by tracing its smoke test: every failed lookup
(ENOENT, ENOTDIR, ELOOP) of a path the ORIGINAL image has is reported (every other failed
lookup is the normal noise of search paths), and so is every path the original run used
that the minimized image lacks. A name the program tried to create (a lock file, a unix
socket) names the directory it was to be created in, which is what the image must have.
What is named is the first thing on the way the minimized image really lacks: a symlink
crossed, or the entry itself; never `/`, which every image has. Each one comes with the
step, program and syscall, the exclude rule that removed it (if any), and the exact YAML
to add. Step failures are listed as well, so the operator can tell whether a missing
file is the cause at all.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.evidence import UNIDENTIFIED, needed_path, parent_of
from tracer.keeplist import compile_globs, first_match
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.runfiles import escape
from tracer.trace.result import Access, SmokeResult

MISSING_ERRNOS = ("ENOENT", "ENOTDIR", "ELOOP")
ABSENT = "absent"  # used by the original run, not in the minimized image
COLLAPSE_AT = 3  # this many missing siblings become one directory glob
COLLAPSE_MIN_DEPTH = 2  # ... but never `/*` or `/usr/*`: too wide to be a fix


@dataclass(frozen=True)
class MissingFile:
    path: str  # as the program asked for it (for a name it made: the directory it was in)
    image_path: str  # what the minimized image lacks: the entry, or a symlink on the way
    syscall: str
    errno: str
    step: str
    program: str
    cmdline: tuple[str, ...]
    # the profile's exclude rule that removed it, if one did: matched against image_path,
    # the way the keep-list applies exclude (to image paths, never to the name as asked)
    excluded_by: str | None
    acted_on: str | None = None  # the name created/connected to/removed inside `path`


@dataclass
class Diagnosis:
    missing: list[MissingFile] = field(default_factory=list)
    step_failures: list[dict[str, Any]] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)  # keep.paths entries to add
    passed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "missing": [asdict(m) for m in self.missing],
                "step_failures": self.step_failures, "suggested_keep_paths": self.suggestions}

    def format_text(self) -> str:
        """For people: names escaped (tracer.runfiles), keep.paths lines as YAML strings."""
        lines: list[str] = []
        if self.step_failures:
            lines.append("failed smoke steps:")
            for s in self.step_failures:
                lines.append(f"  {s['label']}: {s['message']}")
                for out in (s.get("output") or "").splitlines()[:5]:
                    lines.append(f"    | {out}")
        if not self.missing:
            lines.append("no file of the original image was missing in the traced run"
                         + (": the failure is not a missing file" if self.step_failures
                            else ""))
            return "\n".join(lines)
        lines.append("files of the original image that the application looked for or used, "
                     "missing from the minimized one:")
        groups: dict[tuple[str, str], list[MissingFile]] = defaultdict(list)
        for m in self.missing:
            groups[(m.step, m.program)].append(m)
        for (step, program), items in sorted(groups.items()):
            cmd = escape(" ".join(items[0].cmdline))
            lines.append(f"  in {step}, {escape(program) if program else UNIDENTIFIED}"
                         + (f" ({cmd})" if cmd else "") + ":")
            lines += [f"    {_describe(m)}" for m in items]
        excluded_rules = sorted({m.excluded_by for m in self.missing if m.excluded_by})
        lines.append("add to the profile:")
        lines.append("  keep:")
        lines.append("    paths:")
        lines += [f"      - {json.dumps(s)}" for s in self.suggestions]  # YAML-quoted
        if excluded_rules:
            lines.append("  (keep.paths wins over exclude; or narrow these exclude rules: "
                         + ", ".join(excluded_rules) + ")")
        return "\n".join(lines)


def _describe(m: MissingFile) -> str:
    """One missing thing: what was asked, what is lacking, how it was used, which rule."""
    lacking = f" (lacking {escape(m.image_path)})" if m.image_path != m.path else ""
    if m.acted_on is not None:
        name = escape(m.acted_on)
        used = (f"{m.syscall} of {name} in the original run" if m.errno == ABSENT
                else f"{m.syscall} of {name} -> {m.errno}")
        how = f"{used}: the directory it is in is missing now"
    else:
        how = (f"{m.syscall} in the original run, absent now" if m.errno == ABSENT
               else f"{m.syscall} -> {m.errno}")
    why = f", removed by exclude rule {m.excluded_by!r}" if m.excluded_by else ""
    return f"{escape(m.path)}{lacking}  [{how}{why}]"


def suggest_globs(paths: Iterable[str]) -> list[str]:
    """keep.paths lines, collapsed to `DIR/*` where COLLAPSE_AT or more siblings are missing
    in a directory at least COLLAPSE_MIN_DEPTH deep. `/` is never suggested: it is always
    there, and keep.paths "/" would mean nothing but look like "keep everything"."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for p in sorted(set(paths) - {"/"}):
        by_dir[parent_of(p)].append(p)
    out: list[str] = []
    for directory, items in sorted(by_dir.items()):
        if len(items) >= COLLAPSE_AT and directory.count("/") >= COLLAPSE_MIN_DEPTH:
            out.append(f"{directory}/*")
        else:
            out.extend(items)
    return out


def _lacking(original: RootFS, path: str,
             present: Callable[[str], bool] | None) -> str | None:
    """The first thing on the way to `path` (a symlink crossed, the entry, what a final
    symlink points to) that the minimized image lacks, as an original image path; None
    when the original has no such path, or the minimized image has all of it. Without
    `present`, the entry itself (resolved in the original)."""
    try:
        entry = original.resolve(path, follow_last=False)
        full = original.resolve(path, follow_last=True)
    except SymlinkLoop:
        return None
    if not entry.exists or entry.path == "/":
        return None
    if present is None:
        return entry.path
    way = [*entry.links, entry.path]
    if full.exists:
        way += [*full.links, full.path]
    return next((p for p in way if p != "/" and not present(p)), None)


def diagnose(result: SmokeResult, original: RootFS, exclude: Iterable[str] = (), *,
             original_run: SmokeResult | None = None,
             present: Callable[[str], bool] | None = None) -> Diagnosis:
    """Original-image files the minimized run missed, grouped, with the YAML that fixes them.

    Two kinds of evidence: failed lookups (ENOENT...) of paths the original image has, and,
    when the original image's traced run and the minimized image's contents (`present`)
    are given, paths that run used which the minimized image lacks. The second catches
    programs that list a directory and never ask for what is not listed (Python's import
    system does exactly that), so no failed lookup ever names the missing file.
    """
    globs = compile_globs(exclude)
    seen: set[str] = set()
    missing: list[MissingFile] = []

    def record(a: Access, asked: str, errno: str, acted_on: str | None) -> None:
        lacking = _lacking(original, asked, present)
        if lacking is None or lacking in seen:
            return
        seen.add(lacking)
        missing.append(MissingFile(path=asked, image_path=lacking, syscall=a.syscall,
                                   errno=errno, step=a.step, program=a.program,
                                   cmdline=tuple(a.cmdline),
                                   excluded_by=first_match(lacking, globs),
                                   acted_on=acted_on))

    for a in result.accesses:
        if a.ok or a.errno not in MISSING_ERRNOS:
            continue
        if a.meaning.in_parent:  # the name is new: what can be missing is its directory
            record(a, parent_of(a.path), a.errno or "", a.path)
        else:
            record(a, a.path, a.errno or "", None)
    if original_run is not None and present is not None:
        for a in original_run.accesses:
            needed = needed_path(a, original)
            if needed is not None:
                record(a, needed[0], ABSENT, a.path if needed[1] else None)
    failures = [{"label": s.label, "message": s.message, "exit_code": s.exit_code,
                 "output": s.output} for s in result.steps if not s.passed]
    return Diagnosis(missing=missing, step_failures=failures,
                     suggestions=suggest_globs(m.image_path for m in missing),
                     passed=result.passed)
