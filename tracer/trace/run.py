"""run_smoke: start the image as the profile says, run every smoke step, record what it used.

This module only orchestrates, in named stages that each return a typed value:
`_prepare` (bundle, trace channels, the user the app runs as) -> `_start_main` (create,
start, fanotify mark, release the app) -> `_first_step` (job run or ready) ->
`_smoke_steps` -> `_stop` -> `_evidence` (parse the traces, merge fanotify). The engine
side is `docker_runner`, the steps are `steps`, trace data crosses through `channels`; the
`finally` removes every container on success, failure and Ctrl-C.

Three ways to run (`Mode`): untraced (verification), strace (+ fanotify where the host
allows it), and fanotify alone (an app that behaves differently under ptrace; see
`original.trace_original`).
"""

from __future__ import annotations

import bisect
import enum
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracer.budgets import Budgets, human
from tracer.errors import EnvironmentProblem
from tracer.image.config import ImageConfig
from tracer.profile.load import budgets_of
from tracer.profile.model import CommandStep, ExecStep, Profile
from tracer.trace import fanotify, limits
from tracer.trace.bundle import (
    BUNDLE_MOUNT,
    OUTPUT_MOUNT,
    StraceBundle,
    build_bundle,
    recorder_env,
)
from tracer.trace.channels import Gate, TraceChannels
from tracer.trace.docker_runner import (
    ContainerSpec,
    DockerRunner,
    StartFailed,
    connect,
    effective_argv,
    image_config,
)
from tracer.trace.limits import ContainerLimits
from tracer.trace.parser import MAX_LINE, excluder, parse_trace
from tracer.trace.proc_state import StateBudget
from tracer.trace.result import Access, Meaning, SmokeResult, StepOutcome, dedupe
from tracer.trace.steps import (
    StepContext,
    check_output,
    explain_exec_failure,
    run_step,
    step_stem,
    wait_ready,
)
from tracer.trace.users import RunAs, plan
from tracer.workdir import owner_labels

ALWAYS_EXCLUDED = (BUNDLE_MOUNT, OUTPUT_MOUNT, "/proc", "/sys", "/dev")
STOP_LABEL = "stop"
RUN_LABEL = "org.tracer.smoke"  # on every container a smoke run creates (value: profile name)
MAIN = "main"  # the main process's trace stream
OUTPUT_GRACE = 10.0  # seconds past the run's timeout by which reading its output ends


class Mode(enum.Enum):
    UNTRACED = "untraced"
    STRACE = "strace"  # strace, plus fanotify where the host allows it
    FANOTIFY = "fanotify"  # fanotify alone: no ptrace at all


