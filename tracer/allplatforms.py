"""`tracer minimize --all-platforms`: every platform of a multi-platform registry image,
minimized, traced and verified separately, published as one image index.

The input's tag is resolved once to its index; each image of it (one per platform) goes
through the same stages as a single run (pipeline.py), in one work directory, with its
own report and keep-list beside the main one (`REPORT.linux-arm64.json`). Only when every
platform passed is the output written: an OCI image index of the verified images, pushed
as a whole (registry.write_index), so a deployment never sees an index that lost a
platform or holds an unverified one.

Which platforms run here is decided before any work (platforms.runnable): the engine's
own, i386 on an amd64 kernel, and those a binfmt_misc handler with the F flag emulates
(the report says which, per platform). A platform that cannot run is a failure, exit 4,
named with the reason, and nothing is written: an index without it would break every
node of that platform, silently. Minimize the platforms this host runs one at a time
with `--platform`, or run tracer where all of them run (qemu-user-static registers the
handlers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from tracer import __version__
from tracer.environment import require_strace
from tracer.errors import BadInput, EnvironmentProblem, TracerError
from tracer.image.daemon import EngineImages
from tracer.image.output import OneLayer
from tracer.image.platforms import Platform, engine_platform, runnable
from tracer.image.reference import RefOptions
from tracer.image.registry import PlatformImage, RegistryTransport, write_index
from tracer.image.sink import one_layer
from tracer.pipeline import Plan, Seconds, analyse_run, finish_run, plan_run
from tracer.profile.model import Profile
from tracer.progress import Progress
from tracer.report import Report, check_report_path
from tracer.workdir import workdir


def minimize_all_platforms(profile: Profile, *, output: str | None = None,
                           report_path: Path | None = None, progress: Progress | None = None,
                           options: RefOptions | None = None, stop_after: str | None = None,
                           state: Path | None = None, resume: Path | None = None,
                           shared_base: Path | None = None,
                           wait_for: Callable[[], str | None] | None = None) -> Report:
    """Every platform of the input's index, each verified; the output an index of them
    (module docstring). The returned report is the engine's own platform's (or the
    first's), with `platforms` summing up each. A run in two steps (a fleet's shared
    base) is one image's: refused here."""
    if stop_after or state or resume or shared_base or wait_for:
        raise BadInput("--all-platforms runs every platform in one go: it does not go with "
                       "--stop-after, --state, --resume or --shared-base (nor with "
                       "tracer batch --share-base)")
    progress = progress or Progress()
    seconds = Seconds()
    if report_path is not None:
        check_report_path(report_path)
    if options is not None and options.platform is not None:
        raise BadInput("--platform and --all-platforms exclude each other")
    plan = plan_run(profile, output, options)
    if plan.input.transport != "docker" or plan.output.transport != "docker":
        raise BadInput("--all-platforms reads a multi-platform image from a registry and "
                       "writes an image index to one: input and output must be docker://")
    require_strace()
    engine = EngineImages()
    registry = RegistryTransport()
    reports: list[tuple[Report, Path | None]] = []
    main: Report | None = None
    try:
        with workdir() as work:
            progress.phase(f"resolving {plan.input}")
            resolved = registry.resolve(plan.input, work / "resolve", plan.budgets)
            entries = registry.entries(resolved) if resolved.is_index else []
            progress.done(f"{resolved.digest}: " + (", ".join(str(e.platform)
                                                                for e in entries)
                                                      if resolved.is_index else "one image"))
            if not entries:
                raise BadInput(f"{plan.input} names {resolved.digest}, a single image, not a "
                               "multi-platform index: minimize it without --all-platforms")
            here = runnable(engine_platform())
            cannot = [why for e in entries if (why := here.why_not(e.platform))]
            if cannot:
                raise EnvironmentProblem(
                    f"--all-platforms: {len(cannot)} of the {len(entries)} platforms of "
                    f"{plan.input} cannot run on this host, and an index without them would "
                    "break those nodes; nothing was done:\n  " + "\n  ".join(cannot)
                    + "\nrun tracer where every platform runs, or minimize the runnable ones "
                    "one at a time with --platform")
            native = engine_platform()
            order = sorted(entries, key=lambda e: not native.matches(e.platform))
            verified: list[PlatformImage] = []
            for entry in order:
                sub = _platform_plan(plan, resolved.digest, entry.platform)
                report = Report(name=profile.name, image=str(plan.input),
                                output=str(plan.output), tracer_version=__version__,
                                granularity=plan.granularity)
                main = main or report
                progress.note(f"platform {entry.platform} ({here.describe(entry.platform)})")
                path = None if report_path is None else report_path if report is main else \
                    report_path.with_name(f"{report_path.stem}.{entry.platform.slug}.json")
                reports.append((report, path))
                candidate = _one_platform(sub, engine, work / entry.platform.slug, progress,
                                          seconds, report, path)
                report.platform_runs = here.describe(entry.platform)
                if candidate is not None:
                    verified.append(PlatformImage(entry.platform, *candidate))
            assert main is not None
            if len(verified) == len(order):
                progress.phase(f"publishing {plan.output} (an index of {len(verified)} "
                               "verified images)")
                t0 = time.monotonic()
                written = write_index(verified, plan.output, work / "output")
                if written.push_seconds is not None:
                    seconds.phases["push"] = written.push_seconds
                seconds.add("publish", t0)
                for report, _ in reports:
                    report.output_digest = written.digest
                    report.output_unchanged = written.unchanged
                progress.done(f"unchanged: it already holds {written.digest}"
                              if written.unchanged else f"written: {written.digest}")
            else:
                failed = [str(r.platform) for r, _ in reports if not r.verified]
                main.failure = main.failure or (
                    f"{', '.join(failed)} failed verification; the output was not written")
    except TracerError as exc:
        if main is not None:
            main.failure = main.failure or str(exc)
        raise
    finally:
        engine.cleanup()
        if main is not None:
            main.verified = all(r.verified for r, _ in reports)
            main.platforms = [_summary(r) for r, _ in reports]
            main.seconds = seconds.rounded()
        for report, path in reports:
            if path is not None and report.original_steps:
                report.write(path)
    assert main is not None
    return main


