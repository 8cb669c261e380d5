""""Why is this file missing?": turn a traced run of a minimized image into a fix.

A minimized image that fails is diagnosed by tracing its smoke test and keeping only the
failed lookups (ENOENT, ENOTDIR, ELOOP) of paths that exist in the ORIGINAL image: every
other failed lookup is the normal noise of search paths. Each one is reported with the
step, program and syscall that wanted it, the exclude rule that removed it (if any), and
the exact YAML to add to the profile. Step failures are listed as well, so the operator
can tell whether a missing file is the cause at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.keeplist import compile_globs, first_match
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.trace.result import Access, SmokeResult

MISSING_ERRNOS = ("ENOENT", "ENOTDIR", "ELOOP")
ABSENT = "absent"  # used by the original run, not in the minimized image
COLLAPSE_AT = 3  # this many missing siblings become one directory glob


@dataclass(frozen=True)
class MissingFile:
    path: str  # as the program asked for it
    image_path: str  # the same file in the original image, symlinks resolved
    syscall: str
    errno: str
    step: str
    program: str
    cmdline: tuple[str, ...]
    excluded_by: str | None  # the profile's exclude rule that removed it, if one did


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
            cmd = " ".join(items[0].cmdline) or program
            lines.append(f"  in {step}, {program or '?'} ({cmd}):")
            for m in items:
                why = f", removed by exclude rule {m.excluded_by!r}" if m.excluded_by else ""
                alias = f" (= {m.image_path})" if m.image_path != m.path else ""
                how = (f"{m.syscall} in the original run, absent now" if m.errno == ABSENT
                       else f"{m.syscall} -> {m.errno}")
                lines.append(f"    {m.path}{alias}  [{how}{why}]")
        excluded_rules = sorted({m.excluded_by for m in self.missing if m.excluded_by})
        lines.append("add to the profile:")
        lines.append("  keep:")
        lines.append("    paths:")
        lines += [f'      - "{s}"' for s in self.suggestions]
        if excluded_rules:
            lines.append("  (keep.paths wins over exclude; or narrow these exclude rules: "
                         + ", ".join(excluded_rules) + ")")
        return "\n".join(lines)


def suggest_globs(paths: Iterable[str]) -> list[str]:
    """keep.paths lines, collapsed to `DIR/*` where COLLAPSE_AT or more siblings are missing."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for p in sorted(set(paths)):
        by_dir[p.rsplit("/", 1)[0] or "/"].append(p)
    out: list[str] = []
    for directory, items in sorted(by_dir.items()):
        if len(items) >= COLLAPSE_AT:
            out.append(f"{directory.rstrip('/')}/*")
        else:
            out.extend(items)
    return out


def diagnose(result: SmokeResult, original: RootFS, exclude: Iterable[str] = (), *,
             original_run: SmokeResult | None = None,
             present: Callable[[str], bool] | None = None) -> Diagnosis:
    """Original-image files the minimized run missed, grouped, with the YAML that fixes them.

    Two kinds of evidence: failed lookups (ENOENT...) of paths the original image has, and,
    when the original image's traced run and the minimized image's contents are given,
    paths that run used which the minimized image lacks. The second catches programs that
    list a directory and never ask for what is not listed (Python's import system does
    exactly that), so no failed lookup ever names the missing file.
    """
    globs = compile_globs(exclude)
    seen: set[str] = set()
    missing: list[MissingFile] = []

    def record(a: Access, errno: str) -> None:
        try:
            resolved = original.resolve(a.path, follow_last=False)
        except SymlinkLoop:
            return
        if not resolved.exists or resolved.path in seen:
            return
        if errno == ABSENT and present is not None and present(resolved.path):
            return
        seen.add(resolved.path)
        missing.append(MissingFile(path=a.path, image_path=resolved.path, syscall=a.syscall,
                                   errno=errno, step=a.step, program=a.program,
                                   cmdline=tuple(a.cmdline),
                                   excluded_by=first_match(resolved.path, globs)
                                   or first_match(a.path, globs)))

    for a in result.accesses:
        if not a.ok and a.errno in MISSING_ERRNOS:
            record(a, a.errno or "")
    if original_run is not None and present is not None:
        for a in original_run.accesses:
            if a.ok:
                record(a, ABSENT)
    failures = [{"label": s.label, "message": s.message, "exit_code": s.exit_code,
                 "output": s.output} for s in result.steps if not s.passed]
    return Diagnosis(missing=missing, step_failures=failures,
                     suggestions=suggest_globs(m.image_path for m in missing),
                     passed=result.passed)