class Timeline:
    """Which step label was active at a given wall-clock time (strace's -ttt stamps)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.labels: list[str] = []

    def mark(self, label: str) -> None:
        self.starts.append(time.time())
        self.labels.append(label)

    def step_of(self, ts: float | None) -> str:
        if ts is None or not self.starts:
            return self.labels[-1] if self.labels else "run"
        i = bisect.bisect_right(self.starts, ts) - 1
        return self.labels[max(i, 0)]


def _strace_error(logs: str) -> str | None:
    """strace's own complaint about tracing itself (ptrace or seccomp refused), if any.

    `strace: exec: No such file or directory` is not one: that is the application's
    entrypoint missing, a failure of the image under test.
    """
    for line in logs.splitlines():
        if not line.startswith(f"{BUNDLE_MOUNT}/strace:") or ": exec:" in line:
            continue
        if any(w in line for w in ("ptrace", "PTRACE", "seccomp", "Operation not permitted")):
            return line
    return None


def run_smoke(
    profile: Profile,
    image: str,
    *,
    traced: bool,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
    budgets: Budgets | None = None,
    privileged_programs: bool | None = None,
) -> SmokeResult:
    """Run the profile's smoke test against `image` (a reference the engine knows).

    `privileged_programs=False` says the image has no setuid/setgid or file-capability
    programs (the caller read its index): a non-root app is then traced with strace's
    cheap seccomp filter, which would otherwise cancel their privilege.

    Never raises on a failing step (passed=False, `failure` says which and why); raises
    EnvironmentProblem (no engine, no strace, no permission, a container removed by
    someone else) and BadInput (image not in the engine). Every container created is
    removed before returning, and so is the scratch directory made under `workdir`
    (bundle, FIFOs, trace copies), Ctrl-C included.
    """
    mode = Mode.STRACE if traced else Mode.UNTRACED
    return run_in_mode(profile, image, mode, workdir=workdir, progress=progress,
                       budgets=budgets, privileged_programs=privileged_programs)


def run_in_mode(
    profile: Profile,
    image: str,
    mode: Mode,
    *,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
    budgets: Budgets | None = None,
    privileged_programs: bool | None = None,
) -> SmokeResult:
    """`run_smoke` with the recording mode chosen explicitly."""
    t0 = time.monotonic()
    client = connect()
    cfg = image_config(client, image)
    argv = effective_argv(profile.run, cfg, image)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="trace-", dir=workdir))
    spent = budgets if budgets is not None else budgets_of(profile)
    run = _Run(profile, image, mode, DockerRunner(client, output_cap=spent.output_bytes),
               spent, progress or (lambda _msg: None), t0,
               privileged_programs=privileged_programs is not False,
               limits=limits.resolve(profile.run.limits, *limits.host_resources(client)))
    try:
        setup = _prepare(scratch, run, cfg, argv)
        return _run_smoke_in(setup, run)
    finally:
        run.close()
        shutil.rmtree(scratch, ignore_errors=True)


# -- the state of one run and what is fixed before it starts -----------------------------


@dataclass
class _Run:
    """What a run accumulates; `close()` removes containers and ends every helper thread."""

    profile: Profile
    image: str
    mode: Mode
    runner: DockerRunner
    budgets: Budgets
    say: Callable[[str], None]
    t0: float
    privileged_programs: bool = True  # the image may have setuid/file-capability programs
    limits: ContainerLimits | None = None  # of every container (tracer.trace.limits)
    timeline: Timeline = field(default_factory=Timeline)
    notes: list[str] = field(default_factory=list)
    fan: fanotify.FanotifyRecorder | None = None
    channels: TraceChannels | None = None
    gates: dict[str, Gate] = field(default_factory=dict)
    watch: Any = None
    labels: dict[str, str] = field(default_factory=lambda: {MAIN: ""})  # stem -> label

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.say(msg)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.runner.cleanup()  # first: dead writers end every pump
        for gate in self.gates.values():
            gate.close()
        if self.channels is not None:
            self.channels.close()
        if self.fan is not None:
            self.fan.stop()


@dataclass(frozen=True)
class _Setup:
    """Everything fixed before the first container starts."""

    argv: list[str]
    cfg: ImageConfig
    bundle: StraceBundle | None
    run_as: RunAs
    fanotify_reason: str | None  # None: fanotify is used
    # the app's environment as the engine gives it untraced: the image's Env with the
    # profile's over it (the bundle gives it back to the app, see `_spec`)
    app_env: dict[str, str] = field(default_factory=dict)

    def binds(self, run: _Run) -> dict[str, tuple[str, bool]]:
        """Read-only mounts: the bundle and the FIFO directory, nothing writable."""
        if self.bundle is None or run.channels is None:
            return {}
        return {BUNDLE_MOUNT: (str(self.bundle.host_dir), True),
                OUTPUT_MOUNT: (str(run.channels.host_dir), True)}


def _stems(profile: Profile) -> list[str]:
    """Every trace stream a run can have: main, and each exec and command step."""
    return [MAIN] + [step_stem(s) for s in profile.smoke
                     if isinstance(s.step, ExecStep | CommandStep)]


def _prepare(scratch: Path, run: _Run, cfg: ImageConfig, argv: list[str]) -> _Setup:
    """Bundle, FIFOs and gates (before any container), the user the app runs as."""
    if run.mode is Mode.UNTRACED:
        return _Setup(argv, cfg, None, RunAs(run.profile.run.user), "not tracing")
    reason = fanotify.available()
    if run.mode is Mode.FANOTIFY and reason is not None:
        raise EnvironmentProblem(f"cannot record with fanotify alone: {reason}")
    bundle = build_bundle(scratch)
    if run.mode is Mode.FANOTIFY:
        if not bundle.has_dash:
            raise EnvironmentProblem("cannot record with fanotify alone: the host has no dash "
                                     "to hold the app until the mark is in place")
        run.channels = TraceChannels(scratch, [], cap=run.budgets.trace_bytes,
                                     mount=OUTPUT_MOUNT)
        run.gates = {stem: Gate(run.channels, f"go-{stem}") for stem in _stems(run.profile)
                     if stem == MAIN or stem.endswith("-command")}
        return _Setup(argv, cfg, bundle, RunAs(run.profile.run.user), None,
                      cfg.environment(run.profile.run.env))
    run_as = _run_as(run, cfg, bundle)
    if run_as.note:
        run.note(run_as.note)
    # strace writes the FIFOs: as root, they are 0600 and a non-root app cannot open them
    root = run_as.drops or _is_root(run_as.container_user or cfg.user or None)
    run.channels = TraceChannels(scratch, _stems(run.profile), cap=run.budgets.trace_bytes,
                                 mount=OUTPUT_MOUNT, writer_mode=0o600 if root else 0o666)
    if reason is not None:
        run.note(f"fanotify not used: {reason}")
    return _Setup(argv, cfg, bundle, run_as, reason, cfg.environment(run.profile.run.env))


def _is_root(user: str | None) -> bool:
    from tracer.trace.users import ROOT_FORMS

    return user is None or user in ROOT_FORMS


def _run_as(run: _Run, cfg: ImageConfig, bundle: StraceBundle) -> RunAs:
    """strace as root, the app as the profile's (else the image's) user."""
    user = run.profile.run.user or cfg.user or None
    if _is_root(user):
        return RunAs(container_user=run.profile.run.user)
    files = _image_files(run, ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf"))
    return plan(user, passwd=files[0], group=files[1], nsswitch=files[2],
                setpriv=bundle.has_setpriv, privileged_programs=run.privileged_programs)


def _image_files(run: _Run, paths: tuple[str, ...], cap: int = 1 << 20) -> list[str | None]:
    """Small text files of the image (regular files only, at most `cap` bytes each), read
    from a created, never started container: the user database the runtime would use.

    The engine sends a path as a tar of everything under it: an image whose
    /etc/nsswitch.conf is a directory of gigabytes must not cost them, so no more of the
    stream is read than a file of `cap` bytes takes."""
    import io
    import tarfile

    import docker

    from tracer.engine import engine_errors

    spec = ContainerSpec(image=run.image, argv=["/"], network="none",
                         labels={RUN_LABEL: run.profile.name, **owner_labels()})
    container = run.runner.create(spec)
    out: list[str | None] = []
    try:
        for path in paths:
            try:
                with engine_errors(f"read {path} of the image"):
                    stream, info = run.runner.client.api.get_archive(container.id, path)
            except docker.errors.NotFound:
                out.append(None)
                continue
            try:
                data = _bounded(stream, cap + 65536)  # the file, its headers, padding
            finally:
                stream.close()
            if data is None or int((info or {}).get("size", 0)) > cap:
                out.append(None)
                continue
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    member = tar.next()
                    f = tar.extractfile(member) if member is not None and member.isreg() \
                        else None
                    out.append(f.read(cap).decode("utf-8", "replace") if f else None)
            except tarfile.TarError:
                out.append(None)
    finally:
        run.runner.remove(container)
    return out


def _bounded(stream: Any, limit: int) -> bytes | None:
    """The bytes of `stream`, or None as soon as there are more than `limit`."""
    chunks, got = [], 0
    for chunk in stream:
        chunks.append(chunk)
        got += len(chunk)
        if got > limit:
            return None
    return b"".join(chunks)


# -- the stages --------------------------------------------------------------------------


def _spec(setup: _Setup, run: _Run, argv: list[str], stdin: bytes | None) -> ContainerSpec:
    """A container of this run. When the bundle starts the app, the container's own
    environment is the app's emptied (`bundle.recorder_env`): the bundle gives it back."""
    r = run.profile.run
    strace = run.mode is Mode.STRACE
    return ContainerSpec(
        image=run.image,
        argv=argv,
        env=recorder_env(setup.app_env) if setup.bundle is not None else dict(r.env),
        user=setup.run_as.container_user if strace else r.user,
        workdir=r.workdir,
        network=r.network,
        tmpfs=list(r.tmpfs),
        tmpfs_bytes=run.budgets.tmpfs_bytes,
        binds=setup.binds(run),
        cap_add=["SYS_PTRACE"] if strace else [],
        labels={RUN_LABEL: run.profile.name, **owner_labels()},
        stdin=stdin,
        limits=run.limits,
        no_new_privileges=limits.no_new_privileges(
            _is_root(r.user or setup.cfg.user or None), run.privileged_programs),
    )


