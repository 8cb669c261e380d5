"""`tracer diagnose`: why does a minimized image fail, and what keeps it from failing.

Two questions, one answer shape (the files the minimized image lacks, then the profile
lines that fix it, best first):

- `diagnose_profile`: the profile's own smoke test, traced on the original and on the
  minimized image (the diagnosis `tracer minimize` prints, for an image that failed later).
- `replay_command`: ONE production command the smoke test does not cover (`tracer diagnose
  PROFILE --exec -- ARGV` / `--command -- ARGV`), run as one more smoke step, appended to
  the profile's own, so the runner needs nothing new and the step is exactly the one the
  operator will paste: `exec` inside the running service after its ready check and smoke
  steps, `command` in a fresh one-shot container with the profile's run settings.

The replay is three runs of the profile with that step: (1) traced on the original image:
what the command uses, its exit code and its output (stdout and stderr, each); (2) the
same, untraced on the original, as verification will run it: a command whose exit code
changes is no smoke step at all, and what the suggested step checks of the output is
decided by both runs (tracer.explain.stepcheck: a part of stdout or stderr that every run
printed, else only the exit code, saying why); (3) the step, traced, on the minimized
image: the verdict, and with (1) the exact files the minimized image lacks. The verdict
is not the step's alone: a command that exits as on the original but prints something
else where every run of the original printed alike is broken silently, and fails, with
the difference (tracer.explain.outputs).

The fix is offered in this order: the command as a smoke step (every minimization then
traces and verifies it, so `file` granularity keeps what it uses); then keep.binaries for
a missing program it ran; then the exact keep.paths; and only then a shorter glob, never
over a whole system directory (tracer.explain.diagnose). Every piece of YAML is placed in the
operator's own profile file (tracer.profile.edit) and is checked to read back as the step
that was replayed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.engine import connect
from tracer.environment import require_engine_can_run, require_strace
from tracer.errors import BadInput, SmokeFailedOnOriginal
from tracer.explain.diagnose import Diagnosis, Suggestion, diagnose, format_suggestions, suggest
from tracer.explain.outputs import Comparison, compare, suspects
from tracer.explain.runfiles import escape
from tracer.explain.stepcheck import TOOL_PREFIX, OutputCheck, output_check, stdout_regex
from tracer.image.daemon import EngineImages
from tracer.image.prepare import Prepared, prepare
from tracer.image.reference import default_output, parse_reference
from tracer.pipeline import fail_on_original, pinned
from tracer.profile.checker import read_stdin_file
from tracer.profile.document import read_profile_text
from tracer.profile.edit import apply
from tracer.profile.load import budgets_of
from tracer.profile.model import ArgvStep, CommandStep, ExecStep, Profile, SmokeStep
from tracer.profile.sections import parse_profile
from tracer.progress import Progress
from tracer.rootfs import RootFS
from tracer.static import which
from tracer.static.script import DEFAULT_PATH
from tracer.trace.original import trace_original
from tracer.trace.result import SmokeResult, StepOutcome
from tracer.trace.run import run_smoke
from tracer.workdir import workdir

OUTPUT_SHOWN = 20  # lines of a run's output shown
STREAM_CHARS = 4000  # characters of each stream in the JSON answer

__all__ = ["Command", "ReplayResult", "RunView", "diagnose_profile", "replay_command",
           "stdout_regex"]


# -- what is replayed ----------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One production command to replay, as the operator gave it on the command line."""

    kind: str  # "exec" (in the running service container) | "command" (one-shot container)
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set through the image's `env`
    stdin_file: Path | None = None  # fed to its stdin (as a step's stdin_file)
    exit: int | None = None  # expected exit code; None: whatever the original image gives
    timeout: float | None = None  # seconds; None: the steps' default


def check_command(profile: Profile, command: Command) -> None:
    """BadInput (exit 2) for a replay that cannot make sense, before anything runs."""
    if command.kind not in ("exec", "command"):
        raise BadInput(f"unknown replay kind {command.kind!r}")
    if not command.argv:
        raise BadInput(f"--{command.kind} needs the command to replay after `--`")
    if command.kind == "exec" and profile.run.mode == "job":
        raise BadInput(f"{profile.source or profile.name}: a job (run.mode: job) has no "
                       "running container to exec into; replay the command with --command "
                       "(a fresh container from the image, as production starts it)")
    for key in command.env:
        if not key or "=" in key or "\0" in key:
            raise BadInput(f"--env {key!r}: expected KEY=VALUE")
    if command.env and "=" in command.argv[0]:
        raise BadInput(f"with --env the program name cannot contain '=': {command.argv[0]!r}")
    if command.exit is not None and not 0 <= command.exit <= 255:
        raise BadInput(f"--exit {command.exit}: an exit code is 0-255")


