"""`tracer minimize`: the whole pipeline, in one direction (README.md, "Layout").

profile → image → flattened root → traced run of the original (must pass, else exit 3)
→ ELF closure → keep-list → candidate image in the engine → verification run (untraced)
→ only then the output reference is written → report. The output is never replaced by
an image that did not pass its smoke test, and every container, temp image and temp
directory is removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

from tracer import __version__
from tracer.budgets import Budgets
from tracer.diagnose import diagnose
from tracer.environment import require_strace
from tracer.errors import BadInput, SmokeFailedOnOriginal, TracerError
from tracer.evidence import build_keeplist, write_path_index
from tracer.image.daemon import EngineImages
from tracer.image.model import FlatImage
from tracer.image.prepare import Prepared, prepare
from tracer.image.reference import default_output, parse_reference
from tracer.image.sink import publish, write_image
from tracer.keep_policy import IMPLICIT_DLOPENS
from tracer.keeplist import Reason, size_of
from tracer.profile import budgets_of
from tracer.profile_model import Profile
from tracer.progress import Progress
from tracer.report import Report, StepSummary
from tracer.static import Closure, Resolver, expand_binaries
from tracer.trace.original import trace_original
from tracer.trace.result import SmokeResult
from tracer.trace.run import run_smoke
from tracer.workdir import workdir  # locked work dirs; sweeps what dead runs left


def static_closure(profile: Profile, prepared: Prepared, trace: SmokeResult,
                   budgets: Budgets) -> tuple[Closure, dict[str, str]]:
    """ELF closure of entrypoint/cmd, exec'd programs and keep.binaries, and which closure
    roots came from which keep.binaries entry (globs and bare names expanded in the image;
    an entry that matches nothing is bad input naming it)."""
    config = prepared.config
    env = config.environment(profile.run.env)
    roots: list[str] = []
    argv = config.command(profile.run.entrypoint, profile.run.cmd)
    if argv:
        roots.append(argv[0])
    roots += [p for p in trace.execs if p]
    binaries = expand_binaries(prepared.root, profile.keep.binaries, env.get("PATH"),
                               cwd=profile.run.workdir or config.workdir or "/")
    binaries.require_all()
    roots += binaries.paths()
    from_rules = {path: rule for rule, paths in binaries.matched.items() for path in paths}
    closure = Resolver(prepared.root, env=env, dlopens=IMPLICIT_DLOPENS,
                       budgets=budgets).closure(dict.fromkeys(roots))
    return closure, from_rules


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


def _steps(result: SmokeResult) -> list[StepSummary]:
    return [StepSummary(s.label, s.passed, round(s.seconds, 3), s.message) for s in result.steps]


def _profile_hash(profile: Profile) -> str | None:
    """sha256 of the profile file (what `tracer batch` fingerprints too)."""
    return hashlib.sha256(profile.source.read_bytes()).hexdigest() if profile.source else None


def minimize(profile: Profile, *, output: str | None = None, report_path: Path | None = None,
             progress: Progress | None = None) -> Report:
    """Run the whole pipeline; return the report (raise TracerError subclasses on failure).

    Raises SmokeFailedOnOriginal (exit 3) before anything is written when the profile's
    smoke test fails on the original image. A failed verification returns a report with
    verified=False and leaves the output reference untouched.
    """
    progress = progress or Progress()
    started = time.monotonic()
    budgets = budgets_of(profile)
    seconds: dict[str, float] = {}
    out_text = output or profile.output
    in_ref = parse_reference(profile.image)
    out_ref = parse_reference(out_text) if out_text else default_output(in_ref)
    if out_ref.same_place(in_ref):
        raise BadInput(f"output {out_ref} is the input image {in_ref}; tracer never "
                       "overwrites its input: choose another output")
    require_strace()
    engine = EngineImages()
    report = Report(name=profile.name, image=str(in_ref), output=str(out_ref),
                    tracer_version=__version__)
    try:
        with workdir() as work:
            prepared = prepare(profile.image, profile.name, work / "input", engine, progress,
                               seconds, budgets)
            flat = prepared.flat
            report.size_before = flat.content_size()
            report.files_before = sum(1 for e in flat.entries.values() if e.kind != "dir")

            progress.phase("traced run of the original image")
            t0 = time.monotonic()
            trace = trace_original(profile, prepared.engine_ref, workdir=work / "trace",
                                   progress=progress)
            seconds["trace"] = time.monotonic() - t0
            report.recorders = list(trace.recorders)
            report.recorder_notes = list(trace.notes)
            report.original_steps = _steps(trace)
            if not trace.passed:
                progress.done("FAILED")
                raise SmokeFailedOnOriginal(
                    f"the smoke test fails on the original image {in_ref}: {trace.failure}\n"
                    "a profile that fails on the original cannot prove anything about the "
                    "minimized one; fix the profile (or the image) first")
            progress.done(f"{len(trace.accesses):,} accesses recorded")

            progress.phase("ELF closure and keep-list")
            t0 = time.monotonic()
            closure, binaries = static_closure(profile, prepared, trace, budgets)
            keeplist = build_keeplist(profile, prepared, trace, closure, binaries)
            seconds["analyse"] = time.monotonic() - t0
            report.unresolved_libraries = sorted(
                f"{m.name} (needed by {' -> '.join(m.needed_by)})" for m in closure.missing)
            kept = keeplist.kept
            report.kept = keeplist.counts()
            report.excluded = len(keeplist.excluded)
            report.excluded_paths = keeplist.excluded_json()
            report.unmatched_keep_paths = keeplist.unmatched_keep_paths
            report.size_after = size_of(flat.entries, kept)
            report.files_after = sum(1 for p in kept if (e := flat.entries.get(p)) is not None
                                     and e.kind != "dir")
            report.biggest_files, report.biggest_dirs = biggest(flat, kept)
            if report_path is not None:
                keeplist_path = report_path.with_name(report_path.stem + ".keeplist")
                keeplist.write(keeplist_path)
                write_path_index(flat, report_path.with_name(report_path.stem + ".paths.gz"))
                report.keeplist_file = str(keeplist_path)
            progress.done(f"{report.files_after:,} of {report.files_before:,} files kept")

            progress.phase("writing the minimized image")
            t0 = time.monotonic()
            keep = sorted(kept)
            candidate = engine.temp_ref(profile.name, "candidate")
            # no host path in it: the same input and profile give the same image anywhere
            comment = f"tracer {__version__}: minimized with profile {profile.name}"
            write_image(flat, keep, candidate, workdir=work / "candidate", comment=comment,
                        profile_hash=_profile_hash(profile))
            seconds["write"] = time.monotonic() - t0
            progress.done()

            progress.phase("verifying the minimized image (same smoke test, untraced)")
            t0 = time.monotonic()
            verification = run_smoke(profile, f"{candidate.name}:{candidate.tag}",
                                     traced=False, workdir=work / "verify", progress=progress)
            seconds["verify"] = time.monotonic() - t0
            report.verification_steps = _steps(verification)
            report.verified = verification.passed
            if not verification.passed:
                report.failure = verification.failure
                progress.done("FAILED")
                progress.phase("diagnosing: the same smoke test, traced, on the minimized image")
                t0 = time.monotonic()
                traced = run_smoke(profile, f"{candidate.name}:{candidate.tag}", traced=True,
                                   workdir=work / "diagnose", progress=progress)
                diagnosis = diagnose(traced, prepared.root, profile.exclude,
                                     original_run=trace, present=kept.__contains__)
                report.diagnosis = diagnosis.to_json()
                report.diagnosis_text = diagnosis.format_text()
                seconds["diagnose"] = time.monotonic() - t0
                progress.done(f"{len(diagnosis.missing)} missing file(s) found")
            else:
                progress.done("passed")
                t0 = time.monotonic()
                published = publish(engine, candidate, out_ref, flat, keep, work,
                                    comment=comment, profile_hash=_profile_hash(profile))
                report.output_digest = published.digest
                report.output_unchanged = published.unchanged
                if published.unchanged:
                    progress.phase(f"publishing {out_ref}")
                    progress.done(f"unchanged: it already holds {published.digest}")
                seconds["write"] += time.monotonic() - t0
    except SmokeFailedOnOriginal:
        # Nothing is written: the run proved nothing about a minimized image.
        report_path = None
        raise
    except TracerError as exc:
        report.failure = report.failure or str(exc)
        raise
    except Exception as exc:
        report.failure = report.failure or f"internal error: {type(exc).__name__}: {exc}"
        raise
    finally:
        engine.cleanup()
        report.seconds = {k: round(v, 3) for k, v in seconds.items()}
        report.seconds["total"] = round(time.monotonic() - started, 3)
        if report_path is not None and report.original_steps:
            report.write(report_path)
    return report

