"""`tracer minimize`: the whole pipeline, in one direction (README.md, "Layout").

profile → plan → image read and flattened ∥ traced run of the original (must pass, else
exit 3) → ELF closure and keep-list (file or package granularity) → candidate image in the
engine → verification run (untraced; what each check prints compared with the original's)
→ only then the output reference is written → report. Each stage is a function that
returns a typed value; `minimize` only strings them together and fills the report.

The output is never replaced by an image that did not pass its smoke test, and every
container, temp image and temp directory is removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tracer import __version__, stage, statefile
from tracer.analysis.evidence import (
    EvidenceFile,
    collect_evidence,
    recorded_roots,
    write_path_index,
)
from tracer.analysis.keeplist import KeepList, Reason, size_of
from tracer.analysis.policy import IMPLICIT_DLOPENS
from tracer.analysis.recording import Recording, read_recording
from tracer.budgets import Budgets
from tracer.environment import require_engine_can_run, require_strace
from tracer.errors import BadInput, EnvironmentProblem, SmokeFailedOnOriginal, TracerError
from tracer.explain.diagnose import diagnose
from tracer.explain.outputs import Comparison, compare, suspects
from tracer.fleet.descriptor import read_base_descriptor
from tracer.image.daemon import EngineImages
from tracer.image.layercache import CACHE_ENV, find_seed_ids
from tracer.image.layerwrite import LayerPlan, closed_paths
from tracer.image.model import FlatImage
from tracer.image.output import WrittenImage
from tracer.image.platforms import engine_platform, parse_platform, runnable
from tracer.image.prepare import Prepared, prepare
from tracer.image.reference import ImageRef, RefOptions, default_output, parse_reference
from tracer.image.sharedbase import SharedBase
from tracer.image.sink import publish, write_image
from tracer.image.transports import transport
from tracer.operatorfiles import read_regular
from tracer.profile.document import read_profile_text
from tracer.profile.load import budgets_of
from tracer.profile.model import Profile
from tracer.progress import Progress
from tracer.report import Report, StepSummary, check_report_path
from tracer.static import Closure, Resolver, expand_binaries
from tracer.trace.original import trace_original
from tracer.trace.result import SmokeResult
from tracer.trace.run import run_smoke
from tracer.units import PackageGranularity, package_granularity
from tracer.workdir import workdir  # locked work dirs; sweeps what dead runs left

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What one run is about, decided before any work is done."""

    profile: Profile
    input: ImageRef
    output: ImageRef
    budgets: Budgets
    granularity: str  # file | package | deps
    profile_hash: str | None
    # no host path in it: the same input and profile give the same image anywhere
    comment: str
    recordings: list[Recording] = field(default_factory=list)  # keep.evidence, read


@dataclass
class Analysis:
    """What the image must keep, and why: the keep-list and the evidence behind it."""

    keeplist: KeepList
    closure: Closure
    packages: PackageGranularity | None = None  # with granularity: package or deps
    evidence: list[EvidenceFile] = field(default_factory=list)  # what each recording added