def replayed_argv(command: Command, root: RootFS, env: dict[str, str]) -> list[str]:
    """The argv the step runs. A smoke step has no environment of its own (profile format
    version 1), so variables are set the way a step can: through the image's `env`."""
    if not command.env:
        return list(command.argv)
    if which(root, "env", env.get("PATH", DEFAULT_PATH)) is None:
        raise BadInput("--env needs the program `env` in the image (a smoke step has no "
                       "environment of its own), and this image has none on its PATH; set "
                       "the variables in the profile's run.env instead")
    return ["env", *(f"{k}={v}" for k, v in command.env.items()), *command.argv]


def step_yaml(command: Command, argv: list[str], exit_code: int, stdout: str | None,
              profile: Profile, stderr: str | None = None) -> dict[str, Any]:
    """The smoke step as the profile writes it (keys in the order docs/profile.md uses)."""
    step: dict[str, Any] = {command.kind: argv, "exit": exit_code}
    if stdout is not None:
        step["stdout"] = stdout
    if stderr is not None:
        step["stderr"] = stderr
    if command.timeout is not None:
        step["timeout"] = f"{command.timeout:g}s"
    if command.stdin_file is not None:
        step["stdin_file"] = stdin_file_name(command.stdin_file, profile)
    return step


def stdin_file_name(path: Path, profile: Profile) -> str:
    """`stdin_file` is relative to the profile's directory: say it that way when the file
    is under it, else absolute."""
    full = path.resolve()
    if profile.source is not None:
        base = profile.source.resolve().parent
        if full.is_relative_to(base):
            return os.path.relpath(full, base)
    return str(full)


def make_step(command: Command, argv: list[str], exit_code: int, stdout: str | None,
              stdin: bytes | None, stderr: str | None = None) -> ArgvStep:
    cls = ExecStep if command.kind == "exec" else CommandStep
    kw: dict[str, Any] = {}
    if command.timeout is not None:
        kw["timeout"] = command.timeout
    return cls(argv=list(argv), exit=exit_code, stdout=stdout, stderr=stderr, stdin=stdin,
               **kw)


def with_step(profile: Profile, step: ArgvStep) -> Profile:
    """The profile with `step` appended to its smoke test, where a pasted step goes."""
    return dataclasses.replace(
        profile, smoke=[*profile.smoke, SmokeStep(index=len(profile.smoke), step=step)])


def label_of(profile: Profile, command: Command) -> str:
    return f"smoke[{len(profile.smoke)}].{command.kind}"


# -- the answer --------------------------------------------------------------------------------

@dataclass
class RunView:
    """How the replayed command went on one image."""

    image: str
    reached: bool  # False: the profile's own checks failed before it
    passed: bool
    exit_code: int | None
    message: str  # the failure, "" when it passed
    output: str  # shown: stdout then stderr (a failed step: the tail the runner kept)
    stdout: str = ""  # the beginning of each stream (STREAM_CHARS)
    stderr: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, image: str, outcome: StepOutcome, passed: bool, message: str) -> RunView:
        """The command's run as a step `outcome`: its streams, both shown (stdout first)
        when it passed, the runner's tail of them when it failed."""
        streams = {name: outcome.streams[name].text if name in outcome.streams else ""
                   for name in ("stdout", "stderr")}  # strace's own lines are not in them
        both = "\n".join(t.rstrip("\n") for t in streams.values() if t.strip())
        shown = _app_output(outcome.output) if not outcome.passed and outcome.output else both
        return cls(image, True, passed, outcome.exit_code, message, shown,
                   streams["stdout"][:STREAM_CHARS], streams["stderr"][:STREAM_CHARS])

    def format_lines(self, what: str) -> list[str]:
        if not self.reached:
            head = f"{what} image {self.image}: the command did not run: {self.message}"
        elif self.passed:
            head = f"{what} image {self.image}: passed (exit {self.exit_code})"
        else:
            head = f"{what} image {self.image}: FAILED: {self.message}"
        lines = [head]
        output = self.output.splitlines()
        lines += [f"  | {escape(ln)}" for ln in output[:OUTPUT_SHOWN]]
        if len(output) > OUTPUT_SHOWN:
            lines.append(f"  | ... ({len(output) - OUTPUT_SHOWN} more lines)")
        return lines


