"""A recording: which files of an image a running container's processes opened or ran.

`tracer record` writes one while production (a canary, staging) runs; `keep.evidence` and
`--evidence` read any number of them, from any number of hosts, into the keep-list. The
format is documented in docs/recording.md; in short:

    #tracer-recording	1
    #host	web-7
    #span	2025-06-01T10:00:00Z	2025-06-01T10:05:00Z
    #image	sha256:4f1c...	shop/api:2.3
    #container	api-canary	3f2a9c0d1b7e	attached
    /etc/ld.so.cache	open	/usr/bin/python3.11
    /usr/bin/python3.11	exec,mapped	/usr/bin/python3.11

Header lines first (`#KEY<TAB>VALUE...`), then one line per path: the path, the kinds of
use (`exec`, `open`, `mapped`), then the programs that used it. Made to be kept in git
next to the profile and compared with `diff`: lines sorted, the only clock the recorded
span, no pids or counters that change from one recording of the same workload to the
next. Names are escaped the way the keep-list escapes them (tracer.explain.runfiles), so a
hostile file name is always exactly one line and one field.

A recording is input like an image: `read_recording` refuses what is not a regular file
(a FIFO would block, a device never end) and bounds its size (`recording_bytes`), its
lines, its paths (`entries`, `path_length`) before anything is kept from it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tracer.budgets import DEFAULT, Budgets, human
from tracer.errors import BadInput
from tracer.explain.runfiles import escape, unescape
from tracer.operatorfiles import open_regular

MAGIC = "#tracer-recording"
VERSION = 1
KINDS = ("exec", "mapped", "open")  # ran it; had it mapped when recording began; opened it
SEEN = ("start", "attached", "late")  # how much of a container's life was recorded
MAX_PROGRAMS = 8  # programs named per path; more are counted (`+N`)
UNKNOWN = "-"  # a program that was gone before it could be named
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_HEX = re.compile(r"[0-9a-f]{12,64}")


@dataclass(frozen=True)
class PathUse:
    """How one path was used: kinds of use and the programs (in-container executables,
    sorted, at most MAX_PROGRAMS; `more` counts the rest; "" is a program unknown)."""

    kinds: frozenset[str]
    programs: tuple[str, ...] = ()
    more: int = 0


@dataclass(frozen=True, order=True)
class RecordedContainer:
    """One container the recording covers. `seen`: `start` (marked before its first
    process ran), `attached` (running when recording began: what it had mapped then is
    included), `late` (marked after it started: its first moments may be missing)."""

    name: str
    id: str
    seen: str


@dataclass
class Recording:
    """A whole recording; `paths` maps each path (the real name) to its use."""

    host: str
    start: int  # the recorded span, seconds since the epoch (UTC)
    end: int
    image_id: str = ""
    image: str = ""
    containers: list[RecordedContainer] = field(default_factory=list)
    paths: dict[str, PathUse] = field(default_factory=dict)
    dropped: int = 0  # distinct uses past the recorder's budgets: not recorded
    source: Path | None = None  # the file it was read from, for messages and reasons

    @property
    def date(self) -> str:
        """The day recording began (UTC), as reasons name it."""
        return datetime.fromtimestamp(self.start, UTC).strftime("%Y-%m-%d")

    def where(self) -> str:
        """`api-canary on web-7`, `3 containers of shop/api:2.3 on web-7`."""
        names = sorted(c.name or c.id[:12] for c in self.containers)
        if len(names) == 1:
            who = names[0]
        elif names:
            of = f" of {self.image}" if self.image else ""
            who = f"{len(names)} containers{of} ({', '.join(names[:3])}" + \
                (", ...)" if len(names) > 3 else ")")
        else:
            who = f"containers of {self.image}" if self.image else "no container"
        return f"{who} on {self.host}"


def timestamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(_TIME)


# -- writing --------------------------------------------------------------------------------

def lines(rec: Recording) -> Iterator[str]:
    """The recording's lines, in file order (without newlines)."""
    yield f"{MAGIC}\t{VERSION}"
    yield f"#host\t{escape(rec.host)}"
    yield f"#span\t{timestamp(rec.start)}\t{timestamp(rec.end)}"
    if rec.image_id or rec.image:
        yield f"#image\t{escape(rec.image_id) or UNKNOWN}\t{escape(rec.image) or UNKNOWN}"
    for c in sorted(rec.containers):
        yield f"#container\t{escape(c.name) or UNKNOWN}\t{escape(c.id)}\t{c.seen}"
    if rec.dropped:
        yield f"#dropped\t{rec.dropped}"
    body = []
    for path, use in rec.paths.items():
        programs = [escape(p) if p else UNKNOWN for p in sorted(set(use.programs))] or \
            [UNKNOWN]
        if use.more:
            programs.append(f"+{use.more}")
        body.append("\t".join([escape(path), ",".join(sorted(use.kinds)), *programs]))
    yield from sorted(body)