def _wrap(setup: _Setup, run: _Run, argv: list[str], stem: str) -> list[str]:
    """argv as the container runs it: under strace, behind the waiter, or as is."""
    if setup.bundle is None or run.channels is None:
        return argv
    if run.mode is Mode.STRACE:
        return setup.bundle.command(run.channels.container_path(stem), argv, setup.run_as,
                                    setup.app_env)
    if stem in run.gates:
        return setup.bundle.waiter(run.gates[stem].container_path, argv, setup.app_env)
    # an exec step in a fanotify-only run (its container is marked already): the bundle's
    # env only gives it its environment back
    return setup.bundle.restore(setup.app_env, argv)


def _release(setup: _Setup, run: _Run, stem: str, container: Any) -> None:
    """A process of stream `stem` exists and is held: mark its container for fanotify if
    it is a new one, then let it go (open its FIFO, or open its gate)."""
    new_container = stem == MAIN or (run.fan is not None and stem.endswith("-command"))
    if setup.fanotify_reason is None and new_container:
        _mark(run, container)
    if run.mode is Mode.STRACE and run.channels is not None:
        run.channels.open(stem)
    elif stem in run.gates:
        gate = run.gates[stem]
        gate.release()
        if gate.stuck:
            run.note(f"something in the container kept the gate of {run.labels.get(stem) or stem}"
                     " full (only a process running as root there can): it was not started")


