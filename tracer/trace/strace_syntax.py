"""Lexing strace's output format: lines, quoted strings, argument lists, fd annotations.

Kept apart from the interpretation of syscalls (`parser.py`) because the syntax is what
breaks on odd input: strings with every escape strace emits (`\\xHH` from `-xx`, octal,
C escapes), `<unfinished ...>` / `<... resumed>` pairs interleaved across pids, `-y` fd
annotations (`3</etc/passwd>`, `AT_FDCWD</srv>`) and truncated strings (`"abc"...`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass

# "[pid 12] " (stderr output) or "12 " (-o with -f), then an optional -t/-tt/-ttt stamp.
_PREFIX = re.compile(
    r"^(?:\[pid\s+(?P<bpid>\d{1,10})\]\s+|(?P<pid>\d{1,10})\s+)?"
    r"(?:(?P<ts>\d+\.\d+|\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s+)?"
)
_CALL = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)\((?P<rest>.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. (?P<name>[a-z_][a-z0-9_]*) resumed>(?P<rest>.*)$", re.S)
_UNFINISHED = " <unfinished ...>"
_C_ESCAPES = {
    "n": 0x0A,
    "t": 0x09,
    "r": 0x0D,
    "v": 0x0B,
    "f": 0x0C,
    "a": 0x07,
    "b": 0x08,
    "\\": 0x5C,
    '"': 0x22,
    "'": 0x27,
    "?": 0x3F,
    "e": 0x1B,
}
_OPEN = {"(": ")", "[": "]", "{": "}", "<": ">"}
# Characters of unfinished calls held at once, waiting for their `resumed` half: strace
# leaves one per traced thread; only a process writing into the trace FIFO itself leaves
# more, and those must not hold the trace in memory.
MAX_PENDING = 64 << 20


@dataclass(frozen=True)
class Syscall:
    """One completed syscall (unfinished/resumed halves already joined)."""

    pid: int
    ts: float | None
    name: str
    args: tuple[str, ...]  # raw top-level argument tokens
    ret: str  # raw return token: "0", "-1", "3</etc/x>", "?"
    errno: str | None  # "ENOENT" when the call failed

    @property
    def ok(self) -> bool:
        return not self.ret.startswith("-") and self.ret != "?"

    @property
    def finished(self) -> bool:
        """False for `= ?` (the process died or exec'd away before the call returned)."""
        return self.ret != "?"

    def ret_int(self) -> int | None:
        m = re.match(r"-?\d{1,20}(?!\d)", self.ret)  # int() refuses 4,300 digits and more
        return int(m.group(0)) if m else None


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    if ":" in text:  # -t/-tt wall clock: seconds of the day, enough for ordering only
        h, m, s = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    return float(text)


# Possessive (Python 3.11): a quoted string of megabytes must not cost gigabytes of the
# regex engine's backtracking state (`(?:a|b)*` keeps some for every character)
_HEX_ONLY = re.compile(r"(?:\\x[0-9a-fA-F]{2})*+")
_STRING = re.compile(r'"([^"\\]*+(?:\\.[^"\\]*+)*+)"(\.\.\.)?', re.S)
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.S)


def _unescape(m: re.Match[bytes]) -> bytes:
    e = m.group(1)
    if e[:1] == b"x" and len(e) == 3:
        return bytes([int(e[1:], 16)])
    if e[:1] in b"01234567":
        return bytes([int(e, 8) & 0xFF])
    code = _C_ESCAPES.get(e.decode("latin-1"))
    return bytes([code]) if code is not None else b"\\" + e  # unknown: keep it literally


def decode_string(token: str) -> tuple[str, bool] | None:
    """Decode a strace quoted string token to (text, truncated), or None if not a string.

    Bytes that are not UTF-8 survive as surrogate escapes (os.fsdecode), so a path with
    odd bytes round-trips to the same bytes with os.fsencode. `-xx` output (all `\\xHH`)
    takes a fast path: traces of interpreters hold tens of thousands of such strings.
    """
    m = _STRING.match(token.strip())
    if m is None:
        return None
    body, truncated = m.group(1), m.group(2) is not None
    if _HEX_ONLY.fullmatch(body):
        raw = bytes.fromhex(body.replace("\\x", ""))
    else:
        raw = _ESCAPE.sub(_unescape, body.encode("utf-8", "surrogateescape"))
    return os.fsdecode(raw), truncated


_SPECIAL = re.compile(r'["()\[\]{}<>,]')
_WORD_CHAR = re.compile(r"\w")
# brackets open at once in one call: strace nests structs a few levels deep; a line that
# nests deeper is not strace's (a process writing into the trace FIFO made it)
MAX_NESTING = 256