@dataclass
class ReplayResult:
    command: Command
    label: str
    argv: list[str]  # as run, `env K=V` included
    original: RunView
    minimized: RunView
    step: dict[str, Any] | None  # the smoke step to add, as YAML; None: not usable as one
    step_note: str  # how the step was checked, or why there is none
    diagnosis: Diagnosis
    suggestions: list[Suggestion]
    filename: str  # the profile file the edits are for
    # the command's output on the minimized image against every run on the original
    comparison: Comparison = field(default_factory=lambda: Comparison([], []))

    @property
    def passed(self) -> bool:
        return self.minimized.passed

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed,
                "command": {"kind": self.command.kind, "argv": self.argv,
                            "label": self.label},
                "original": self.original.to_json(), "minimized": self.minimized.to_json(),
                "smoke_step": self.step, "smoke_step_note": self.step_note,
                "output_changes": [c.to_json() for c in self.comparison.changes],
                "output_not_compared": self.comparison.not_compared,
                "missing": self.diagnosis.to_json()["missing"],
                "diagnosis": self.diagnosis.to_json(),
                "profile": self.filename,
                "suggestions": [s.to_json() for s in self.suggestions]}

    def format_text(self) -> str:
        where = ("inside the running service container" if self.command.kind == "exec"
                 else "in a fresh container from the image")
        lines = [f"replayed as {self.label}, {where}: "
                 + escape(" ".join(self.argv))]
        if self.command.env:
            lines.append("  (a smoke step has no environment of its own: --env is set through "
                         "the image's `env` program, which the step then needs as well)")
        lines += self.original.format_lines("original")
        lines += self.minimized.format_lines("minimized")
        for change in self.comparison.changes:  # the diff in place of the output
            if change.message != self.minimized.message:
                lines.append(f"  {change.message}")
            lines += [f"  {ln}" for ln in change.diff.splitlines()]
        lines += [f"  ({note})" for note in self.comparison.not_compared]
        lines += self.diagnosis.format_missing(failed=not self.passed)
        rules = self.diagnosis.excluded_rules
        if rules:
            lines.append("  (removed by exclude rules " + ", ".join(rules) + "; keep.paths "
                         "wins over exclude, or narrow them)")
        if self.step is None:
            lines.append(self.step_note)
        if not self.suggestions:
            lines.append("no profile lines to suggest")
            return "\n".join(lines)
        lines += format_suggestions(self.suggestions, self.filename)
        return "\n".join(lines)


def _outcome(result: SmokeResult, label: str) -> StepOutcome | None:
    return next((s for s in result.steps if s.label == label), None)


def _app_output(output: str) -> str:
    """A step's output without strace's own messages (`/.tracer/strace: ...`): they are
    the recorder talking, not the command."""
    return "\n".join(ln for ln in output.splitlines() if not ln.startswith(TOOL_PREFIX))


def _not_reached(result: SmokeResult) -> str:
    return result.failure or "the run ended before it"


def _shown(output: str) -> str:
    lines = _app_output(output).splitlines()[:OUTPUT_SHOWN]
    return "".join(f"\n  | {escape(ln)}" for ln in lines)


# -- the runs ------------------------------------------------------------------------------

def _target_image(profile: Profile, image: str | None) -> str:
    """The minimized image to diagnose (default: the profile's output); BadInput when the
    engine does not have it, before anything is run."""
    in_ref = parse_reference(profile.image)
    target = image or profile.output or str(default_output(in_ref))
    target_ref = parse_reference(target)
    if target_ref.transport == "docker-daemon":
        import docker

        engine = connect()  # no engine is an environment problem (exit 4), not bad input
        try:
            with engine.errors(f"look up {target_ref}"):
                engine.sdk.images.get(f"{target_ref.name}:{target_ref.tag or 'latest'}")
        except docker.errors.NotFound:
            raise BadInput(f"the minimized image {target_ref} is not in the engine; run "
                           "`tracer minimize` first or pass --image") from None
    return target


@dataclass
class _Session:
    """The engine, work directory and original image both kinds of replay start from."""

    profile: Profile
    engine: EngineImages
    work: Path
    progress: Progress
    seconds: dict[str, float] = field(default_factory=dict)

    def prepare(self, image: str, purpose: str) -> Prepared:
        """`image` read (pinned to its id) and runnable, its files under work/PURPOSE."""
        return prepare(pinned(image), self.profile.name, self.work / purpose, self.engine,
                       self.progress, self.seconds, budgets_of(self.profile))


@contextmanager
def _session(profile: Profile, progress: Progress) -> Iterator[tuple[_Session, Prepared]]:
    """A work directory and engine session with the original image prepared; whatever
    the runs left in the engine is removed on the way out, also on failure."""
    require_strace()
    engine = EngineImages()
    require_engine_can_run(profile)
    try:
        with workdir() as work:
            session = _Session(profile, engine, work, progress)
            yield session, session.prepare(profile.image, "original")
    finally:
        engine.cleanup()