def _mark(run: _Run, container: Any) -> None:
    """Add the container's root mount to fanotify (starting the recorder on first use)."""
    try:
        pid = _container_pid(run, container)
        if run.fan is None:
            fan = fanotify.FanotifyRecorder(epoch=lambda: len(run.timeline.starts),
                                            max_events=run.budgets.entries,
                                            max_bytes=run.budgets.trace_bytes)
            fan.start(pid)
            run.fan = fan
        else:
            run.fan.add(pid)
    except OSError as exc:
        if run.mode is Mode.FANOTIFY:
            raise EnvironmentProblem(f"cannot record with fanotify alone: {exc}") from exc
        run.note(f"fanotify not used: {exc}")


def _container_pid(run: _Run, container: Any) -> int:
    """The container's first process as this host sees it; OSError unless it provably is
    that container's (a remote engine's pid would name some unrelated local process)."""
    run.runner.status(container)
    pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            mine = container.id in f.read(1 << 16)
    except OSError:
        mine = False
    if not pid or not mine:
        raise OSError(f"the container's processes are not visible from here (pid {pid}; "
                      "a remote engine?)")
    return pid


def _start_main(setup: _Setup, run: _Run) -> Any | StepOutcome:
    """Create and start the main container, mark it, release the app; a failed start is
    the app's failure (its first step's outcome)."""
    r = run.profile.run
    main = run.runner.create(_spec(setup, run, _wrap(setup, run, setup.argv, MAIN), r.stdin))
    run.say(f"starting {run.image}" + {Mode.STRACE: " under strace",
                                        Mode.FANOTIFY: " under fanotify alone"}.get(run.mode, ""))
    run.timeline.mark("run")
    try:
        run.runner.start(main)
    except StartFailed as exc:
        first, kind = ("run", "job") if r.mode == "job" else ("ready", "ready")
        return StepOutcome(first, kind, False, 0.0, None, str(exc), "")
    if r.mode != "job":
        run.watch = run.runner.watch_logs(main, r.ready.log)
    _release(setup, run, MAIN, main)
    return main


def _first_step(setup: _Setup, run: _Run, ctx: StepContext) -> StepOutcome:
    """Job mode: the run itself is the test. Service mode: wait until it is ready."""
    if run.profile.run.mode != "job":
        return wait_ready(ctx, run.profile.run.ready)
    outcome = _run_job(run, ctx.container, ctx.deadline, setup.argv[0])
    ctx.container = None  # no exec steps into a finished job
    return outcome


def _run_job(run: _Run, container: Any, deadline: float, program: str) -> StepOutcome:
    """The container runs to completion; exit code and output regexes decide."""
    r = run.profile.run
    start = time.monotonic()
    code = run.runner.wait(container, deadline - time.monotonic())
    pressure = run.runner.pressure(container, run.limits)  # still there? (else exit 4)
    if code is None:
        run.runner.kill(container)
    out = run.runner.logs(container, stderr=False)
    err = run.runner.logs(container, stdout=False)
    if code is None:
        from tracer.trace.capture import last_lines

        both = (out + ("\n" if out and err else "") + err).strip()
        return StepOutcome("run", "job", False, round(time.monotonic() - start, 3), None,
                           f"did not finish within the run timeout of {r.timeout:g}s"
                           + (f"; {pressure}" if pressure else ""), last_lines(both))
    outcome = check_output("run", "job", start, code, r, out, err)
    if pressure and not outcome.passed:
        outcome.message += f"; {pressure}"
    return explain_exec_failure(run.runner, container, outcome, program)