def _platform_plan(plan: Plan, index_digest: str, platform: Platform) -> Plan:
    """The plan of one platform: the input by its index's digest (resolved once for all
    platforms), that platform chosen."""
    options = replace(plan.input.options, platform=platform)
    return replace(plan, input=plan.input.pinned(index_digest).with_options(options))


def _one_platform(plan: Plan, engine: EngineImages, work: Path, progress: Progress,
                  seconds: Seconds, report: Report, report_path: Path | None
                  ) -> tuple[OneLayer, str] | None:
    """The stages of one run up to its verification (pipeline.analyse_run and finish_run,
    without the publishing); (the image to write, the verified candidate's id), or None
    when it failed verification. Its keep-list goes beside `report_path`."""
    own = Seconds()
    try:
        analysed = analyse_run(plan, engine, work, progress, own, report, report_path)
        candidate = finish_run(plan, engine, work, progress, own, report, analysed,
                               publish=False)
        if candidate is None:
            return None
        image = one_layer(analysed.prepared.flat, analysed.keep, comment=plan.comment,
                          profile_hash=plan.profile_hash)
        return image, engine.image_id(candidate)
    finally:
        report.seconds = own.rounded()
        for phase, value in own.phases.items():
            seconds.phases[phase] = seconds.phases.get(phase, 0.0) + value


def _summary(report: Report) -> dict[str, object]:
    keys = ("platform", "platform_runs", "input_digest", "verified", "size_before",
            "size_after", "files_before", "files_after", "failure", "keeplist_file",
            "seconds")
    data = asdict(report)
    return {k: data[k] for k in keys}
