"""Progress lines for long phases: live on a terminal, quiet in logs.

A nightly job's log should hold one line per phase, not thousands of carriage-return
updates; an operator at a terminal wants to see that something is moving. One object
serves both, chosen by whether stderr is a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Phase start/end lines always; intermediate updates only on a terminal."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() and not quiet
        self.quiet = quiet
        self._phase = ""
        self._started = 0.0
        self._dirty = False

    def phase(self, name: str) -> None:
        self._clear()
        self._phase = name
        self._started = time.monotonic()
        if not self.quiet:
            print(f"tracer: {name} ...", file=self.stream, flush=True)

    def __call__(self, message: str) -> None:
        """An update inside the current phase (shown only on a terminal)."""
        if self.live:
            text = f"  {message}"[:120]
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._dirty = True

    def note(self, message: str) -> None:
        """A line of its own outside any phase (something that happened alongside)."""
        self._clear()
        if not self.quiet:
            print(f"tracer: {message}", file=self.stream, flush=True)

    def done(self, summary: str = "") -> None:
        self._clear()
        if not self.quiet:
            took = time.monotonic() - self._started
            extra = f": {summary}" if summary else ""
            print(f"tracer: {self._phase} done in {took:.1f}s{extra}", file=self.stream,
                  flush=True)

    def _clear(self) -> None:
        if self._dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._dirty = False
