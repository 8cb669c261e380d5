"""What a suggested smoke step checks of a command's output, from runs of the original.

A step that checks only `exit: 0` passes on an image that prints the wrong thing, so the
step `tracer diagnose --exec/--command` suggests checks a part of the output that
distinguishes it: a line of stdout, else of stderr (a program may speak only there), that
every run of the original printed. Which part is stable is decided by the runs, never by
a guess from one: a candidate becomes a regex only when it matches the whole output of
every run, exactly as the runner will search it (`re.search`, multiline).

Candidates, best first: a line that says something (three letters at least), then one with
a letter, then a line with no letters (a count, a sum: matched as the whole line); the
first lines of the output first. Digit runs in a worded line may differ (dates, counters:
`[0-9]+`), a character the runner could not decode (U+FFFD) is any character, and a
binary output offers its printable stretches (`%PDF-1.7`, the `PNG` of a PNG header).
When nothing qualifies the answer says why, plainly: no output, output that changes
between runs, or output with no text to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tracer.explain.outputs import VARIES, first_difference, stability
from tracer.trace.capture import TOOL_PREFIX
from tracer.trace.result import StepOutcome

# what runners write in place of cut output, and strace's own messages: never a regex
CUT_MARKER = re.compile(r"\.\.\. \(\d+ (?:(?:more|earlier) lines?|earlier characters|"
                        r"earlier bytes not kept)\)")
REGEX_CHARS = 80  # a regex is at most this much of a line: a prefix proves the same
CANDIDATE_LINES = 200  # lines of a stream looked at for a candidate
TRIES = 60  # candidates tried per stream (each is searched in every run's output)
STREAMS = ("stdout", "stderr")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")  # splits a binary line


@dataclass(frozen=True)
class Candidate:
    tier: int  # 0: three letters at least; 1: a letter; 2: no letter, the whole line
    text: str

    @property
    def regex(self) -> str:
        if self.tier == 2:
            return "(?m)^" + _escape(self.text, numbers=False) + "$"
        return _escape(self.text[:REGEX_CHARS].rstrip(), numbers=True)


def _escape(text: str, *, numbers: bool) -> str:
    """Regex for `text` as it is: only the characters that mean something are escaped (the
    profile shows it to people); with `numbers`, digit runs may differ; a character the
    runner could not decode (U+FFFD) is any character."""
    out = []
    for part in re.split(r"([0-9]+)", text) if numbers else [text]:
        if numbers and part.isascii() and part.isdigit():
            out.append("[0-9]+")
            continue
        for ch in part:
            if ch == "\ufffd":
                out.append(".")
            elif ch in ".^$*+?{}[]\\|()":
                out.append("\\" + ch)
            else:
                out.append(ch)
    return "".join(out)


def _says_something(text: str) -> bool:
    return any(not ch.isspace() and ch != "\ufffd" for ch in text)


def candidates(output: str) -> list[Candidate]:
    """The parts of `output` a step could check, best first (see the module docstring)."""
    found: list[Candidate] = []
    for line in output.splitlines()[:CANDIDATE_LINES]:
        stripped = line.strip()
        if not stripped or CUT_MARKER.fullmatch(stripped) or line.startswith(TOOL_PREFIX):
            continue
        binary = bool(_CONTROL.search(stripped))
        parts = [p.strip() for p in _CONTROL.split(stripped)] if binary else [stripped]
        for part in parts:
            if not _says_something(part):
                continue
            letters = sum(ch.isalpha() for ch in part)
            if letters >= 3:
                found.append(Candidate(0, part))
            elif letters:
                found.append(Candidate(1, part))
            elif not binary and part.isprintable():
                found.append(Candidate(2, part))
    return sorted(found, key=lambda c: c.tier)  # stable: first lines first within a tier


def stdout_regex(output: str) -> str | None:
    """The regex of the best candidate of one output (None when there is none); whether
    it holds on other runs is for `output_check` to say."""
    found = candidates(output)
    return found[0].regex if found else None


@dataclass(frozen=True)
class OutputCheck:
    """What the suggested step checks: `regex` on `stream`, or (stream None) only the exit
    code, with `why`."""

    stream: str | None
    regex: str | None
    why: str = ""


def output_check(runs: list[StepOutcome]) -> OutputCheck:
    """The best candidate of the last run (the untraced one, as verification runs it) that
    matches the whole output of every run; stdout before stderr within a tier."""
    texts = {name: [r.streams[name].text if name in r.streams else "" for r in runs]
             for name in STREAMS}
    offered = {name: candidates(texts[name][-1])[:TRIES] for name in STREAMS}
    for tier in (0, 1, 2):
        for name in STREAMS:
            for cand in offered[name]:
                if cand.tier != tier:
                    continue
                regex = cand.regex
                if all(re.search(regex, text, re.M) for text in texts[name]):
                    return OutputCheck(name, regex)
    return OutputCheck(None, None, _why_none(runs, texts))


def _why_none(runs: list[StepOutcome], texts: dict[str, list[str]]) -> str:
    printed = [name for name in STREAMS if any(_says_something(t) for t in texts[name])]
    if not printed:
        return "it prints nothing on stdout or stderr"
    for name in printed:
        captured = [r.streams[name] for r in runs if name in r.streams]
        if len(captured) == len(runs) and stability(captured) == VARIES:
            return (f"its output changes between runs of the original image ({name} "
                    f"{first_difference(texts[name][0], texts[name][-1])})")
    name = printed[0]
    return (f"its output has no text a regex can check ({name}: "
            f"{max(len(t) for t in texts[name]):,} characters, no line with a letter)")
