"""What a smoke run produced: step outcomes and the file accesses recorded while it ran.

These are plain data so that the keep-list, the report and the diagnosis of a broken
image can use them without knowing how they were recorded (strace, fanotify, or none).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Access:
    """One recorded file access: which path, how, by whom and during which step.

    `path` is the absolute, lexically normalized in-container path as the program named it
    (relative paths resolved against the process's cwd or dirfd); fanotify gives resolved
    paths only. Failed lookups (`ok=False`) are kept because they are what the diagnosis of
    a minimized image that misses a file needs.
    """

    path: str
    syscall: str
    ok: bool
    errno: str | None
    pid: int
    program: str
    cmdline: tuple[str, ...]
    step: str

    @property
    def key(self) -> tuple[str, str, bool, str | None, str, str]:
        """Deduplication key: the same access by the same program in the same step is one."""
        return (self.path, self.syscall, self.ok, self.errno, self.program, self.step)


@dataclass
class StepOutcome:
    """How one step (ready, job run, or a smoke step) went; `output` only on failure."""

    label: str
    kind: str
    passed: bool
    seconds: float
    exit_code: int | None = None
    message: str = ""
    output: str = ""


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

    @property
    def used_paths(self) -> set[str]:
        """Paths successfully accessed, the input the keep-list wants."""
        return {a.path for a in self.accesses if a.ok}

    @property
    def failed_lookups(self) -> list[Access]:
        """Accesses that failed (ENOENT, EACCES, ...), the input a diagnosis wants."""
        return [a for a in self.accesses if not a.ok]


def dedupe(accesses: list[Access]) -> list[Access]:
    """Keep the first access of each key, in order, so the earliest pid/cmdline is reported."""
    seen: set[tuple[str, str, bool, str | None, str, str]] = set()
    out: list[Access] = []
    for a in accesses:
        if a.key not in seen:
            seen.add(a.key)
            out.append(a)
    return out
