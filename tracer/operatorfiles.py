"""Files the operator hands tracer: opened without blocking, checked, read within a budget.

Profiles, stdin files, reports, keep-lists, path indexes and the files a batch keeps
under --out are named by the operator, whom tracer trusts; but a name is not always what
it seems. A stray FIFO called `x.yaml` in a profile directory blocked `tracer batch`,
`minimize` and `diagnose` forever in open(); a keep-list linked to /dev/zero grew
`tracer why` to 23.6 GB before the kernel killed it. So every such file is opened here,
the one way:

- with O_NONBLOCK, so opening a FIFO returns at once (O_NOFOLLOW too where no link is
  expected: files tracer itself wrote under --out);
- checked with fstat on the open descriptor to be a regular file (a check by name and a
  later open could see two different files), the refusal saying what it is instead
  ("the keep-list is a character device, not a regular file");
- read to at most a budget's bytes, refused by the size fstat gives and again by what
  the read returns (a file that grows while read is cut at the budget + 1 byte).

Every refusal is bad input (exit 2) naming the file and what it was supposed to be.
Image inputs (archives, OCI layouts) are opened through tracer.image.inputfiles, which
uses the same descriptor check.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from tracer.budgets import BudgetExceeded
from tracer.errors import BadInput

_CHUNK = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def _at(label: str, text: str) -> str:
    """`label: text`, or the bare text when the caller names the file itself (label "")."""
    return f"{label}: {text}" if label else text


def kind_of(mode: int) -> str:
    """What a file of `mode` is, in words: `a FIFO`, `a character device`, ..."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def check_regular(fd: int, what: str, label: str,
                  error: type[Exception] = BadInput) -> os.stat_result:
    """fstat of `fd`, which must be a regular file; else it is closed and `error` raised.

    The descriptor is switched back to blocking reads (O_NONBLOCK only served the open).
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(_at(label, f"the {what} is {kind_of(st.st_mode)}, not a regular file"))
    os.set_blocking(fd, True)
    return st


def open_regular(path: Path | str, what: str, *, follow: bool = True, label: str | None = None,
                 error: type[Exception] = BadInput) -> int:
    """A descriptor of the regular file `path` (`what` it is: "profile file", "keep-list").

    `follow=False` refuses a symbolic link; `label` names the file in messages (default
    its path; "" when the caller's message names it).
    """
    label = str(path) if label is None else label
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(_at(label, f"no such {what}")) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise error(_at(label, f"the {what} is a symbolic link, which tracer does not "
                                   "follow here")) from None
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing
            raise error(_at(label, f"the {what} is a socket, not a regular file")) from None
        raise error(_at(label, f"cannot open the {what}: {exc.strerror or exc}")) from None
    check_regular(fd, what, label, error)
    return fd


def read_fd(fd: int, limit: int, budget: str, label: str) -> bytes:
    """At most `limit` bytes of the regular file open as `fd` (closed after): refused over
    `budget` by its size, or by what the read returns when it grows meanwhile."""
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise BudgetExceeded(budget, limit, _at(label, f"{size:,} bytes"))
        chunks: list[bytes] = []
        got = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
            if got > limit:
                raise BudgetExceeded(budget, limit, _at(label, f"more than {limit:,} bytes"))
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_regular(path: Path | str, what: str, *, limit: int, budget: str,
                 follow: bool = True, label: str | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `limit` (the budget `budget`).

    BadInput (exit 2) when it is missing, not a regular file (saying what it is) or
    unreadable; BudgetExceeded (exit 2, naming `budget`) when it is larger.
    """
    label = str(path) if label is None else label
    fd = open_regular(path, what, follow=follow, label=label)
    try:
        return read_fd(fd, limit, budget, label)
    except OSError as exc:
        raise BadInput(_at(label, f"cannot read the {what}: {exc.strerror or exc}")) from None


def parse_json(data: bytes, what: str, label: str) -> object:
    """A JSON document; BadInput naming `label` when it is not UTF-8 JSON or nests deeper
    than the interpreter can follow (a 100,000-deep report crashed `tracer why`)."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{label}: not a readable {what}: not UTF-8 text ({exc.reason})") \
            from None
    except RecursionError:
        raise BadInput(f"{label}: not a readable {what}: nested too deeply") from None
    except ValueError as exc:
        raise BadInput(f"{label}: not a readable {what}: {exc}") from None


def read_json(path: Path | str, what: str, *, limit: int, budget: str,
              follow: bool = True) -> object:
    """read_regular + parse_json: one JSON document from the operator's side."""
    return parse_json(read_regular(path, what, limit=limit, budget=budget, follow=follow),
                      what, str(path))
