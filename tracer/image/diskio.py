"""Writing files on a disk that may be full: one meaning (exit 4) and no second error.

A full disk is the machine's problem, never a malformed image and never a crash: an
ENOSPC or EDQUOT inside `disk_full()` becomes `errors.no_space(directory, needed)`. And a
temp file's cleanup after a failure must never raise its own error over the first one:
closing a buffered file flushes it, which on a full disk fails again; `new_file()`
closes and removes quietly when something already went wrong.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tracer.errors import no_space

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full(directory: Path | str, needed: int | None = None) -> Iterator[None]:
    """Map a full disk inside the block to EnvironmentProblem naming `directory`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space(directory, needed) from None
        raise


@contextmanager
def new_file(path: Path) -> Iterator[BinaryIO]:
    """A new file (never an existing one) opened for writing; on any error inside the block
    it is closed and removed without raising, and the first error propagates."""
    f = open(path, "xb")  # noqa: SIM115 - closed below on every path
    try:
        yield f
        f.close()  # the final flush: its ENOSPC is the error to report
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
