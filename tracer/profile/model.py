"""The profile as data: what docs/profile.md (version 1) describes, already validated.

These dataclasses are the only thing the rest of the pipeline sees of a profile; the
YAML parsing and validation live in `tracer.profile.sections` so that runners and the
keep-list never have to think about line numbers or missing keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Ready:
    """Service mode: when the application counts as up (all given conditions must hold)."""

    log: str | None = None  # regex searched in the container's stdout+stderr
    tcp: int | None = None  # port that must accept a connection on 127.0.0.1
    timeout: float = 30.0  # seconds


@dataclass(frozen=True)
class Limits:
    """Resources every container of a run may use (None: the default, see
    tracer.trace.limits): an image under test may fork or allocate without end."""

    pids: int | None = None  # processes and threads at once
    memory: int | None = None  # bytes (no swap beyond)
    cpus: float | None = None  # CPUs' worth of time


@dataclass(frozen=True)
class RunSpec:
    """How the container is started, for the traced run and for verification alike."""

    entrypoint: list[str] | None = None  # None: the image's Entrypoint
    cmd: list[str] | None = None  # None: the image's Cmd
    env: dict[str, str] = field(default_factory=dict)  # merged over the image's Env
    user: str | None = None
    workdir: str | None = None
    network: str = "none"  # none | host
    tmpfs: list[str] = field(default_factory=list)
    mode: str = "service"  # service | job
    ready: Ready = field(default_factory=Ready)
    exit: int = 0  # job mode: expected exit code
    stdout: str | None = None  # job mode: regex the job's stdout must match (extension)
    stderr: str | None = None  # job mode: regex the job's stderr must match (extension)
    timeout: float = 300.0  # hard limit for the whole run, seconds
    # bytes fed to the main process (`stdin` as UTF-8, or stdin_file's bytes, read at load);
    # None: stdin is empty and closed
    stdin: bytes | None = None
    limits: Limits = field(default_factory=Limits)  # of every container, traced or not


@dataclass(frozen=True)
class HttpStep:
    url: str
    status: int | None = 200
    body: str | None = None  # regex searched in the response body
    timeout: float = 30.0  # one deadline for the whole request: connect, headers, body
    max_body: int | None = None  # bytes of body read at most (None: budgets.http_body)
    # response header name (as written; matched case-insensitively) -> regex searched in
    # its value; a header sent several times passes when any one of its values matches
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TcpStep:
    port: int
    send: str | None = None
    expect: str | None = None  # regex searched in what the server answers
    host: str = "127.0.0.1"
    timeout: float = 30.0


@dataclass(frozen=True)
class ArgvStep:
    """A program run with expected exit code and output regexes (exec and command)."""

    argv: list[str]
    exit: int = 0
    stdout: str | None = None
    stderr: str | None = None
    timeout: float = 60.0
    stdin: bytes | None = None  # fed to the program as is; None: stdin is empty and closed


@dataclass(frozen=True)
class ExecStep(ArgvStep):
    """A command inside the running container (docker exec semantics)."""


@dataclass(frozen=True)
class CommandStep(ArgvStep):
    """A fresh one-shot container from the image running argv (entrypoint replaced)."""


@dataclass(frozen=True)
class SleepStep:
    seconds: float


Step = HttpStep | TcpStep | ExecStep | CommandStep | SleepStep


@dataclass(frozen=True)
class SmokeStep:
    """One smoke step with its position, so reports can say `smoke[2].exec`."""

    index: int
    step: Step

    @property
    def kind(self) -> str:
        return {
            HttpStep: "http",
            TcpStep: "tcp",
            ExecStep: "exec",
            CommandStep: "command",
            SleepStep: "sleep",
        }[type(self.step)]

    @property
    def label(self) -> str:
        return f"smoke[{self.index}].{self.kind}"


@dataclass(frozen=True)
class KeepSpec:
    paths: list[str] = field(default_factory=list)  # globs: * within a name, ** across dirs
    binaries: list[str] = field(default_factory=list)  # absolute paths/globs, or names on PATH
    packages: list[str] = field(default_factory=list)
    granularity: str = "file"  # file | package | deps: the safety dial (docs/profile.md)
    # recordings made by `tracer record` (paths as given, joined to the profile's directory)
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Profile:
    name: str
    image: str
    output: str | None = None
    run: RunSpec = field(default_factory=RunSpec)
    smoke: list[SmokeStep] = field(default_factory=list)
    keep: KeepSpec = field(default_factory=KeepSpec)
    exclude: list[str] = field(default_factory=list)
    version: int = 1
    source: Path | None = None  # the YAML file it came from, for messages
    budgets: dict[str, int] = field(default_factory=dict)  # raised budgets (tracer.budgets)