def diagnose_profile(profile: Profile, *, image: str | None = None,
                     progress: Progress | None = None) -> Diagnosis:
    """Trace the smoke test on the original and the minimized image; explain the difference.

    `image` defaults to the profile's output (what `minimize` wrote). The original's run
    says what the application uses; the minimized run's failed lookups and the minimized
    image's contents say what of that is gone.
    """
    progress = progress or Progress()
    target = _target_image(profile, image)
    with _session(profile, progress) as (session, original):
        work = session.work
        minimized = session.prepare(target, "minimized")
        # as `tracer minimize` traces it: a run that fails only under strace is
        # recorded with fanotify; one that fails untraced as well proves nothing
        progress.phase("traced smoke test of the original image")
        used = trace_original(profile, original.engine_ref, workdir=work / "trace-original",
                              progress=progress,
                              privileged_programs=original.flat.has_privileged_programs())
        progress.done("passed" if used.passed else "FAILED")
        if not used.passed:
            raise fail_on_original(parse_reference(profile.image), used)
        progress.phase("traced smoke test of the minimized image")
        run = run_smoke(profile, minimized.engine_ref, traced=True,
                        workdir=work / "trace-minimized", progress=progress)
        progress.done("passed" if run.passed else "FAILED")
        diagnosis = diagnose(run, original.root, profile.exclude, original_run=used,
                             present=minimized.flat.entries.__contains__,
                             env=original.config.environment(profile.run.env))
        differ = suspects(used, run)
        if differ:
            # one run of the original cannot tell a change from output that varies
            more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
            progress.phase(f"{differ[0]}{more} differs from the original's: the smoke test "
                           "again on the original image, untraced, to tell a change from "
                           "output that varies")
            again = run_smoke(profile, original.engine_ref, traced=False,
                              workdir=work / "again-original", progress=progress)
            found = compare([used, again], run)
            diagnosis.changed_outputs(found.changes, found.not_compared)
            progress.done(f"{len(found.changes)} changed" if found.changes else "it varies")
    diagnosis.profile_text, diagnosis.profile_file = _profile_text(profile)
    return diagnosis


def replay_command(profile: Profile, command: Command, *, image: str | None = None,
                   progress: Progress | None = None) -> ReplayResult:
    """Replay `command` on the original (traced, then as the suggested step) and on the
    minimized image (traced); raise SmokeFailedOnOriginal (exit 3) when it, or the
    profile's own smoke test, fails on the original: there is nothing to compare then."""
    check_command(profile, command)
    progress = progress or Progress()
    in_ref = parse_reference(profile.image)
    target = _target_image(profile, image)
    budgets = budgets_of(profile)
    stdin = None
    if command.stdin_file is not None:
        stdin, problem = read_stdin_file(command.stdin_file, budgets.profile_bytes)
        if problem:
            raise BadInput(f"--stdin-file {command.stdin_file}: {problem}")
    label = label_of(profile, command)
    with _session(profile, progress) as (session, original):
        work = session.work
        env = original.config.environment(profile.run.env)
        argv = replayed_argv(command, original.root, env)

        progress.phase(f"replaying the command on the original image, traced ({label})")
        probe = make_step(command, argv, command.exit or 0, None, stdin)
        traced = run_smoke(with_step(profile, probe), original.engine_ref, traced=True,
                           workdir=work / "trace-original", progress=progress)
        got = _outcome(traced, label)
        progress.done(f"exit {got.exit_code}" if got else "FAILED")
        expected = _expected_exit(got, traced, command, in_ref)
        assert got is not None
        first = RunView.of(str(in_ref), got, True, "")

        progress.phase("running it again on the original image, untraced, as verification "
                       "runs it: what of its output every run prints")
        plain = make_step(command, argv, expected, None, stdin)
        check = run_smoke(with_step(profile, plain), original.engine_ref, traced=False,
                          workdir=work / "check-original", progress=progress)
        again = _outcome(check, label)
        step, note = _confirmed(plain, got, again, check)
        progress.done(note)

        minimized = session.prepare(target, "minimized")
        progress.phase(f"replaying the command on the minimized image, traced ({label})")
        final = step or plain
        run = run_smoke(with_step(profile, final), minimized.engine_ref, traced=True,
                        workdir=work / "trace-minimized", progress=progress)
        outcome = _outcome(run, label)
        originals = [traced, check] if again is not None else [traced]
        comparison = compare(originals, run, {label})
        if outcome is None:
            view = RunView(target, False, False, None, _not_reached(run), "")
        else:
            changed = comparison.changes
            view = RunView.of(target, outcome, outcome.passed and not changed,
                              outcome.message or (changed[0].message if changed else ""))
            if outcome.passed:  # shown for the original already; a change shows its diff
                view.output = ""
        progress.done("passed" if view.passed else "FAILED")
        diagnosis = diagnose(run, original.root, profile.exclude, original_run=traced,
                             present=minimized.flat.entries.__contains__, env=env)
        diagnosis.changed_outputs(comparison.changes, comparison.not_compared)
    yaml_step = (step_yaml(command, argv, step.exit, step.stdout, profile, step.stderr)
                 if step is not None else None)
    text, filename = _profile_text(profile)
    suggestions = suggest(text, yaml_step, note, diagnosis, passed=view.passed)
    if yaml_step is not None and profile.source is not None and suggestions and \
            suggestions[0].kind == "smoke":
        _check_reads_back(text, suggestions[0], profile, step)
    return ReplayResult(command=command, label=label, argv=argv, original=first,
                        minimized=view, step=yaml_step, step_note=note, diagnosis=diagnosis,
                        suggestions=suggestions, filename=filename, comparison=comparison)


