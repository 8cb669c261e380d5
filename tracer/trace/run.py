"""run_smoke: start the image as the profile says, run every smoke step, record what it used.

This module only orchestrates: the engine side is `docker_runner`, the steps are `steps`,
the recorders are the strace bundle (`bundle` + `parser`) and `fanotify`. The order is
fixed: create -> (mark fanotify) -> start -> ready (or job run) -> smoke steps -> stop ->
parse; the `finally` removes every container on success, failure and Ctrl-C.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracer.errors import EnvironmentProblem
from tracer.image.config import ImageConfig
from tracer.profile_model import Profile
from tracer.trace import fanotify
from tracer.trace.bundle import BUNDLE_MOUNT, OUTPUT_MOUNT, build_bundle, make_output_dir
from tracer.trace.docker_runner import (
    ContainerSpec,
    DockerRunner,
    StartFailed,
    connect,
    effective_argv,
    image_config,
)
from tracer.trace.parser import excluder, parse_trace
from tracer.trace.result import Access, SmokeResult, StepOutcome, dedupe
from tracer.trace.steps import StepContext, first_lines, run_step, wait_ready

ALWAYS_EXCLUDED = (BUNDLE_MOUNT, OUTPUT_MOUNT, "/proc", "/sys", "/dev")
STOP_LABEL = "stop"
RUN_LABEL = "org.tracer.smoke"  # on every container a smoke run creates (value: profile name)


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


class _FifoPump:
    """Reads strace's output FIFO into a file.

    strace opens its `-o` file before it starts the application, and opening a FIFO for
    writing blocks until a reader comes: so the application cannot run before the
    fanotify mark is in place, and nothing it opens at startup is missed.
    """

    def __init__(self, fifo: Path, dest: Path) -> None:
        self.fifo, self.dest = fifo, dest
        self.thread = threading.Thread(target=self._pump, name="strace-fifo", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _pump(self) -> None:
        with open(self.fifo, "rb") as src, open(self.dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 16)

    def release(self) -> None:
        """Unblock a writer that never came (strace failed to start) and end the thread."""
        if self.thread.is_alive():
            with contextlib.suppress(OSError):
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            self.thread.join(10)


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
) -> SmokeResult:
    """Run the profile's smoke test against `image` (a reference the engine knows).

    Never raises on a failing step (passed=False, `failure` says which and why); raises
    EnvironmentProblem (no engine, no strace, no permission) and BadInput (image not in
    the engine). Every container created is removed before returning, and so is the
    scratch directory made under `workdir` (bundle, trace files), Ctrl-C included.
    """
    t0 = time.monotonic()
    client = connect()
    cfg = image_config(client, image)
    argv = effective_argv(profile.run, cfg, image)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="trace-", dir=workdir))
    try:
        return _run_smoke_in(
            scratch,
            profile,
            image,
            traced=traced,
            client=client,
            cfg=cfg,
            argv=argv,
            say=progress or (lambda _msg: None),
            t0=t0,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_smoke_in(
    scratch: Path,
    profile: Profile,
    image: str,
    *,
    traced: bool,
    client: Any,
    cfg: ImageConfig,
    argv: list[str],
    say: Callable[[str], None],
    t0: float,
) -> SmokeResult:
    """The run itself: create -> (fanotify) -> start -> ready/job -> steps -> stop -> parse."""
    run = profile.run
    bundle = build_bundle(scratch) if traced else None
    outdir = make_output_dir(scratch) if traced else None
    binds = (
        {BUNDLE_MOUNT: (str(bundle.host_dir), True), OUTPUT_MOUNT: (str(outdir), False)}
        if bundle and outdir
        else {}
    )

    def wrap(cmd: list[str], stem: str, suffix: str = ".trace") -> list[str]:
        if bundle is None:
            return cmd
        return bundle.command(f"{OUTPUT_MOUNT}/{stem}{suffix}", cmd)

    def spec(cmd: list[str]) -> ContainerSpec:
        return ContainerSpec(
            image=image,
            argv=cmd,
            env=dict(run.env),
            user=run.user,
            workdir=run.workdir,
            network=run.network,
            tmpfs=list(run.tmpfs),
            binds=binds,
            cap_add=["SYS_PTRACE"] if traced else [],
            labels={RUN_LABEL: profile.name},
        )

    runner = DockerRunner(client)
    timeline = Timeline()
    labels: dict[str, str] = {"main": ""}  # trace stem -> fixed label ("" = by timeline)
    steps: list[StepOutcome] = []
    recorders: list[str] = ["strace"] if traced else []
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        say(msg)

    fan: fanotify.FanotifyRecorder | None = None
    pump: _FifoPump | None = None
    deadline = time.monotonic() + run.timeout
    try:
        fan_reason = fanotify.available() if traced else "not tracing"
        if fan_reason is None and outdir is not None:
            os.mkfifo(outdir / "main.fifo", 0o666)
            (outdir / "main.fifo").chmod(0o666)
            pump = _FifoPump(outdir / "main.fifo", outdir / "main.trace")
            main = runner.create(spec(wrap(argv, "main", ".fifo")))
        else:
            if traced:
                note(f"fanotify not used: {fan_reason}")
            main = runner.create(spec(wrap(argv, "main")))
        say(f"starting {image}" + (" under strace" if traced else ""))
        timeline.mark("run")
        try:
            runner.start(main)
        except StartFailed as exc:
            first = "run" if run.mode == "job" else "ready"
            kind = "job" if run.mode == "job" else "ready"
            steps.append(StepOutcome(first, kind, False, 0.0, None, str(exc), ""))
            return _finish(steps, recorders=[], t0=t0)
        if pump is not None:
            fan = _start_fanotify(main, note)  # strace waits on the FIFO until pump opens it
            pump.start()
            if fan is not None:
                recorders.append("fanotify")
        ctx = StepContext(
            runner=runner,
            container=main,
            wrap=wrap,
            command_spec=lambda cmd, stem: spec(wrap(cmd, stem)),
            deadline=deadline,
        )
        if run.mode == "job":
            outcome = _run_job(runner, main, profile, deadline)
            ctx.container = None
        else:
            outcome = wait_ready(ctx, run.ready)
        steps.append(outcome)
        if outcome.passed:
            for smoke in profile.smoke:
                if time.monotonic() >= deadline:
                    steps.append(
                        StepOutcome(
                            smoke.label,
                            smoke.kind,
                            False,
                            0.0,
                            None,
                            f"run timeout of {run.timeout:g}s reached",
                            "",
                        )
                    )
                    break
                say(f"{smoke.label}")
                timeline.mark(smoke.label)
                labels[f"smoke-{smoke.index}-{smoke.kind}"] = smoke.label
                outcome = run_step(ctx, smoke)
                steps.append(outcome)
                if not outcome.passed:
                    break
        timeline.mark(STOP_LABEL)
        if run.mode != "job":
            runner.stop(main, traced=traced)
        if traced:
            err = _strace_error(runner.logs(main))
            if err and not steps[0].passed:
                raise EnvironmentProblem(f"strace could not trace the application: {err}")
    finally:
        runner.cleanup()  # first: a dead strace closes the FIFO and ends the pump
        if pump is not None:
            pump.release()
        if fan is not None:
            fan.stop()

    result = _finish(steps, recorders=recorders, t0=t0)
    if traced and outdir is not None:
        result.accesses, result.execs = _collect(
            outdir, labels, timeline, profile, cfg.workdir, fan
        )
        if fan is not None and fan.overflowed:
            note("fanotify queue overflowed: some opens were only seen by strace")
        if fan is not None and fan.lost:
            note(f"fanotify: {fan.lost} events whose file could not be opened were dropped")
    result.notes = notes
    result.seconds = round(time.monotonic() - t0, 3)
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


def _start_fanotify(container: Any, say: Callable[[str], None]) -> fanotify.FanotifyRecorder | None:
    """Mark the container's overlay (GraphDriver.Data.MergedDir); None with a note if we cannot."""
    container.reload()
    merged = ((container.attrs.get("GraphDriver") or {}).get("Data") or {}).get("MergedDir")
    if not merged or not os.path.isdir(merged):
        say("fanotify not used: the container's merged directory is not visible here")
        return None
    rec = fanotify.FanotifyRecorder(merged)
    try:
        rec.start()
    except OSError as exc:
        say(f"fanotify not used: {exc}")
        return None
    return rec