def split_args(text: str) -> tuple[list[str], str]:
    """Split `a, "b,c", [d, e], f) = 3</x>` into top-level arguments and the rest after `)`.

    Quotes and (), [], {}, <> nest; `<` only opens after an fd number or name (`3<`,
    `AT_FDCWD<`) so that `<` in flags or comments does not confuse the split. Runs of
    ordinary characters are skipped by the regex engine, not one by one, and a line nested
    deeper than MAX_NESTING gives no arguments: a line of megabytes costs its own size.
    """
    args: list[str] = []
    stack: list[str] = []
    start = i = 0  # start of the current argument, scan position
    n = len(text)
    while (m := _SPECIAL.search(text, i)) is not None:
        i = m.start()
        c = text[i]
        if c == '"':
            sm = _STRING.match(text, i)
            i = (sm.end(1) if sm else n) + 1
            continue
        if c in "([{" or (c == "<" and i > start and _WORD_CHAR.match(text, i - 1)):
            stack.append(_OPEN[c])
            if len(stack) > MAX_NESTING:
                return [], ""
        elif stack and c == stack[-1]:
            stack.pop()
        elif not stack and c == ")":
            tok = text[start:i].strip()
            if tok:
                args.append(tok)
            return args, text[i + 1 :]
        elif not stack and c == ",":
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tok = text[start:].strip()
    if tok:
        args.append(tok)
    return args, ""


def fd_path(token: str) -> str | None:
    """The path of a `-y` annotated fd (`3</etc/x>`, `AT_FDCWD</srv>`), None if absent.

    Non-file fds (`pipe:[12]`, `socket:[3]`) and deleted files give None: they name
    nothing in the image.
    """
    m = re.match(r"^(?:-?\d+|AT_FDCWD)<(.*)>$", token.strip(), re.S)
    if not m:
        return None
    inner = m.group(1)
    if "\\" in inner:  # -xx/-x escaped contents
        dec = decode_string('"' + inner + '"')
        inner = dec[0] if dec else inner
    if inner.endswith(" (deleted)"):
        return None
    return inner if inner.startswith("/") else None


def string_list(token: str) -> list[str]:
    """Decode an argv-style list `["sh", "-c", "x"...]` (truncation marks dropped)."""
    token = token.strip()
    if not token.startswith("["):
        return []
    inner, _ = split_args(token[1:].rsplit("]", 1)[0] + ")")
    out = []
    for item in inner:
        dec = decode_string(item)
        if dec is not None:
            out.append(dec[0])
    return out


def _ret_and_errno(rest: str) -> tuple[str, str | None] | None:
    m = re.match(r"^\s*=\s*(?P<ret>\S+)(?:\s+(?P<errno>E[A-Z0-9]+))?", rest)
    if not m:
        return None
    ret = m.group("ret")
    if ret.startswith("-") and m.group("errno"):
        return ret, m.group("errno")
    return ret, None


def iter_syscalls(lines: Iterable[str], names: Container[str] | None = None) -> Iterator[Syscall]:
    """Yield completed syscalls from strace output lines, joining unfinished/resumed halves.

    Signal lines, exit lines and strace's own messages are skipped; so is a call whose
    other half never arrived (the trace was cut off), because its result is unknown.
    """
    pending: dict[tuple[int, str], tuple[float | None, str]] = {}
    held = 0  # characters in `pending`
    for raw in lines:
        line = raw.rstrip("\n")
        m = _PREFIX.match(line)
        assert m is not None  # every group is optional
        pid = int(m.group("bpid") or m.group("pid") or 0)
        ts = _timestamp(m.group("ts"))
        body = line[m.end() :]
        if body.endswith(_UNFINISHED):
            call = _CALL.match(body[: -len(_UNFINISHED)])
            if call:
                key, rest = (pid, call.group("name")), call.group("rest")
                old = pending.pop(key, None)
                held -= len(old[1]) if old else 0
                if held + len(rest) <= MAX_PENDING:  # else: as if its half never came
                    pending[key] = (ts, rest)
                    held += len(rest)
            continue
        resumed = _RESUMED.match(body)
        if resumed:
            name = resumed.group("name")
            first = pending.pop((pid, name), None)
            if first is None:
                continue
            ts, head = first
            held -= len(head)
            body_rest = head + resumed.group("rest")
        else:
            call = _CALL.match(body)
            if not call:
                continue
            name, body_rest = call.group("name"), call.group("rest")
        if names is not None and name not in names:
            continue  # not one we interpret: skip the costly argument split
        args, after = split_args(body_rest)
        result = _ret_and_errno(after)
        if result is None:
            continue
        yield Syscall(pid, ts, name, tuple(args), result[0], result[1])