def write_recording(rec: Recording, path: Path) -> None:
    """Write atomically: whoever reads `path` sees the old file or the whole new one, never
    half of one (the recorder is often stopped with Ctrl-C or SIGTERM)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            for line in lines(rec):
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# -- reading --------------------------------------------------------------------------------

def max_line(budgets: Budgets) -> int:
    """The longest line a valid recording can have: a path and MAX_PROGRAMS programs of
    `path_length` bytes each, every byte escaped (4 characters), plus separators."""
    return (MAX_PROGRAMS + 1) * (4 * budgets.path_length + 1) + 64


def read_recording(path: Path, budgets: Budgets = DEFAULT) -> Recording:
    """Read and validate one recording; BadInput naming the file and line otherwise."""
    fd = open_regular(path, "recording (a file written by `tracer record`)")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if st.st_size > budgets.recording_bytes:
            raise BadInput(f"{path}: {st.st_size:,} bytes, over the recording_bytes budget "
                           f"of {human(budgets.recording_bytes)}; raise it with --budget "
                           "recording_bytes=N if the file is trusted")
        return parse_recording(_bounded_lines(f, path, budgets), path, budgets)


def _bounded_lines(f: object, path: Path, budgets: Budgets) -> Iterator[str]:
    limit, total = max_line(budgets), 0
    number = 0
    while True:
        raw = f.readline(limit + 2)  # type: ignore[attr-defined]
        if not raw:
            return
        number += 1
        total += len(raw)
        if total > budgets.recording_bytes:  # grew while being read
            raise BadInput(f"{path}: over the recording_bytes budget of "
                           f"{human(budgets.recording_bytes)}")
        if len(raw) > limit + 1 or (len(raw) > limit and not raw.endswith(b"\n")):
            raise BadInput(f"{path}:{number}: a line longer than {limit:,} bytes; not a "
                           "recording (or one made with a larger path_length budget)")
        try:
            yield raw.decode("utf-8").removesuffix("\n")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{path}:{number}: not UTF-8 text ({exc.reason}); a recording "
                           "escapes every name") from None


def parse_recording(text_lines: Iterable[str], path: Path | str = "<recording>",
                    budgets: Budgets = DEFAULT) -> Recording:
    """A recording from its lines (without newlines); BadInput on the first problem."""
    it = iter(text_lines)
    first = next(it, None)
    if first is None or not first.startswith(MAGIC + "\t"):
        raise BadInput(f"{path}:1: not a tracer recording (expected {MAGIC!r}, a tab and the "
                       "format version on the first line)")
    version = first.split("\t", 1)[1]
    if version != str(VERSION):
        raise BadInput(f"{path}:1: recording format version {version!r}; this tracer reads "
                       f"version {VERSION} (a newer tracer wrote it?)")
    parser = _Parser(str(path), budgets)
    for number, line in enumerate(it, 2):
        try:
            parser.line(line)
        except ValueError as exc:
            raise BadInput(f"{path}:{number}: {exc}") from None
    return parser.result(Path(path) if isinstance(path, Path) else None)


class _Parser:
    def __init__(self, where: str, budgets: Budgets) -> None:
        self.where, self.budgets = where, budgets
        self.header: dict[str, list[str]] = {}
        self.containers: list[RecordedContainer] = []
        self.paths: dict[str, PathUse] = {}
        self.in_body = False

    def line(self, line: str) -> None:
        if not line:
            return
        if line.startswith("#"):
            if self.in_body:
                raise ValueError("a header line after the first path; headers come first")
            self._header(line)
        else:
            self.in_body = True
            self._path(line)

    def _header(self, line: str) -> None:
        key, *values = line[1:].split("\t")
        if key == "container":
            if len(values) != 3 or values[2] not in SEEN:
                raise ValueError("expected #container<TAB>NAME<TAB>ID<TAB>" + "|".join(SEEN))
            name = "" if values[0] == UNKNOWN else unescape(values[0])
            ident = unescape(values[1])
            if name and not _CONTAINER_NAME.fullmatch(name) or not _HEX.fullmatch(ident):
                raise ValueError("a container name or id that no engine gives")
            if len(self.containers) >= self.budgets.entries:
                raise ValueError(f"more than {self.budgets.entries:,} containers (the entries "
                                 "budget)")
            self.containers.append(RecordedContainer(name, ident, values[2]))
        elif key in ("host", "span", "image", "dropped"):
            if key in self.header:
                raise ValueError(f"#{key} given twice")
            self.header[key] = [unescape(v) for v in values]
        # any other key: added by a later minor version of the format, ignored

    def _path(self, line: str) -> None:
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError("expected PATH<TAB>KINDS<TAB>PROGRAM[<TAB>PROGRAM...]")
        name = self._name(fields[0], "path")
        kinds = frozenset(fields[1].split(","))
        if not kinds or not kinds <= set(KINDS):
            raise ValueError(f"kinds {fields[1]!r}: expected a comma-separated subset of "
                             f"{', '.join(KINDS)}")
        programs, more = [], 0
        for word in fields[2:]:
            if word.startswith("+") and word[1:].isdigit():
                more = int(word[1:])
            elif word == UNKNOWN:
                programs.append("")
            else:
                programs.append(self._name(word, "program"))
        if len(programs) > MAX_PROGRAMS:
            raise ValueError(f"more than {MAX_PROGRAMS} programs on one line")
        if name in self.paths:  # a hand-merged file: the uses add up
            old = self.paths[name]
            kinds |= old.kinds
            programs = sorted(set(programs) | set(old.programs))[:MAX_PROGRAMS]
            more += old.more
        elif len(self.paths) >= self.budgets.entries:
            raise ValueError(f"more than {self.budgets.entries:,} paths (the entries budget); "
                             "raise it with --budget entries=N if the file is trusted")
        self.paths[name] = PathUse(kinds, tuple(programs), more)

    def _name(self, text: str, what: str) -> str:
        try:
            name = unescape(text)
        except ValueError as exc:
            raise ValueError(f"{what} {text!r}: {exc}") from None
        if not name.startswith("/") or "\0" in name or posixpath.normpath(name) != name \
                and name != "/":
            raise ValueError(f"{what} {text!r}: expected an absolute, normalized path")
        if len(os.fsencode(name)) > self.budgets.path_length:
            raise ValueError(f"{what} longer than the path_length budget of "
                             f"{self.budgets.path_length:,} bytes")
        return name

    def result(self, source: Path | None) -> Recording:
        for key in ("host", "span"):
            if key not in self.header:
                raise BadInput(f"{self.where}: no #{key} line; a recording says where and "
                               "when it was made")
        span = self.header["span"]
        try:
            start, end = (int(datetime.strptime(t, _TIME).replace(tzinfo=UTC).timestamp())
                          for t in span)
        except ValueError:
            raise BadInput(f"{self.where}: #span: expected two UTC times like "
                           "2025-06-01T10:00:00Z") from None
        image = self.header.get("image", ["", ""]) + ["", ""]
        dropped = self.header.get("dropped", ["0"])[0]
        if not dropped.isdigit():
            raise BadInput(f"{self.where}: #dropped: expected a number, got {dropped!r}")
        host = self.header["host"][0] if self.header["host"] else ""
        return Recording(host=host, start=start, end=end,
                         image_id="" if image[0] == UNKNOWN else image[0],
                         image="" if image[1] == UNKNOWN else image[1],
                         containers=self.containers, paths=self.paths, dropped=int(dropped),
                         source=source)