def _run_job(
    runner: DockerRunner, container: Any, profile: Profile, deadline: float
) -> StepOutcome:
    """Job mode: the container runs to completion; exit code and output regexes decide."""
    import re

    run = profile.run
    start = time.monotonic()
    code = runner.wait(container, deadline - time.monotonic())
    out = runner.logs(container, stderr=False)
    err = runner.logs(container, stdout=False)
    both = (out + err).strip()
    secs = round(time.monotonic() - start, 3)
    if code is None:
        runner.kill(container)
        msg = f"did not finish within the run timeout of {run.timeout:g}s"
        return StepOutcome("run", "job", False, secs, None, msg, first_lines(both))
    if code != run.exit:
        msg = f"expected exit code {run.exit}, got {code}"
        return StepOutcome("run", "job", False, secs, code, msg, first_lines(both))
    if run.stdout and not re.search(run.stdout, out, re.M):
        msg = f"stdout does not match {run.stdout!r}"
        return StepOutcome("run", "job", False, secs, code, msg, first_lines(both))
    if run.stderr and not re.search(run.stderr, err, re.M):
        msg = f"stderr does not match {run.stderr!r}"
        return StepOutcome("run", "job", False, secs, code, msg, first_lines(both))
    return StepOutcome("run", "job", True, secs, code)


def _collect(
    outdir: Path,
    labels: dict[str, str],
    timeline: Timeline,
    profile: Profile,
    image_workdir: str,
    fan: fanotify.FanotifyRecorder | None,
) -> tuple[list[Access], list[str]]:
    """Parse every trace file (main by timeline, steps by their label) and merge fanotify."""
    excluded = excluder([*ALWAYS_EXCLUDED, *profile.run.tmpfs])
    cwd = profile.run.workdir or image_workdir or "/"
    accesses: list[Access] = []
    execs: list[str] = []
    for path in sorted(outdir.glob("*.trace")):
        fixed = labels.get(path.stem, "")
        step_of = timeline.step_of if not fixed else (lambda _ts, lab=fixed: lab)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            parsed = parse_trace(f, step_of=step_of, excluded=excluded, initial_cwd=cwd)
        accesses.extend(parsed.accesses)
        execs.extend(e for e in parsed.execs if e not in execs)
    if fan is not None:
        fan_acc = fanotify.to_accesses(fan.events, step_of=timeline.step_of, excluded=excluded)
        accesses.extend(fan_acc)
        execs.extend(
            a.path for a in fan_acc if a.syscall == "fanotify:exec" and a.path not in execs
        )
    return dedupe(accesses), execs