def _smoke_steps(run: _Run, ctx: StepContext) -> list[StepOutcome]:
    """Every smoke step in order, stopping at the first failure or the run's timeout."""
    outcomes: list[StepOutcome] = []
    for smoke in run.profile.smoke:
        if time.monotonic() >= ctx.deadline:
            outcomes.append(StepOutcome(smoke.label, smoke.kind, False, 0.0, None,
                                        f"run timeout of {run.profile.run.timeout:g}s reached"))
            break
        run.say(smoke.label)
        run.timeline.mark(smoke.label)
        run.labels[step_stem(smoke)] = smoke.label
        outcome = run_step(ctx, smoke)
        outcomes.append(outcome)
        if not outcome.passed:
            break
    return outcomes


def _stop(run: _Run, main: Any, steps: list[StepOutcome]) -> None:
    """End the main container: gracefully when recording (files opened at shutdown count),
    at once when not (the verdict is in). Then check strace was allowed to trace."""
    run.timeline.mark(STOP_LABEL)
    if run.profile.run.mode != "job":
        run.runner.stop(main, graceful=run.mode is not Mode.UNTRACED)
    if run.mode is Mode.STRACE:
        err = _strace_error(run.runner.logs(main, raw=True))
        if err and not steps[0].passed:
            raise EnvironmentProblem(f"strace could not trace the application: {err}")


@dataclass(frozen=True)
class _Evidence:
    accesses: list[Access]
    execs: list[str]
    notes: list[str] = field(default_factory=list)


def _evidence(setup: _Setup, run: _Run) -> _Evidence:
    """Parse every trace copy (main by timeline, steps by their label), merge fanotify.

    What a run records is the app's to choose: a loop over fresh names makes millions of
    distinct uses in a trace that fits its byte budget, and a few bytes of trace (a
    `chdir` one level deeper, a relative name) can name a path of any length. At most
    `entries` distinct uses are kept over all streams, no path longer than `path_length`,
    and everything the traces make tracer hold (paths, processes, command lines) fits
    `evidence_bytes`; the rest is counted and said in the notes, like a trace cut at
    trace_bytes.
    """
    r = run.profile.run
    excluded = excluder([*ALWAYS_EXCLUDED, *r.tmpfs])
    cwd = r.workdir or setup.cfg.workdir or "/"
    cap = run.budgets.entries
    budget = StateBudget(run.budgets.evidence_bytes)
    accesses: list[Access] = []
    execs: list[str] = []
    notes: list[str] = []
    dropped = long_lines = unresolved = refused = 0
    tool = BUNDLE_MOUNT + "/"
    for stem, path in (run.channels.traces() if run.channels else {}).items():
        fixed = run.labels.get(stem, "")
        step_of = run.timeline.step_of if not fixed else (lambda _ts, lab=fixed: lab)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            parsed = parse_trace(f, step_of=step_of, excluded=excluded, initial_cwd=cwd,
                                 max_accesses=max(cap - len(accesses), 0),
                                 path_limit=run.budgets.path_length, budget=budget)
        dropped += parsed.dropped
        long_lines += parsed.long_lines
        unresolved += parsed.unresolved
        refused += parsed.refused
        accesses.extend(_apps_own(parsed.accesses, tool))
        execs.extend(parsed.execs)
    if dropped:
        notes.append(f"the trace named more than {cap:,} distinct uses of paths (the entries "
                     f"budget); {dropped:,} later ones were not recorded: raise it with "
                     "--budget entries=N")
    if refused:
        notes.append(f"what the trace names reached the evidence_bytes budget of "
                     f"{human(budget.limit or 0)} of tracer's memory; {refused:,} later calls "
                     "were not recorded: raise it with --budget evidence_bytes=N")
    if unresolved:
        notes.append(f"{unresolved:,} uses named a path longer than the path_length budget "
                     f"({run.budgets.path_length:,}) or relative to a directory the trace "
                     "does not name; they were not recorded")
    if long_lines:
        notes.append(f"{long_lines:,} trace lines longer than {MAX_LINE >> 20} MiB were "
                     "skipped (strace writes none: something else wrote into its FIFO)")
    if run.fan is not None:
        # beside strace, an open by a process already gone is tooling (strace's own exit)
        fan_acc = fanotify.to_accesses(run.fan.events, step_of=run.timeline.step_of,
                                       excluded=excluded,
                                       keep_unidentified=run.mode is not Mode.STRACE)
        # what strace saw opened in that step needs no second, racier witness: the
        # program behind a fanotify event is read after it, and may be gone by then
        seen = {(a.path, a.step) for a in accesses if a.ok}
        fan_acc = [a for a in fan_acc if (a.path, a.step) not in seen]
        accesses.extend(fan_acc)
        execs.extend(a.path for a in fan_acc if a.syscall == "fanotify:exec")
    return _Evidence(dedupe(accesses), list(dict.fromkeys(execs)), notes)