@dataclass
class Seconds:
    """Wall time per phase; phases that overlap (read and trace) each count in full."""

    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(self, phase: str, since: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + time.monotonic() - since

    def rounded(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.phases.items()}
        out["total"] = round(time.monotonic() - self.started, 3)
        return out


def plan_run(profile: Profile, output: str | None, options: RefOptions | None = None,
             *, read_evidence: bool = True) -> Plan:
    """The input and output references (never the same image) and the run's settings.
    `options` (--tls-verify, --cert-dir, --platform) go with both references.
    `read_evidence`: read the keep.evidence recordings (only analysis uses them: a resumed
    run, whose keep-list is saved, need not read up to recording_bytes of each again)."""
    options = options or RefOptions()
    in_ref = parse_reference(profile.image).with_options(options)
    out_text = output or profile.output
    out_ref = (parse_reference(out_text) if out_text else default_output(in_ref)) \
        .with_options(options)
    if out_ref.same_place(in_ref):
        raise BadInput(f"output {out_ref} is the input image {in_ref}; tracer never "
                       "overwrites its input: choose another output")
    # an output that cannot be written is bad input now, not after the trace and the
    # verification (the engine's outputs need only a name here: no engine is asked)
    transport(out_ref).check_output(out_ref)
    budgets = budgets_of(profile)
    digest = (hashlib.sha256(read_regular(profile.source, "profile file", budget="profile_bytes",
                                          limit=budgets.profile_bytes)).hexdigest()
              if profile.source else None)
    # read now: a bad recording is bad input before minutes of tracing, not after
    recordings = [read_recording(Path(f), budgets) for f in profile.keep.evidence] \
        if read_evidence else []
    return Plan(profile, in_ref, out_ref, budgets, profile.keep.granularity,
                digest, f"tracer {__version__}: minimized with profile {profile.name}",
                recordings)


# ---------------------------------------------------------------- the original image


class _Background(Generic[T]):
    """A function run in a thread; `result()` waits for it and re-raises what it raised.

    A daemon thread: after Ctrl-C the main thread cleans up and exits without waiting
    for it (it only reads files in the work dir, which the cleanup removes).
    """

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="read-image", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def pin_engine_image(ref: ImageRef) -> str:
    """`docker-daemon:sha256:ID`: the image an engine tag names now, by its id.

    A tag can be moved while a run works (a build or a pull on the same host retags
    `app:latest`). The read and every container of the traced run resolve the name on
    their own, so a tag would let them see two different images and the keep-list of one
    be written from the other. The id never moves: both use it.
    """
    from tracer.engine import connect
    from tracer.image.daemon import inspect

    engine = connect()
    image = inspect(engine, str(ref.repo_tag))
    if image is None:
        raise BadInput(f"image {ref} is not in {engine.flavour.title}")
    return f"docker-daemon:{image.id}"


def pinned(image: str) -> str:
    """`image` with an engine tag replaced by the id it names now (`pin_engine_image`);
    archives and layouts as they are (their copy in the engine has a private tag)."""
    ref = parse_reference(image)
    return pin_engine_image(ref) if ref.transport == "docker-daemon" else image


def _runs_as_root(plan: Plan, engine_ref: str) -> bool | None:
    """Does the app run as root? None when only the image's user database could tell
    (a name other than root). Read from the engine, without reading the image."""
    user = plan.profile.run.user
    if user is None:
        from tracer.engine import connect
        from tracer.trace.docker_runner import image_config

        user = image_config(connect().sdk, engine_ref).user
    name = user.split(":", 1)[0]
    if name in ("", "root", "0"):
        return True
    return False if name.isdigit() else None


def _trace(plan: Plan, engine_ref: str, work: Path, progress: Progress, seconds: Seconds,
           privileged_programs: bool | None) -> SmokeResult:
    progress.phase("traced run of the original image")
    t0 = time.monotonic()
    trace = trace_original(plan.profile, engine_ref, workdir=work / "trace", progress=progress,
                           budgets=plan.budgets, privileged_programs=privileged_programs)
    seconds.add("trace", t0)
    if trace.passed:
        progress.done(f"{len(trace.accesses):,} accesses recorded")
    else:
        progress.done("FAILED")
    return trace


def read_and_trace(plan: Plan, engine: EngineImages, work: Path, progress: Progress,
                   seconds: Seconds, input_dir: Path | None = None
                   ) -> tuple[Prepared, SmokeResult]:
    """The input read and flattened, and its smoke test traced: the same image, by id.

    An engine image the app runs as root in is traced at once while it is read (the run
    needs only the image in the engine, not the index). Otherwise the image is read
    first: another input must be loaded into the engine before it can run, and a
    non-root app needs to know whether the image has setuid or file-capability programs
    (strace's cheap seccomp filter would cancel their privilege). An engine image is
    pinned to its id first (`pin_engine_image`). The index goes to `input_dir` (default:
    WORK/input), which must outlive the run when it is saved (tracer.stage).
    """
    profile = plan.profile
    input_dir = input_dir or work / "input"
    image = pinned(profile.image)
    if plan.input.transport == "docker-daemon":
        progress.note(f"{plan.input} is {image.partition(':')[2]}: read and traced by "
                      "that id")
        engine_ref = str(parse_reference(image).repo_tag)
        if _runs_as_root(plan, engine_ref):
            quiet = Progress(quiet=True)
            reader = _Background(lambda: prepare(image, profile.name, input_dir,
                                                 engine, quiet, seconds.phases, plan.budgets))
            trace = _trace(plan, engine_ref, work, progress, seconds, None)
            prepared = reader.result()
            progress.note(f"read {plan.input} alongside the traced run in "
                          f"{seconds.phases.get('read', 0.0):.1f}s: "
                          f"{len(prepared.flat.entries):,} paths, "
                          f"{prepared.flat.content_size():,} bytes")
            return prepared, trace
        prepared = prepare(image, profile.name, input_dir, engine, progress,
                           seconds.phases, plan.budgets)
    else:
        if plan.input.options.platform is not None:  # said before anything is pulled
            check_runnable(str(plan.input.options.platform))
        prepared = prepare(plan.input, profile.name, input_dir, engine, progress,
                           seconds.phases, plan.budgets)
        check_runnable(prepared.platform)
    trace = _trace(plan, prepared.engine_ref, work, progress, seconds,
                   prepared.flat.has_privileged_programs())
    return prepared, trace


def platform_runs(platform: str | None) -> tuple[str | None, str | None]:
    """How an image of `platform` runs on this host ("native", or the binfmt_misc handler
    that emulates it) and, when it cannot, why; (None, None) when the image names no
    platform tracer can read (the engine then decides)."""
    if not platform:
        return None, None
    try:
        wanted = parse_platform(platform, "the image's platform")
    except BadInput:
        return None, None
    here = runnable(engine_platform())
    why = here.why_not(wanted)
    return (None, why) if why else (here.describe(wanted), None)


def check_runnable(platform: str) -> None:
    """Exit 4, before anything runs, for an image of a platform this host cannot run (an
    arm64 image on an amd64 host without qemu-user): its smoke test could only fail, and
    that is no verdict on the image. Engine images are left to the engine, which runs
    what it can."""
    _, why = platform_runs(platform)
    if why is not None:
        raise EnvironmentProblem(f"cannot run the smoke test of a {platform} image here: {why}")


def fail_on_original(image: ImageRef, trace: SmokeResult) -> SmokeFailedOnOriginal:
    """Exit 3 for a smoke test that fails on the original image `image`, with the evidence
    of the failed step."""
    evidence = trace.evidence()
    notes = "".join(f"\n  note: {n}" for n in trace.notes)
    return SmokeFailedOnOriginal(
        f"the smoke test fails on the original image {image}: {trace.failure}{notes}"
        + (f"\n{evidence}" if evidence else "")
        + "\na profile that fails on the original cannot prove anything about the minimized "
        "one; fix the profile (or the image) first")


# ---------------------------------------------------------------- analysis


def static_closure(profile: Profile, prepared: Prepared, trace: SmokeResult,
                   budgets: Budgets, recorded: list[str] | None = None
                   ) -> tuple[Closure, dict[str, str]]:
    """ELF closure of entrypoint/cmd, exec'd programs, the programs and shared objects
    recordings saw (`recorded`) and keep.binaries, and which closure roots came from which
    keep.binaries entry (globs and bare names expanded in the image; an entry that matches
    nothing is bad input naming it)."""
    config = prepared.config
    env = config.environment(profile.run.env)
    roots: list[str] = []
    argv = config.command(profile.run.entrypoint, profile.run.cmd)
    if argv:
        roots.append(argv[0])
    roots += sorted({p for p in trace.execs if p})  # the order they ran in varies run to run
    roots += recorded or []
    cwd = profile.run.workdir or config.workdir or "/"  # where the container starts
    binaries = expand_binaries(prepared.root, profile.keep.binaries, env.get("PATH"), cwd=cwd)
    binaries.require_all()
    roots += binaries.paths()
    from_rules = {path: rule for rule, paths in binaries.matched.items() for path in paths}
    closure = Resolver(prepared.root, env=env, cwd=cwd, dlopens=IMPLICIT_DLOPENS,
                       budgets=budgets).closure(dict.fromkeys(roots))
    return closure, from_rules


def analyse(plan: Plan, prepared: Prepared, trace: SmokeResult) -> Analysis:
    """The keep-list: every kind of evidence, then (package and deps granularity) whole
    units, and (deps) what they declare they depend on."""
    profile = plan.profile
    recorded = recorded_roots(plan.recordings, prepared.root)
    closure, binaries = static_closure(profile, prepared, trace, plan.budgets, recorded)
    evidence: list[EvidenceFile] = []
    builder = collect_evidence(profile, prepared, trace, closure, binaries, plan.budgets,
                               plan.recordings, evidence)
    file_level = builder.build()
    if plan.granularity == "file":
        return Analysis(file_level, closure, evidence=evidence)
    packages = package_granularity(
        builder, file_level, prepared.root, prepared.flat.entries,
        env=prepared.config.environment(profile.run.env), budgets=plan.budgets,
        deps=plan.granularity == "deps")
    return Analysis(packages.keeplist, closure, packages, evidence)


def biggest(flat: FlatImage, kept: dict[str, list[Reason]], n: int = 10
            ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The largest kept files, and directories (up to 3 levels) by kept bytes."""
    files = []
    dirs: Counter[str] = Counter()
    for path in kept:
        entry = flat.entries.get(path)
        if entry is None or entry.kind != "file":
            continue
        files.append((path, entry.size))
        parts = path.split("/")[1:-1]
        for depth in range(1, min(len(parts), 3) + 1):
            dirs["/" + "/".join(parts[:depth])] += entry.size
    files.sort(key=lambda x: (-x[1], x[0]))
    return files[:n], sorted(dirs.items(), key=lambda x: (-x[1], x[0]))[:n]


def _report_analysis(report: Report, flat: FlatImage, analysis: Analysis) -> None:
    keeplist = analysis.keeplist
    kept = keeplist.kept
    report.unresolved_libraries = sorted(
        f"{m.name} (needed by {' -> '.join(m.needed_by) or 'a program of the image'})"
        for m in analysis.closure.missing)
    report.kept = keeplist.counts()
    report.excluded = len(keeplist.excluded)
    report.excluded_paths = keeplist.excluded_json()
    report.excluded_but_kept = keeplist.overridden_json()
    report.unmatched_keep_paths = keeplist.unmatched_keep_paths
    report.size_after = size_of(flat.entries, kept)
    report.files_after = sum(1 for p in kept if (e := flat.entries.get(p)) is not None
                             and e.kind != "dir")
    report.biggest_files, report.biggest_dirs = biggest(flat, kept)
    report.evidence = [e.to_json() for e in analysis.evidence]
    if analysis.packages is not None:
        report.granularity = analysis.packages.granularity
        report.size_file_granularity = analysis.packages.sizes.file_total
        report.sizes_by_granularity = analysis.packages.sizes.totals
        report.package_granularity = analysis.packages.to_json()
        report.package_sizes_text = analysis.packages.sizes.format_text()


def write_run_files(report: Report, report_path: Path, flat: FlatImage,
                    analysis: Analysis, path_env: str | None) -> None:
    """REPORT.keeplist and REPORT.paths.gz beside the report: what `tracer why` reads."""
    keeplist_path = report_path.with_name(report_path.stem + ".keeplist")
    analysis.keeplist.write(keeplist_path)
    write_path_index(flat, report_path.with_name(report_path.stem + ".paths.gz"),
                     path_env=path_env)
    report.keeplist_file = str(keeplist_path)


# ---------------------------------------------------------------- result


def _steps(result: SmokeResult) -> list[StepSummary]:
    return [StepSummary(s.label, s.passed, round(s.seconds, 3), s.message,
                        "" if s.passed else s.output) for s in result.steps]


def verify(plan: Plan, candidate: ImageRef, work: Path, progress: Progress,
           seconds: Seconds, privileged_programs: bool | None = None) -> SmokeResult:
    """The same smoke test, untraced, on the candidate (killed once judged).
    `privileged_programs=False`: the original has no setuid/setgid or file-capability
    programs, so neither has the candidate (its containers get no-new-privileges)."""
    progress.phase("verifying the minimized image (same smoke test, untraced)")
    t0 = time.monotonic()
    result = run_smoke(plan.profile, str(candidate.repo_tag), traced=False,
                       workdir=work / "verify", progress=progress, budgets=plan.budgets,
                       privileged_programs=privileged_programs)
    seconds.add("verify", t0)
    progress.done("passed" if result.passed else "FAILED")
    return result


def silent_changes(plan: Plan, prepared: Prepared, trace: SmokeResult,
                   verification: SmokeResult, work: Path, progress: Progress,
                   seconds: Seconds, original: Callable[[], str] | None = None
                   ) -> Comparison:
    """Checks that passed on the candidate but print otherwise than on the original (an
    image that exits 0 with the wrong output is broken silently: docs/profile.md, "Silent
    changes fail too"). Most outputs come out alike and cost nothing more; when one does not, the
    smoke test runs once more on the original, untraced, to tell a change from output
    that varies between runs (a timestamp, a random token). `original` gives the engine
    ref of the original when the run has none any more (a resumed run, tracer.stage)."""
    differ = suspects(trace, verification)
    if not differ:
        return Comparison([], [])
    more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
    progress.phase(f"{differ[0]}{more} differs from the original's: the smoke test again "
                   "on the original image, untraced, to tell a change from output that varies")
    t0 = time.monotonic()
    if not prepared.engine_ref and original is not None:
        prepared.engine_ref = original()
    again = run_smoke(plan.profile, prepared.engine_ref, traced=False,
                      workdir=work / "original-again", progress=progress, budgets=plan.budgets)
    found = compare([trace, again], verification)
    seconds.add("compare", t0)
    progress.done(f"{len(found.changes)} changed" if found.changes
                  else "it varies on the original too")
    return found


def diagnose_failure(plan: Plan, candidate: ImageRef, prepared: Prepared, trace: SmokeResult,
                     kept: dict[str, list[Reason]], work: Path, progress: Progress,
                     seconds: Seconds, report: Report,
                     comparison: Comparison | None = None) -> None:
    """Trace the smoke test on the candidate and name what it misses of the original."""
    progress.phase("diagnosing: the same smoke test, traced, on the minimized image")
    t0 = time.monotonic()
    traced = run_smoke(plan.profile, str(candidate.repo_tag), traced=True,
                       workdir=work / "diagnose", progress=progress, budgets=plan.budgets)
    diagnosis = diagnose(traced, prepared.root, plan.profile.exclude, original_run=trace,
                         present=kept.__contains__,
                         env=prepared.config.environment(plan.profile.run.env))
    if comparison is not None:
        diagnosis.changed_outputs(comparison.changes, comparison.not_compared)
    if plan.profile.source is not None:  # the fix is then placed in the operator's file
        with contextlib.suppress(BadInput):  # gone or unreadable now: the fix unplaced
            diagnosis.profile_text = read_profile_text(plan.profile.source,
                                                       plan.budgets.profile_bytes)
            diagnosis.profile_file = str(plan.profile.source)
    report.diagnosis = diagnosis.to_json()
    report.diagnosis_text = diagnosis.format_text()
    seconds.add("diagnose", t0)
    progress.done(f"{len(diagnosis.missing)} missing file(s) found")


def _report_original(report: Report, flat: FlatImage, trace: SmokeResult) -> None:
    """What the report says of the original image and its traced run."""
    report.size_before = flat.content_size()
    report.files_before = sum(1 for e in flat.entries.values() if e.kind != "dir")
    report.recorders = list(trace.recorders)
    report.recorder_notes = list(trace.notes)
    report.original_steps = _steps(trace)


def _publish(plan: Plan, engine: EngineImages, candidate: ImageRef, flat: FlatImage,
             keep: list[str], work: Path, progress: Progress, seconds: Seconds,
             report: Report, base: SharedBase | None = None) -> None:
    """Write the verified candidate to the output reference; the report gets its digest."""
    progress.phase(f"publishing {plan.output}")
    t0 = time.monotonic()
    published = publish(engine, candidate, plan.output, flat, keep, work,
                        comment=plan.comment, profile_hash=plan.profile_hash, base=base)
    report.output_digest = published.digest
    report.output_unchanged = published.unchanged
    if published.push_seconds is not None:
        seconds.phases["push"] = seconds.phases.get("push", 0.0) + published.push_seconds
    seconds.add("publish", t0)
    progress.done(f"unchanged: it already holds {published.digest}"
                  if published.unchanged else f"written: {published.digest}")


@dataclass
class Analysed:
    """A run up to its keep-list: what writing and verifying the image start from."""

    prepared: Prepared
    trace: SmokeResult
    kept: dict[str, list[Reason]]

    @property
    def keep(self) -> list[str]:
        return sorted(self.kept)


def analyse_run(plan: Plan, engine: EngineImages, work: Path, progress: Progress,
                seconds: Seconds, report: Report, report_path: Path | None,
                input_dir: Path | None = None) -> Analysed:
    """Read and trace the original (exit 3 when its smoke test fails), make the keep-list
    and write the run files beside the report."""
    profile = plan.profile
    prepared, trace = read_and_trace(plan, engine, work, progress, seconds, input_dir)
    flat = prepared.flat
    report.input_digest, report.platform = prepared.input_digest, prepared.platform
    report.platform_runs = platform_runs(prepared.platform)[0]
    _report_original(report, flat, trace)
    if not trace.passed:
        raise fail_on_original(plan.input, trace)

    progress.phase("ELF closure and keep-list"
                   + (f" ({plan.granularity} granularity)"
                      if plan.granularity != "file" else ""))
    t0 = time.monotonic()
    analysis = analyse(plan, prepared, trace)
    seconds.add("analyse", t0)
    _report_analysis(report, flat, analysis)
    if report_path is not None:
        path_env = prepared.config.environment(profile.run.env).get("PATH")
        write_run_files(report, report_path, flat, analysis, path_env)
    progress.done(f"{report.files_after:,} of {report.files_before:,} files kept")
    return Analysed(prepared, trace, analysis.keeplist.kept)


def finish_run(plan: Plan, engine: EngineImages, work: Path, progress: Progress,
               seconds: Seconds, report: Report, analysed: Analysed,
               base: SharedBase | None = None,
               original: Callable[[], str] | None = None,
               publish: bool = True) -> ImageRef | None:
    """Write the candidate (on `base`, a fleet's shared base, when given), verify it with
    the same smoke test, compare what it prints, then publish it (unless not `publish`:
    one image of an index, published with the others) or diagnose it. The verified
    candidate in the engine, or None when it failed."""
    profile = plan.profile
    prepared, trace = analysed.prepared, analysed.trace
    flat = prepared.flat
    progress.phase("writing the minimized image" + (" on the fleet's shared base"
                                                    if base is not None else ""))
    t0 = time.monotonic()
    keep = analysed.keep
    candidate = engine.temp_ref(profile.name, "candidate")
    written = write_image(flat, keep, candidate, workdir=work / "candidate",
                          comment=plan.comment, profile_hash=plan.profile_hash, base=base)
    seconds.add("write", t0)
    if base is not None:
        report.shared_base = on_base_report(base, flat, keep, written)
    progress.done()

    verification = verify(plan, candidate, work, progress, seconds,
                          flat.has_privileged_programs())
    report.verification_steps = _steps(verification)
    comparison = None
    if verification.passed:
        comparison = silent_changes(plan, prepared, trace, verification, work,
                                    progress, seconds, original)
        report.output_changes = [c.to_json() for c in comparison.changes]
        report.output_not_compared = comparison.not_compared
        if comparison.changes:
            verification.passed = False
            verification.failure = comparison.changes[0].message + (
                f" (and {len(comparison.changes) - 1} more)"
                if len(comparison.changes) > 1 else "")
    report.verified = verification.passed
    if not verification.passed:
        report.failure = verification.failure
        if base is not None:
            report.failure = f"{report.failure}\n{shared_base_hint(report.shared_base)}"
        diagnose_failure(plan, candidate, prepared, trace, analysed.kept, work,
                         progress, seconds, report, comparison)
        return None
    if publish:
        _publish(plan, engine, candidate, flat, keep, work, progress, seconds, report,
                 base)
    return candidate


def on_base_report(base: SharedBase, flat: FlatImage, keep: list[str],
                   written: WrittenImage) -> dict[str, Any]:
    """The report's `shared_base`: the base under the image, its own layer, and what of
    the base it shows without keeping it (the price of sharing), biggest first."""
    placed = base.place(flat, keep)
    entries = base.flat.entries
    extra_files = sorted(((p, entries[p].size) for p in placed.extra
                          if entries[p].kind == "file"), key=lambda x: (-x[1], x[0]))
    return {"fleet": base.fleet, "descriptor": base.descriptor,
            "diff_id": written.layers[0].diff_id, "base_bytes": written.layers[0].size,
            "own_diff_id": written.layer_digest, "own_bytes": written.layer_size,
            "single_layer_bytes": LayerPlan(flat, closed_paths(flat, keep)).size,
            "kept_in_base": placed.in_base, "whiteouts": len(placed.whiteouts),
            "extra_paths": len(placed.extra), "extra_bytes": placed.extra_bytes,
            "whiteout_paths": placed.whiteouts,
            "biggest_extra": [{"path": p, "bytes": b} for p, b in extra_files[:10]]}


def shared_base_hint(info: dict[str, Any] | None) -> str:
    """What to try when an image fails on the shared base: what it carries of it."""
    n = (info or {}).get("extra_paths", 0)
    return (f"note: on the fleet's shared base, the image also has {n} path(s) only other "
            "images of the fleet keep (report: shared_base); if one of them changes what the "
            "application does, minimize it without --share-base to compare")


def _stage_seconds(seconds: Seconds, before: float) -> dict[str, float]:
    out = seconds.rounded()
    out["total"] = round(out["total"] + before, 3)
    return out


def minimize(profile: Profile, *, output: str | None = None, report_path: Path | None = None,
             progress: Progress | None = None, options: RefOptions | None = None,
             stop_after: str | None = None, state: Path | None = None,
             resume: Path | None = None, shared_base: Path | None = None,
             wait_for: Callable[[], str | None] | None = None) -> Report:
    """Run the whole pipeline; return the report (raise TracerError subclasses on failure).

    Raises SmokeFailedOnOriginal (exit 3) before any image is written when the profile's
    smoke test fails on the original image (the report, when asked for, says why). A
    failed verification returns a report with verified=False and leaves the output
    reference untouched.

    In two steps (tracer.stage, for `tracer batch --share-base`): `stop_after="analyse"`
    with `state` saves the run once its keep-list is made (report.stage "analysed");
    `resume` takes it up from that directory and finishes it, on the fleet base that
    `shared_base` (a base descriptor, fleet.py) describes. With `wait_for` as well, the
    same process waits once it has saved the run, and finishes it itself on what
    `wait_for()` returns: a base descriptor's path, "" for no base, or None to stop there
    (the saved run is then finished by a --resume).
    """
    progress = progress or Progress()
    seconds = Seconds()
    if report_path is not None:
        check_report_path(report_path)
    if stop_after not in (None, "analyse"):
        raise BadInput(f"--stop-after {stop_after}: the only stage to stop after is analyse")
    if stop_after and state is None:
        raise BadInput("--stop-after analyse needs --state DIR (where the run is saved)")
    if wait_for is not None and stop_after is None:
        raise BadInput("--then-wait goes with --stop-after analyse")
    if shared_base is not None and resume is None:
        raise BadInput("--shared-base needs --resume DIR (a run saved by --stop-after)")
    plan = plan_run(profile, output, options, read_evidence=resume is None)
    require_strace()
    engine = EngineImages()
    require_engine_can_run(profile)
    report = Report(name=profile.name, image=str(plan.input), output=str(plan.output),
                    tracer_version=__version__, granularity=plan.granularity)
    before = 0.0
    base: SharedBase | None = None
    try:
        with workdir() as work:
            if resume is not None:
                saved = stage.load(resume, plan.profile_hash)
                report, before = saved.report, saved.seconds
                seconds.phases.update(saved.phases)
                analysed = Analysed(stage.prepared_of(saved, plan.budgets.path_walk),
                                    saved.trace, saved.kept)
                base = load_shared_base(shared_base, saved.input_layers) \
                    if shared_base is not None else None
                report.stage = None
                finish_run(plan, engine, work, progress, seconds, report, analysed, base,
                           original=lambda: _load_original(analysed.prepared, engine, work,
                                                           profile.name))
                return report
            input_dir = statefile.private_dir(state) / "input" if state is not None else None
            analysed = analyse_run(plan, engine, work, progress, seconds, report, report_path,
                                   input_dir)
            if stop_after is not None:
                assert state is not None
                report.stage = "analysed"
                t_name = analysed.prepared.engine_ref
                stage.save(stage.Stage(plan.profile_hash, analysed.prepared.ref,
                                       analysed.prepared.flat, t_name, analysed.trace,
                                       analysed.kept, report, dict(seconds.phases),
                                       time.monotonic() - seconds.started),
                           state, temp_engine_ref=t_name in engine.tags)
                if wait_for is None:
                    return report
                progress.note(f"analysed and saved in {state}; waiting for the fleet's "
                              "shared base")
                t0 = time.monotonic()
                decided = wait_for()
                waited = time.monotonic() - t0
                seconds.started += waited  # the wait is the fleet's, not this job's work
                seconds.phases["fleet_wait"] = waited
                if decided is None:
                    return report  # stopped here: --resume STATE finishes it
                report.stage = None
                base = load_shared_base(Path(decided), stage.input_layers(
                    analysed.prepared.flat)) if decided else None
            finish_run(plan, engine, work, progress, seconds, report, analysed, base)
    except TracerError as exc:
        report.failure = report.failure or str(exc)
        raise
    except Exception as exc:
        report.failure = report.failure or f"internal error: {type(exc).__name__}: {exc}"
        raise
    finally:
        engine.cleanup()
        report.seconds = _stage_seconds(seconds, before)
        if report_path is not None and report.original_steps:
            report.write(report_path)
    return report


def _load_original(prepared: Prepared, engine: EngineImages, work: Path, name: str) -> str:
    """Load the original into the engine again (a resumed run of an input the engine did
    not hold: its first step's copy is gone), as a one-layer copy under a temp tag."""
    tmp = engine.temp_ref(name, "input")
    write_image(prepared.flat, list(prepared.flat.entries), tmp, workdir=work / "load",
                comment="tracer: one-layer copy of the input to run it")
    return str(tmp.repo_tag)


def load_shared_base(descriptor: Path, input_layers: list[str]) -> SharedBase:
    """The fleet's base a descriptor names (fleet.py), on the batch's index of the lowest
    layers; refused when the input does not stand on those layers."""
    base = read_base_descriptor(descriptor)
    if input_layers[:len(base.layers)] != base.layers:
        raise BadInput(f"{descriptor}: the shared base is made of layers this image does "
                       "not start with (its input changed since it was analysed?)")
    seed = find_seed_ids(base.layers)
    if seed is None or seed.diff_ids != base.layers:
        raise BadInput(f"{descriptor}: the batch's index of the base's layers is not in "
                       f"{CACHE_ENV}: the shared base can only be written inside its batch")
    return SharedBase(seed.flat, len(base.layers), closed_paths(seed.flat, base.paths),
                      base.diff_id, created_by=f"tracer {__version__}: shared base "
                      f"{base.fleet}", comment=f"tracer {__version__}: the fleet's shared "
                      f"base of layers {seed.chain_id}", fleet=base.fleet,
                      descriptor=str(descriptor))
