"""Did the minimized image change what a check prints? Silent breakage, told with a diff.

A minimized image that exits 0 and prints plain text where the original printed hOCR, or
a header that reads "Europe" instead of "CET", passes every check that looks only at exit
codes, and breaks production without a word (docs/profile.md, "Silent changes fail
too"). So wherever two runs of the same check are at hand, the original's and the
minimized image's, their outputs are compared stream by stream (stdout, stderr, an http
body) whenever the check ended alike (same exit code, or passed on both).

What an output may be expected to be is decided by running the ORIGINAL more than once,
never by guessing from one run:

- printed alike by every run of the original: the minimized image must print it alike;
- alike but for numbers (counters, times, pids, sizes): alike but for numbers;
- different otherwise (a random token, a uuid): it cannot be compared, and that is said.

The comparison is on digests of everything the runner kept of a stream; the diff shown is
a bounded unified diff of the beginning that was kept (tracer.trace.result.Captured).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass

from tracer.explain.runfiles import escape
from tracer.trace.result import Captured, SmokeResult, StepOutcome

SAME = "same"  # every run of the original printed it alike
NUMBERS = "numbers"  # alike but for runs of digits
VARIES = "varies"  # no comparison is possible
DIFF_LINES = 30  # lines of a diff shown
DIFF_WINDOW = 2000  # lines from the first difference on that are diffed (difflib's cost)
LINE_CHARS = 200  # characters of one diff line shown


def stability(runs: list[Captured]) -> str:
    """How alike every run of the original printed one stream."""
    if all(c.digest == runs[0].digest for c in runs):
        return SAME
    if all(c.masked == runs[0].masked for c in runs):
        return NUMBERS
    return VARIES


def ended_alike(original: StepOutcome, minimized: StepOutcome) -> bool:
    """Same exit code (exec, command, the job), or passed on both (an http step's status
    and headers are its own checks)."""
    if minimized.exit_code is not None and minimized.exit_code == original.exit_code:
        return True
    return original.passed and minimized.passed


@dataclass(frozen=True)
class OutputChange:
    """One stream of one check that the minimized image prints differently."""

    label: str  # smoke[2].command, run (the job), smoke[0].http
    stream: str  # stdout | stderr | body
    how: str  # SAME (compared exactly) | NUMBERS (compared with numbers set aside)
    exit_code: int | None  # the minimized run's, the same as the original's
    diff: str  # bounded unified diff, original -> minimized

    @property
    def message(self) -> str:
        ended = (f"exit {self.exit_code} as on the original image" if self.exit_code
                 is not None else "passed as on the original image")
        alike = ("which every run of the original printed alike" if self.how == SAME
                 else "which every run of the original printed alike but for numbers")
        what = "body" if self.stream == "body" else self.stream
        return f"{self.label}: {ended}, but its {what} differs from the original's, {alike}"

    def format_lines(self, indent: str = "  ") -> list[str]:
        return [self.message] + [f"{indent}{ln}" for ln in self.diff.splitlines()]

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "message": self.message}


@dataclass
class Comparison:
    """What comparing the runs found: the changes, and what could not be compared."""

    changes: list[OutputChange]
    not_compared: list[str]  # "smoke[1].exec stdout: it changes between runs ..."

    def to_json(self) -> dict[str, object]:
        return {"changes": [c.to_json() for c in self.changes],
                "not_compared": self.not_compared}


def _outcomes(result: SmokeResult) -> dict[str, StepOutcome]:
    return {s.label: s for s in result.steps}


def suspects(original: SmokeResult, minimized: SmokeResult) -> list[str]:
    """`label stream` of every stream the minimized run printed otherwise than this one
    run of the original, in checks that ended alike: the cheap test that says whether a
    second run of the original is needed to judge them."""
    before = _outcomes(original)
    out: list[str] = []
    for after in minimized.steps:
        was = before.get(after.label)
        if was is None or not ended_alike(was, after):
            continue
        out += [f"{after.label} {name}" for name, c in after.streams.items()
                if name in was.streams and was.streams[name].digest != c.digest]
    return out


def compare_step(originals: list[StepOutcome], minimized: StepOutcome
                 ) -> tuple[list[OutputChange], list[str]]:
    """The changes in one check's streams, judged against every run of the original
    (those runs must have ended alike, else nothing is said of them); and what could
    not be compared, with why."""
    changes: list[OutputChange] = []
    notes: list[str] = []
    first = originals[0]
    if any(o.exit_code != first.exit_code or o.passed != first.passed for o in originals):
        return changes, [f"{minimized.label}: it ends differently on every run of the "
                         "original image; its output is not compared"]
    if not ended_alike(first, minimized):
        return changes, notes
    for name, after in minimized.streams.items():
        runs = [o.streams[name] for o in originals if name in o.streams]
        if len(runs) != len(originals):
            continue
        how = stability(runs)
        if how == VARIES:
            if after.digest not in {r.digest for r in runs}:
                notes.append(f"{minimized.label} {name}: not compared: it changes between "
                             f"runs of the original image, and not only in numbers "
                             f"({first_difference(runs[0].text, runs[-1].text)})")
            continue
        same = (after.digest == runs[-1].digest if how == SAME
                else after.masked == runs[-1].masked)
        if not same:
            changes.append(OutputChange(minimized.label, name, how, minimized.exit_code,
                                        unified_diff(runs[-1], after, name)))
    return changes, notes


def compare(originals: list[SmokeResult], minimized: SmokeResult,
            labels: set[str] | None = None) -> Comparison:
    """Every check of `minimized` (or only those in `labels`) against every run of the
    original that reached it."""
    runs = [_outcomes(r) for r in originals]
    found = Comparison([], [])
    for after in minimized.steps:
        if labels is not None and after.label not in labels:
            continue
        before = [r[after.label] for r in runs if after.label in r]
        if len(before) < 2:  # one run says nothing of what varies
            continue
        changes, notes = compare_step(before, after)
        found.changes += changes
        found.not_compared += notes
    return found


def first_difference(a: str, b: str) -> str:
    """Where two texts first differ, as `line N: 'a...' then 'b...'` (bounded)."""
    al, bl = a.splitlines(), b.splitlines()
    for n, (x, y) in enumerate(zip(al, bl, strict=False), 1):
        if x != y:
            return f"line {n}: {_quote(x)} then {_quote(y)}"
    n = min(len(al), len(bl)) + 1
    return f"line {n}: {_quote(al[n - 1] if len(al) >= n else '')} then " \
           f"{_quote(bl[n - 1] if len(bl) >= n else '')}"


def _quote(line: str, chars: int = 60) -> str:
    return "'" + escape(line[:chars]) + ("...'" if len(line) > chars else "'")


_HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@$")


def unified_diff(original: Captured, minimized: Captured, stream: str) -> str:
    """A short unified diff (at most DIFF_LINES lines of at most LINE_CHARS characters,
    names escaped) of what was kept of two streams. Only DIFF_WINDOW lines from the first
    difference on are diffed: difflib's cost grows faster than linearly."""
    a, b = original.text.splitlines(), minimized.text.splitlines()
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    if start == len(a) == len(b):
        return (f"(the first {len(original.text):,} characters are alike; they differ "
                "after them)")
    start = max(start - 2, 0)
    lines = []
    for line in difflib.unified_diff(a[start:start + DIFF_WINDOW], b[start:start + DIFF_WINDOW],
                                     f"original {stream}", f"minimized {stream}",
                                     n=2, lineterm=""):
        m = _HUNK.match(line)
        if m:  # numbers of the whole stream, not of the window
            line = (f"@@ -{int(m[1]) + start}{m[2] or ''} +{int(m[3]) + start}{m[4] or ''} "
                    "@@")
        lines.append(line)
    shown = [escape(ln[:LINE_CHARS]) + ("..." if len(ln) > LINE_CHARS else "")
             for ln in lines[:DIFF_LINES]]
    if len(lines) > DIFF_LINES:
        shown.append(f"... ({len(lines) - DIFF_LINES} more diff lines)")
    if original.cut or minimized.cut:
        shown.append(f"(diffed: the beginning kept of each, {len(original.text):,} and "
                     f"{len(minimized.text):,} characters)")
    return "\n".join(shown)