def _apps_own(accesses: list[Access], tool: str) -> list[Access]:
    """The app's uses: not those of the bundle's own programs (setpriv switching users,
    env giving the app its environment back), except the exec that starts the app: that
    one is the app's, made before any program of it ran. env looks the program up on the
    app's PATH, as the engine does, but by trying each directory: those misses are the
    bundle's way of looking, not lookups of the app (the engine's make no trace at all)."""
    out = []
    for a in accesses:
        if not a.program.startswith(tool):
            out.append(a)
        elif a.meaning is Meaning.EXEC and a.ok and not a.path.startswith(tool):
            out.append(replace(a, program="", cmdline=()))
    return out


def _recorder_notes(run: _Run) -> list[str]:
    notes = list(run.channels.notes()) if run.channels is not None else []
    fan = run.fan
    if fan is not None and fan.overflowed:
        notes.append("fanotify queue overflowed: some opens were only seen by strace")
    if fan is not None and fan.lost:
        notes.append(f"fanotify: {fan.lost} events whose file could not be opened were dropped")
    if fan is not None and fan.dropped:
        notes.append(f"fanotify: {fan.dropped:,} opens past its bounds (the entries or "
                     "trace_bytes budget) were not recorded: raise them with --budget")
    if fan is not None and fan.foreign:
        notes.append(f"fanotify: {fan.foreign} opens by processes outside the container "
                     "(e.g. on the host) were not counted")
    return notes


def _run_smoke_in(setup: _Setup, run: _Run) -> SmokeResult:
    """The run itself: start -> job/ready -> steps -> stop -> evidence."""
    started = _start_main(setup, run)
    if isinstance(started, StepOutcome):
        return _finish([started], recorders=[], t0=run.t0)
    main = started
    # reading what the containers printed ends with the run too (a little after its
    # timeout, so that a run that timed out still shows its last lines)
    run.runner.read_deadline = time.monotonic() + run.profile.run.timeout + OUTPUT_GRACE
    ctx = StepContext(
        runner=run.runner,
        container=main,
        wrap=lambda argv, stem: _wrap(setup, run, argv, stem),
        command_spec=lambda step, stem: _spec(setup, run, _wrap(setup, run, list(step.argv),
                                                                stem), step.stdin),
        deadline=time.monotonic() + run.profile.run.timeout,
        budgets=run.budgets,
        exec_user=setup.run_as.container_user if run.mode is Mode.STRACE else None,
        before_step=lambda stem, container: _release(setup, run, stem, container),
        watch=run.watch,
        limits=run.limits,
    )
    steps = [_first_step(setup, run, ctx)]
    if steps[0].passed:
        steps += _smoke_steps(run, ctx)
    _stop(run, main, steps)
    run.close()  # every writer gone: the traces are complete
    recorders = {Mode.STRACE: ["strace"], Mode.FANOTIFY: []}.get(run.mode, [])
    if run.fan is not None:
        recorders.append("fanotify")
    result = _finish(steps, recorders=recorders, t0=run.t0)
    if run.mode is not Mode.UNTRACED:
        evidence = _evidence(setup, run)
        result.accesses, result.execs = evidence.accesses, evidence.execs
        for msg in [*evidence.notes, *_recorder_notes(run)]:
            run.note(msg)
        result.foreign_events = run.fan.foreign if run.fan is not None else 0
    result.fanotify_only = run.mode is Mode.FANOTIFY
    result.notes = run.notes
    result.seconds = round(time.monotonic() - run.t0, 3)
    return result


def _finish(steps: list[StepOutcome], *, recorders: list[str], t0: float) -> SmokeResult:
    """The result's verdict from the step outcomes (the first failure names the step)."""
    failed = next((s for s in steps if not s.passed), None)
    return SmokeResult(
        passed=failed is None,
        steps=steps,
        recorders=recorders,
        seconds=round(time.monotonic() - t0, 3),
        failure=f"{failed.label}: {failed.message}" if failed else None,
    )

