"""What a smoke run produced: step outcomes and the file accesses recorded while it ran.

These are plain data so that the keep-list, the report and the diagnosis of a broken
image can use them without knowing how they were recorded (strace, fanotify, or none).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum

NUMBERS = re.compile(r"[0-9]+")
KEPT_CHARS = 64 * 1024  # of a stream's text kept for diffs and regexes (the digest is of all)


class Meaning(StrEnum):
    """What a syscall's use of a path says the image must have.

    READ and EXEC need the file itself; ENTRY needs the entry to exist (stat, access,
    readlink, chdir: not its contents); LIST needs the directory (getdents). CREATE,
    CONNECT and REMOVE name a path the program makes, reaches (a unix socket) or deletes
    at run time: what the image must have is the directory it happens in, with the
    image's owner and mode (a non-root service creating /run/app/sock needs /run/app
    owned by its user). If such a path does exist in the image, the entry itself counts.
    """

    READ = "read"
    EXEC = "exec"
    ENTRY = "entry"
    LIST = "list"
    CREATE = "create"
    CONNECT = "connect"
    REMOVE = "remove"

    @property
    def in_parent(self) -> bool:
        """True when the path is made or removed at run time: its directory is the need."""
        return self in (Meaning.CREATE, Meaning.CONNECT, Meaning.REMOVE)


_EXEC_SYSCALLS = frozenset({"execve", "execveat", "fanotify:exec"})


@dataclass(frozen=True)
class Access:
    """One recorded use of a path: which path, how, by whom, during which step, meaning what.

    `path` is the absolute, lexically normalized in-container path as the program named it
    (relative paths resolved against the process's cwd or dirfd); fanotify gives resolved
    paths only. Failed lookups (`ok=False`) are kept because they are what the diagnosis of
    a minimized image that misses a file needs. `meaning` is a read unless the recorder
    knows more; an exec syscall (execve, execveat, a fanotify exec event) is always EXEC.
    """

    path: str
    syscall: str
    ok: bool
    errno: str | None
    pid: int
    program: str
    cmdline: tuple[str, ...]
    step: str
    meaning: Meaning = Meaning.READ

    def __post_init__(self) -> None:
        meaning = Meaning.EXEC if self.syscall in _EXEC_SYSCALLS else Meaning(self.meaning)
        object.__setattr__(self, "meaning", meaning)

    @property
    def key(self) -> tuple[str, str, bool, str | None, str, str, str]:
        """Deduplication key: the same use by the same program in the same step is one."""
        return (self.path, self.syscall, self.ok, self.errno, self.program, self.step,
                str(self.meaning))


@dataclass(frozen=True)
class Captured:
    """One stream a check printed (stdout, stderr, an http body), as far as comparing two
    runs of it needs: the sha256 of everything the runner kept of it, the sha256 with
    every run of digits set aside (counters, times and pids differ between runs of one
    image), and its beginning as text (for a diff and a regex). Kept for passed steps too:
    an image that exits alike but prints something else is broken silently."""

    text: str  # the first KEPT_CHARS characters, as the step's regexes see it
    chars: int  # characters in all
    digest: str
    masked: str  # the digest with digit runs set aside

    @classmethod
    def of(cls, text: str) -> Captured:
        raw = text.encode("utf-8", "surrogatepass")
        masked = NUMBERS.sub("0", text).encode("utf-8", "surrogatepass")
        return cls(text[:KEPT_CHARS], len(text), hashlib.sha256(raw).hexdigest(),
                   hashlib.sha256(masked).hexdigest())

    @property
    def cut(self) -> bool:
        return self.chars > len(self.text)


@dataclass
class StepOutcome:
    """How one step (ready, job run, or a smoke step) went; `output` only on failure,
    `streams` whenever the step ran to completion (exec, command, the job, an http body)."""

    label: str
    kind: str
    passed: bool
    seconds: float
    exit_code: int | None = None
    message: str = ""
    output: str = ""  # on failure: the tail of its output, the body, or the bytes received
    logs: str = ""  # on failure of a service's step: the main container's last log lines
    streams: dict[str, Captured] = field(default_factory=dict)  # "stdout", "stderr", "body"


@dataclass
class SmokeResult:
    """Everything `run_smoke` learned: pass/fail, per-step outcomes and the recorded accesses."""

    passed: bool
    steps: list[StepOutcome] = field(default_factory=list)
    accesses: list[Access] = field(default_factory=list)
    execs: list[str] = field(default_factory=list)
    recorders: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: str | None = None
    notes: list[str] = field(default_factory=list)  # why a recorder did not run, overflows
    # the app behaved differently under strace: the evidence is fanotify's alone (opens
    # and execs, no failed lookups, no stat/readlink/listing)
    fanotify_only: bool = False
    foreign_events: int = 0  # fanotify events of processes outside the container, dropped

    @property
    def failed_step(self) -> StepOutcome | None:
        return next((s for s in self.steps if not s.passed), None)

    def evidence(self) -> str:
        """The failed step's evidence as text for an operator (empty when none): its output
        (tail of stdout/stderr, the http body, the bytes a tcp step received) and the main
        container's last log lines. Everything here is already bounded."""
        step = self.failed_step
        if step is None:
            return ""
        parts = []
        if step.output.strip():
            parts.append(f"output of {step.label}:\n" + _indent(step.output))
        if step.logs.strip() and step.logs.strip() != step.output.strip():
            parts.append("the container's last log lines:\n" + _indent(step.logs))
        return "\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.rstrip("\n").splitlines())


def dedupe(accesses: list[Access]) -> list[Access]:
    """Keep the first access of each key, in order, so the earliest pid/cmdline is reported."""
    seen: set[tuple[str, str, bool, str | None, str, str, str]] = set()
    out: list[Access] = []
    for a in accesses:
        if a.key not in seen:
            seen.add(a.key)
            out.append(a)
    return out