def _expected_exit(got: StepOutcome | None, traced: SmokeResult, command: Command,
                   image: object) -> int:
    """The exit code the step expects: --exit, else the original's. SmokeFailedOnOriginal
    when the command (or the smoke test before it) does not do that on the original."""
    if got is None:
        raise SmokeFailedOnOriginal(
            f"the profile's smoke test fails on the original image {image}, before the "
            f"replayed command: {_not_reached(traced)}")
    if got.exit_code is None:
        raise SmokeFailedOnOriginal(
            f"the command did not run to completion on the original image {image}: "
            f"{got.message}{_shown(got.output)}")
    if command.exit is not None and got.exit_code != command.exit:
        raise SmokeFailedOnOriginal(
            f"the command fails on the original image {image}: exit {got.exit_code}, "
            f"expected {command.exit}{_shown(got.output)}\nif {got.exit_code} is what it "
            f"should return, pass --exit {got.exit_code}")
    return got.exit_code


def _confirmed(step: ArgvStep, first: StepOutcome, again: StepOutcome | None,
               run: SmokeResult) -> tuple[ArgvStep | None, str]:
    """The step to suggest, from two runs of the command on the original (`first` traced,
    `again` untraced as verification runs it), and how it was checked: a part of its
    output both printed (tracer.explain.stepcheck), else its exit code alone, saying why;
    None when the second run ends otherwise (no smoke step can hold then)."""
    if again is None:
        return step, (f"not checked: on a second run of the original image the smoke test "
                      f"failed before it ({_not_reached(run)}); only its exit code is "
                      "checked, which an image that exits alike but prints something else "
                      "would pass")
    if again.exit_code != step.exit:
        return None, (f"the command is not usable as a smoke step: on a second run of the "
                      f"original image {again.message or f'it exited {again.exit_code}'}")
    check: OutputCheck = output_check([first, again])
    if check.stream is None:
        return step, ("checked: it passes on the original image, untraced; only its exit "
                      f"code is checked, because {check.why}: an image that exits alike "
                      "but prints something else would pass such a step")
    checked = dataclasses.replace(step, **{check.stream: check.regex})
    return checked, (f"checked: it passes on the original image, untraced, as verification "
                     f"runs it; it checks {check.stream} for a part every run of the "
                     "original printed")


def _profile_text(profile: Profile) -> tuple[str, str]:
    """The profile file as it is now (the edits are planned against it), and its name."""
    if profile.source is None:
        return "", "the profile"
    text = read_profile_text(profile.source, budgets_of(profile).profile_bytes)
    return text, str(profile.source)


def _check_reads_back(text: str, smoke: Suggestion, profile: Profile,
                      step: ArgvStep) -> None:
    """The suggested YAML, pasted into the profile, must load and be exactly the step that
    was replayed; anything else is a bug in tracer (exit 70), never a wrong suggestion."""
    assert profile.source is not None
    patched = parse_profile(apply(text, smoke.edits), str(profile.source),
                            source=profile.source, budgets=budgets_of(profile))
    if not patched.smoke or patched.smoke[-1].step != step:
        raise RuntimeError(f"the suggested smoke step reads back as "
                           f"{patched.smoke[-1].step if patched.smoke else None!r}, "
                           f"not as the replayed {step!r}")
