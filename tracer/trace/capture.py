"""Bounded capture of what a container or a step prints: the tail, never more than a cap.

An application under test may print without end (1 GB of stdout) and everything it prints
is hostile input. Output is therefore consumed as a stream and only the last `cap` bytes
are held: the end of the output is what explains a failure (the error message comes last),
and memory stays bounded whatever the application does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TOOL_PREFIX = "/.tracer/"  # strace's own messages start with its path in the bundle
# strace's words (`exec: REASON`, `Can't stat 'PROGRAM': REASON`) and env's (`'PROGRAM':
# REASON`): the bundle's env starts the app
_EXEC_FAILED = re.compile(r"^/\.tracer/\S+: (?:exec: |Can't stat '.*': |'.*': )(.*)$")


class TailBuffer:
    """The last `cap` bytes written, and how many bytes were written in all."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("a capture needs room for at least one byte")
        self.cap = cap
        self.total = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if len(data) >= self.cap:
            self._buf[:] = data[-self.cap :]
            return
        self._buf += data
        over = len(self._buf) - self.cap
        if over > 0:
            del self._buf[:over]

    def feed(self, chunks: Iterable[bytes | None]) -> TailBuffer:
        """Consume a stream of chunks (a docker log or exec stream); returns self."""
        for chunk in chunks:
            if chunk:
                self.write(chunk)
        return self

    @property
    def cut(self) -> int:
        """Bytes dropped from the front."""
        return self.total - len(self._buf)

    def bytes(self) -> bytes:
        return bytes(self._buf)

    def text(self) -> str:
        """The tail as text; a cut is said on the first line, so nobody mistakes it for all."""
        data = self._buf
        if self.cut:
            nl = data.find(b"\n")
            data = data[nl + 1 :] if 0 <= nl < len(data) - 1 else data  # no half line
            head = f"... ({self.total - len(data)} earlier bytes not kept)\n"
            return head + data.decode("utf-8", "replace")
        return data.decode("utf-8", "replace")


def without_tool_lines(text: str) -> str:
    """Output with strace's own messages (`/.tracer/strace: ...`) removed.

    They are tracer's noise, not the application's output: a step's regex must not match
    them and a failure report must not show them as the app's words.
    """
    if TOOL_PREFIX not in text:
        return text
    kept = [ln for ln in text.splitlines(keepends=True) if not ln.startswith(TOOL_PREFIX)]
    return "".join(kept)


def exec_failure(raw: str) -> str | None:
    """Why the bundle could not start the program (`/.tracer/strace: exec: REASON`,
    `Can't stat 'PROGRAM': REASON`, `/.tracer/env: 'PROGRAM': REASON`), if it said so: the
    app's failure (a missing entrypoint), told in words, not in the bundle's."""
    for line in raw.splitlines():
        m = _EXEC_FAILED.match(line)
        if m:
            return m.group(1).strip()
    return None


SHOWN_CHARS = 4000  # a failure shows this much of any output, however long its lines


def last_lines(text: str, n: int = 20, max_chars: int = SHOWN_CHARS) -> str:
    """The last `n` lines (at most `max_chars`), saying how much came before: failures are
    explained at the end of an output."""
    lines = text.rstrip("\n").splitlines()
    shown = "\n".join(lines[-n:])
    if len(shown) > max_chars:
        shown = shown[-max_chars:]
    cut = len("\n".join(lines)) - len(shown)
    return (f"... ({cut} earlier characters)\n" if cut > 0 else "") + shown
