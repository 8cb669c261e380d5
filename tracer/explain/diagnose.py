""""Why is this file missing?": turn a traced run of a minimized image into a fix.

A minimized image that fails is diagnosed by tracing its smoke test: every failed lookup
(ENOENT, ENOTDIR, ELOOP) of a path the ORIGINAL image has is reported (every other failed
lookup is the normal noise of search paths), and so is every path the original run used
that the minimized image lacks. A name the program tried to create (a lock file, a unix
socket) names the directory it was to be created in, which is what the image must have.
What is named is everything on the way the minimized image really lacks: each symlink
crossed, and the entry itself; never `/`, which every image has. Each one comes with the
step, program and syscall, the exclude rule that removed it (if any), and the exact YAML
to add. Step failures are listed as well, so the operator can tell whether a missing
file is the cause at all.

The fix is offered in the order that survives the next change of the application best:
a program that ran and is missing goes to `keep.binaries` (which keeps it with every
library it links, where a path would keep the bare file); every other file as its exact
path; and only then, as a shorter alternative, a `DIR/*` glob for many missing siblings,
never over a whole system directory (`/usr/lib/*`, a multiarch library directory), which
would undo the minimization. (A smoke step that exercises the use beats all of these:
`tracer.explain.replay` suggests one for a replayed production command.)
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.analysis.evidence import UNIDENTIFIED, needed_path, parent_of
from tracer.analysis.keeplist import first_match, globs_through_links
from tracer.analysis.policy import IMPLICIT_DLOPENS
from tracer.explain.outputs import OutputChange
from tracer.explain.runfiles import escape
from tracer.profile.edit import Edit, Placed, placed, plan, yaml_str
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.trace.result import Access, SmokeResult

MISSING_ERRNOS = ("ENOENT", "ENOTDIR", "ELOOP")
EXEC_SYSCALLS = ("execve", "execveat", "fanotify:exec")
ABSENT = "absent"  # used by the original run, not in the minimized image
COLLAPSE_AT = 3  # this many missing siblings become one directory glob
# ... but only in a directory at least this deep: `/usr/lib/*`, `/etc/*`, `/opt/*` are
# whole trees, not a fix
COLLAPSE_MIN_DEPTH = 3
# Directories deep enough that still hold every library or program of the system: a glob
# there keeps most of what the minimization removed.
SHARED_DIRS = frozenset({"/usr/lib64", "/usr/libexec", "/usr/libx32", "/usr/lib32",
                         "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib",
                         "/usr/local/lib64", "/usr/local/libexec", "/usr/local/share"})
MULTIARCH = re.compile(r"[a-z0-9_]+-linux-[a-z0-9_]+")  # x86_64-linux-gnu, aarch64-linux-musl


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
    """What the minimized run missed, and the keep lines that fix it, best first:
    `keep_binaries` (missing programs that ran), `keep_paths` (every other missing file,
    exact, as globs that match only itself), and `keep_globs`, a shorter alternative to
    `keep_paths` when many siblings are missing (empty when nothing collapses)."""

    missing: list[MissingFile] = field(default_factory=list)
    step_failures: list[dict[str, Any]] = field(default_factory=list)
    keep_binaries: list[str] = field(default_factory=list)
    keep_paths: list[str] = field(default_factory=list)
    keep_globs: list[str] = field(default_factory=list)
    passed: bool = False
    # the operator's profile file, when known: the fix is then placed in it (`format_text`)
    profile_text: str = ""
    profile_file: str = "the profile"
    # checks that exit as on the original but print something else (tracer.explain.outputs)
    output_changes: list[OutputChange] = field(default_factory=list)
    output_not_compared: list[str] = field(default_factory=list)

    def changed_outputs(self, changes: list[OutputChange], not_compared: list[str]) -> None:
        """Record what comparing the outputs found: a change is a failure."""
        self.output_changes += changes
        self.output_not_compared += not_compared
        if changes:
            self.passed = False

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "missing": [asdict(m) for m in self.missing],
                "step_failures": self.step_failures,
                "output_changes": [c.to_json() for c in self.output_changes],
                "output_not_compared": self.output_not_compared,
                "suggested_keep_binaries": self.keep_binaries,
                "suggested_keep_paths": self.keep_paths,
                "suggested_keep_globs": self.keep_globs}

    @property
    def excluded_rules(self) -> list[str]:
        return sorted({m.excluded_by for m in self.missing if m.excluded_by})

    def format_failures(self) -> list[str]:
        lines: list[str] = []
        if self.step_failures:
            lines.append("failed smoke steps:")
            for s in self.step_failures:
                lines.append(f"  {s['label']}: {s['message']}")
                output = (s.get("output") or "").splitlines()
                if len(output) > 8:  # the end is where a traceback says what went wrong
                    lines.append(f"    | ... ({len(output) - 8} earlier lines)")
                lines += [f"    | {out}" for out in output[-8:]]
        if self.output_changes:
            lines.append("checks that end as on the original image but print something else:")
            for change in self.output_changes:
                lines += ["  " + ln for ln in change.format_lines("  ")]
        lines += [f"  ({note})" for note in self.output_not_compared]
        return lines

    def format_missing(self, failed: bool | None = None) -> list[str]:
        """The missing files grouped by step and program; names escaped (tracer.explain.runfiles).
        `failed`: whether there is a failure to explain (default: any failed step)."""
        failed = bool(self.step_failures or self.output_changes) if failed is None \
            else failed
        if not self.missing:
            return ["no file of the original image was missing in the traced run"
                    + (": the failure is not a missing file" if failed else "")]
        lines = ["files of the original image that the application looked for or used, "
                 "missing from the minimized one:"]
        groups: dict[tuple[str, str], list[MissingFile]] = defaultdict(list)
        for m in self.missing:
            groups[(m.step, m.program)].append(m)
        for (step, program), items in sorted(groups.items()):
            cmd = escape(" ".join(items[0].cmdline))
            lines.append(f"  in {step}, {escape(program) if program else UNIDENTIFIED}"
                         + (f" ({cmd})" if cmd else "") + ":")
            lines += [f"    {_describe(m)}" for m in items]
        return lines

    def format_text(self) -> str:
        """For people: the failures, the missing files, then the keep lines to add, placed
        in the operator's profile file when it is known (a second `keep:` pasted under one
        would be a duplicate key), as YAML (strings double-quoted, so any file name means
        itself)."""
        lines = self.format_failures() + self.format_missing()
        if not self.missing:
            return "\n".join(lines)
        if self.excluded_rules:
            lines.append("(keep.paths wins over exclude; or narrow these exclude rules: "
                         + ", ".join(self.excluded_rules) + ")")
        fixes: list[Suggestion] = []
        if self.profile_text:
            fixes = suggest(self.profile_text, None, "", self, passed=self.passed)
        if fixes:
            return "\n".join(lines + format_suggestions(fixes, self.profile_file))
        lines.append("add to the profile (into its keep: section, if it has one):")
        lines.append("keep:")
        if self.keep_binaries:
            lines.append("  binaries:  # programs that ran: each is kept with its libraries")
            lines += [f"    - {yaml_str(b)}" for b in self.keep_binaries]
        if self.keep_paths:
            lines.append("  paths:")
            lines += [f"    - {yaml_str(p)}" for p in self.keep_paths]
        if self.keep_globs:
            lines.append("or, shorter, these keep.paths instead of the exact paths above "
                         "(they keep every file in these directories):")
            lines += [f"    - {yaml_str(g)}" for g in self.keep_globs]
        return "\n".join(lines)


@dataclass
class Suggestion:
    """One way to fix it, as edits of the profile; `kind` says which (best first)."""

    kind: str  # "smoke" | "keep" | "keep-globs"
    why: str
    edits: list[Edit]
    placed: list[Placed]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "why": self.why,
                "edits": [p.to_json() for p in self.placed]}


def suggest(text: str, step: dict[str, Any] | None, note: str, diagnosis: Diagnosis, *,
            passed: bool) -> list[Suggestion]:
    """The fixes, best first, each planned as edits of the profile `text`: the smoke step
    `step` (a replayed command), then keep.binaries with the exact keep.paths, then
    keep.binaries with the shorter globs. A fix no edit can make in this profile (a list
    that is the anchor of other keys' aliases) is left out."""
    out: list[Suggestion] = []

    def add(kind: str, why: str, additions: dict[tuple[str, ...], list[Any]]) -> None:
        additions = {k: v for k, v in additions.items() if v}
        if additions:
            try:
                edits = plan(text, additions)
            except ValueError:
                return
            out.append(Suggestion(kind, why, edits, placed(text, edits)))

    if step is not None:
        why = ("add the command to the smoke test: every minimization then traces it, keeps "
               "what it uses and verifies it" if not passed else
               "it passes now; to keep it so, add the command to the smoke test")
        add("smoke", f"{why} ({note})", {("smoke",): [step]})
    d = diagnosis
    keep_why = "or keep what it used" if step is not None else "keep what it used"
    if d.keep_binaries:
        keep_why += ": the programs it ran with keep.binaries (each with its libraries)"
        keep_why += ", and the exact files" if d.keep_paths else ""
    else:
        keep_why += ": the exact files"
    add("keep", keep_why, {("keep", "binaries"): d.keep_binaries,
                           ("keep", "paths"): d.keep_paths})
    if d.keep_globs:
        add("keep-globs", "or, shorter than the exact files, whole directories of them "
            "(these keep every file in them)", {("keep", "binaries"): d.keep_binaries,
                                                 ("keep", "paths"): d.keep_globs})
    return out


def format_suggestions(suggestions: list[Suggestion], filename: str) -> list[str]:
    """The fixes as an operator applies them to `filename`, one numbered option each."""
    lines = ["", "fix it with ONE of these, best first (the lines starting with # are "
             "comments; they may be pasted too):"]
    for n, s in enumerate(suggestions, 1):
        lines.append(f"# {n}. {s.why}")
        if len(s.placed) > 1:
            lines.append("#    (bottom of the file first, so the line numbers stay right)")
        for p in s.placed:
            lines.append(f"# {p.header(filename)}")
            lines += p.text.rstrip("\n").split("\n")
    return lines


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


def glob_escape(path: str) -> str:
    """A keep.paths/keep.binaries entry that matches exactly `path`: the glob characters a
    file name may hold become one-character sets (`*` -> `[*]`, `[` -> `[\\[]`)."""
    return "".join({"*": "[*]", "?": "[?]", "[": "[\\[]"}.get(ch, ch) for ch in path)


def may_glob(directory: str) -> bool:
    """True when `DIR/*` is a fix and not a whole tree: at least COLLAPSE_MIN_DEPTH deep,
    and not a directory that holds the system's libraries or programs."""
    if directory.count("/") < COLLAPSE_MIN_DEPTH or directory in SHARED_DIRS:
        return False
    return not MULTIARCH.fullmatch(directory.rsplit("/", 1)[-1])


def exact_paths(paths: Iterable[str]) -> list[str]:
    """keep.paths lines for exactly these paths, sorted; a directory is left out when a
    path inside it is listed (keeping that keeps the directory). `/` is never suggested:
    it is always there, and keep.paths "/" would mean nothing but look like "keep
    everything"."""
    wanted = sorted(set(paths) - {"/"})
    inner = {parent_of(p) for p in wanted}
    while True:  # every ancestor of a listed path, not only its parent
        more = {parent_of(d) for d in inner} - inner
        if not more:
            break
        inner |= more
    return [glob_escape(p) for p in wanted if p not in inner]


def suggest_globs(paths: Iterable[str],
                  entries_in: Callable[[str], int] | None = None) -> list[str]:
    """keep.paths lines, collapsed to `DIR/*` where COLLAPSE_AT or more siblings are missing
    in a directory `may_glob` allows, and they are at least half of what the directory
    holds (`entries_in`, when given): shorter, but never much bigger than the exact paths.
    The other paths stay exact. Never `/`."""
    exact = set(exact_paths(paths))
    by_dir: dict[str, list[str]] = defaultdict(list)
    for p in sorted(set(paths) - {"/"}):
        if glob_escape(p) in exact:
            by_dir[parent_of(p)].append(p)
    out: list[str] = []
    for directory, items in sorted(by_dir.items()):
        share = entries_in is None or 2 * len(items) >= entries_in(directory)
        if len(items) >= COLLAPSE_AT and may_glob(directory) and share:
            out.append(f"{glob_escape(directory)}/*")
        else:
            out.extend(glob_escape(p) for p in items)
    return out


def missing_programs(missing: Iterable[MissingFile]) -> list[str]:
    """The programs that were executed (by the original run, or tried by the minimized one)
    and are missing, as they were started: what keep.binaries should name."""
    out: list[str] = []
    for m in missing:
        if m.syscall in EXEC_SYSCALLS and m.acted_on is None and m.path not in out:
            out.append(m.path)
    return out


def fixes(missing: list[MissingFile], original: RootFS,
          env: Mapping[str, str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(keep.binaries, exact keep.paths, shorter keep.paths globs or []) for `missing`.

    Paths that the keep.binaries entries keep anyway (the program, the links to it, the
    libraries it links: the static closure in the original image under `env`) are left out
    of keep.paths; a library it dlopen()s is not in that closure and stays.
    """
    from tracer.static import Resolver

    binaries = missing_programs(missing)
    covered: set[str] = set(binaries)
    if binaries:
        closure = Resolver(original, env=dict(env or {}), dlopens=IMPLICIT_DLOPENS).closure(
            dict.fromkeys(binaries))
        covered |= set(closure.files)
    rest = [m.image_path for m in missing
            if m.image_path not in covered and m.path not in covered]
    paths = exact_paths(rest)

    def entries_in(directory: str) -> int:
        try:
            return len(original.listdir(directory))
        except (OSError, SymlinkLoop):
            return 0

    globs = suggest_globs(rest, entries_in)
    return ([glob_escape(b) for b in binaries], paths,
            globs if len(globs) < len(paths) else [])


def _lacking(original: RootFS, path: str,
             present: Callable[[str], bool] | None) -> list[str]:
    """Everything on the way to `path` (each symlink crossed, the entry, what a final
    symlink points to) that the minimized image lacks, as original image paths, in the
    order they are met; [] when the original has no such path, or the minimized image has
    all of it. All of them, not only the first: a missing link on the way and the missing
    file behind it would otherwise take two rounds of diagnose and fix. Without
    `present`, the entry itself (resolved in the original)."""
    try:
        entry = original.resolve(path, follow_last=False)
        full = original.resolve(path, follow_last=True)
    except SymlinkLoop:
        return []
    if not entry.exists or entry.path == "/":
        return []
    if present is None:
        return [entry.path]
    way = [*entry.links, entry.path]
    if full.exists:
        way += [*full.links, full.path]
    return [p for p in dict.fromkeys(way) if p != "/" and not present(p)]


def diagnose(result: SmokeResult, original: RootFS, exclude: Iterable[str] = (), *,
             original_run: SmokeResult | None = None,
             present: Callable[[str], bool] | None = None,
             env: Mapping[str, str] | None = None) -> Diagnosis:
    """Original-image files the minimized run missed, grouped, with the YAML that fixes them.

    Two kinds of evidence: failed lookups (ENOENT...) of paths the original image has, and,
    when the original image's traced run and the minimized image's contents (`present`)
    are given, paths that run used which the minimized image lacks. The second catches
    programs that list a directory and never ask for what is not listed (Python's import
    system does exactly that), so no failed lookup ever names the missing file.
    `env` (the image's Env with the profile's) is the one the suggested keep.binaries
    entries are resolved with.
    """
    globs, _ = globs_through_links(exclude, original)  # the rules as the keep-list applied them
    seen: dict[str, int] = {}  # lacking path -> its index in `missing`
    missing: list[MissingFile] = []

    def record(a: Access, asked: str, errno: str, acted_on: str | None) -> None:
        for lacking in _lacking(original, asked, present):
            found = MissingFile(path=asked, image_path=lacking, syscall=a.syscall,
                                errno=errno, step=a.step, program=a.program,
                                cmdline=tuple(a.cmdline),
                                excluded_by=first_match(lacking, globs), acted_on=acted_on)
            if lacking not in seen:
                seen[lacking] = len(missing)
                missing.append(found)
                continue
            # a shell that finds no `seq` on its PATH only looked it up; the original run
            # executed it: it is a program, and keep.binaries keeps it with its libraries
            was = missing[seen[lacking]]
            if a.syscall in EXEC_SYSCALLS and acted_on is None and was.acted_on is None \
                    and was.syscall not in EXEC_SYSCALLS:
                missing[seen[lacking]] = found

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
    binaries, paths, globs = fixes(missing, original, env)
    return Diagnosis(missing=missing, step_failures=failures, keep_binaries=binaries,
                     keep_paths=paths, keep_globs=globs, passed=result.passed)
