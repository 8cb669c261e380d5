"""Command line: parse arguments, call the pipeline, print. No logic lives here.

Exit codes are the contract documented in README.md and docs/profile.md: 0 success, 1 the
minimized image failed verification, 2 bad input, 3 the smoke test failed on the original
image, 4 environment problem; 130 for Ctrl-C after everything was cleaned up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer import __version__
from tracer.errors import BadInput, TracerError

if TYPE_CHECKING:
    from tracer.image.reference import RefOptions
    from tracer.profile.load import Overrides

INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in tracer, never confused with 0-4
BROKEN_PIPE = 141  # 128 + SIGPIPE: whoever read the output stopped reading

EPILOG = """exit codes:
  0    success
  1    the minimized image failed verification (the output was not replaced)
  2    bad input: profile, image reference, arguments, an input over a budget
  3    the smoke test failed on the original image
  4    environment problem: no engine, no strace, no permission, a full disk, a
       registry that does not answer
  70   internal error (a bug in tracer)
  130  interrupted (everything started was cleaned up)
  141  whatever read the output stopped reading
Profiles: the format reference is docs/profile.md, advice in profiles/README.md; start one
with `tracer init IMAGE`. Image references: docker-daemon:NAME[:TAG], NAME[:TAG],
docker-archive:PATH[:NAME[:TAG]], oci:PATH[:TAG], docker://HOST/REPO[:TAG|@sha256:...]."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message but name the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                   help="raise a resource budget for this run (repeatable; wins over the "
                   "profile's budgets:), e.g. --budget image_bytes=64GiB; names in "
                   "docs/profile.md")


def _add_granularity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--granularity", choices=("file", "package", "deps"),
                   help="override keep.granularity: file keeps what was used, package "
                   "also the rest of each package it came from, deps also what those "
                   "packages declare they depend on")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("docker", "podman", "auto"),
                   help="the container engine that runs (and stores) images: docker, podman "
                   "(through its Docker-compatible API socket) or auto (default, also "
                   "TRACER_ENGINE): the Docker engine when one answers, else Podman")


def _add_evidence(p: argparse.ArgumentParser) -> None:
    p.add_argument("--evidence", action="append", type=Path, default=[], metavar="FILE",
                   help="a recording written by `tracer record` (repeatable; on top of the "
                   "profile's keep.evidence): every path production used is kept")


def _add_registry(p: argparse.ArgumentParser, all_platforms: bool = False) -> None:
    """How registry images are reached and which platform of one is read (skopeo's
    spelling of the flags)."""
    p.add_argument("--tls-verify", nargs="?", const="true", metavar="BOOL",
                   help="verify registries' TLS certificates (default true; "
                   "--tls-verify=false for a plain-HTTP or self-signed registry)")
    p.add_argument("--cert-dir", type=Path, metavar="DIR",
                   help="trust the CA certificates (*.crt) in DIR for registries, and use "
                   "a client certificate (*.cert + *.key) from it")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which image of a multi-platform index to read (default: the "
                   "engine's platform), e.g. linux/arm64")
    if all_platforms:
        p.add_argument("--all-platforms", action="store_true",
                       help="minimize and verify every platform of a multi-platform input "
                       "separately and write an index of them (exit 4, before any work, "
                       "when one cannot run on this host)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tracer", description="Shrink a container image to the files its "
                     "application really uses,\nand prove it with the same smoke test.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tracer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_minimize(sub)
    _add_validate(sub)
    _add_init(sub)
    _add_schema(sub)
    _add_ldd(sub)
    _add_diagnose(sub)
    _add_why(sub)
    _add_batch(sub)
    _add_record(sub)
    return parser


def _add_minimize(sub: Any) -> None:
    m = sub.add_parser("minimize", help="trace, minimize, verify and report (the whole job)",
                       description="Run the profile's smoke test traced on the original image,\n"
                       "keep what it and the ELF analysis need, write the minimized image and\n"
                       "verify it with the same smoke test; the output is only written when\n"
                       "that passes.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("profile", type=Path, help="the profile YAML file")
    m.add_argument("--output", help="output image reference (default: the profile's output, "
                   "else the input's repository with tag <tag>-min)")
    m.add_argument("--report", type=Path, help="write the JSON report here, and the keep-list "
                   "next to it (FILE.keeplist)")
    m.add_argument("--quiet", action="store_true", help="no progress lines")
    m.add_argument("--stop-after", choices=["analyse"], help="stop once the keep-list is "
                   "made and save the run in --state DIR (tracer batch --share-base runs "
                   "each job in these two steps)")
    m.add_argument("--state", type=Path, metavar="DIR", help="where --stop-after saves the run")
    m.add_argument("--then-wait", action="store_true", help="with --stop-after: once saved, "
                   "wait for one line on standard input and finish the run in this process: "
                   "`finish BASE_DESCRIPTOR` (on that shared base), `finish` (alone) or "
                   "`exit` (stop; --resume DIR finishes it later)")
    m.add_argument("--resume", type=Path, metavar="DIR", help="finish a run saved by "
                   "--stop-after: write, verify and publish the image")
    m.add_argument("--shared-base", type=Path, metavar="FILE", help="with --resume: write "
                   "the image on the fleet's shared base this base descriptor names")
    _add_granularity(m)
    _add_evidence(m)
    _add_budget(m)
    _add_registry(m, all_platforms=True)
    _add_engine(m)


def _add_validate(sub: Any) -> None:
    v = sub.add_parser("validate", help="check a profile without running anything",
                       description="Check profiles against the format (docs/profile.md): "
                       "every problem with its file, line and field, all at once. Nothing "
                       "runs and no image is read, so a keep.binaries or keep.paths pattern "
                       "that matches nothing in the image is found by `tracer minimize`.",
                       epilog="exit 0 when every profile is valid, else 2.")
    v.add_argument("profile", type=Path, nargs="+", metavar="PROFILE_OR_DIR",
                   help="a profile file, or a directory: every *.yaml in it (as batch)")
    _add_budget(v)


def _add_init(sub: Any) -> None:
    i = sub.add_parser("init", help="write a starting profile from an image's config",
                       description="Read IMAGE's config (entrypoint, cmd, user, workdir, "
                       "env, exposed ports, healthcheck) and package database, and write a "
                       "profile that validates as written, with TODO comments where a person "
                       "must decide.", epilog="exit 2 for a bad image reference or when FILE "
                       "exists; 4 when the engine is needed and not there.")
    i.add_argument("image", help="image reference")
    i.add_argument("-o", "--output", dest="file", type=Path,
                   help="write the profile here (default: print it); never overwrites")
    i.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_registry(i)
    _add_engine(i)


def _add_schema(sub: Any) -> None:
    sub.add_parser("schema", help="print the JSON Schema of the profile format",
                   description="Print the JSON Schema (draft-07) of the profile format, for "
                   "editors: `tracer schema > tracer-profile.schema.json`, then start a "
                   "profile with `# yaml-language-server: $schema=tracer-profile.schema.json`.")


def _add_ldd(sub: Any) -> None:
    ld = sub.add_parser("ldd", help="the files the dynamic loader would map, inside an image",
                        description="Resolve ELF dependencies statically inside IMAGE (no "
                        "container is run). With no PATH: the image's entrypoint and cmd.",
                        epilog="exit 2 for a bad image reference, else 0; unresolved "
                        "libraries are listed (also in --json).")
    ld.add_argument("image", help="image reference")
    ld.add_argument("paths", nargs="*", metavar="PATH", help="in-image paths or program names")
    ld.add_argument("--json", action="store_true", help="machine-readable output")
    _add_budget(ld)
    _add_registry(ld)
    _add_engine(ld)


def _add_diagnose(sub: Any) -> None:
    d = sub.add_parser(
        "diagnose", help="why does the minimized image fail? (traced runs); replay a "
        "production command with --exec/--command",
        description="""Without --exec/--command: run the profile's smoke test traced on the
original and the minimized image, and list every file of the original that the minimized
run looked for or used and lacks, with the keep lines that fix it.

With --exec -- ARGV... (inside the running service container, after the ready check and
the smoke steps) or --command -- ARGV... (a fresh container from the image): replay ONE
production command that the smoke test does not cover, on the original and on the
minimized image, and answer whether it passes on each, which files it misses, and the
profile lines to add, best first: the command as a smoke step, keep.binaries for a
missing program, the exact keep.paths, then a shorter glob. Each piece of YAML says
where in PROFILE it goes.""",
        epilog="exit codes: 0 the smoke test (or the replayed command) passes on the "
        "minimized image; 1 it fails there, or exits alike but prints otherwise than on "
        "the original (the diagnosis says why, with the diff); 2 bad input; 3 it fails "
        "on the original image; 4 environment problem.\n"
        "example: tracer diagnose report.yaml --command --env PYTHONIOENCODING=iso-8859-15 "
        "-- python3 /app/report.py --month 5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("profile", type=Path)
    d.add_argument("argv", nargs="*", metavar="ARGV",
                   help="after `--`: the command to replay (with --exec or --command)")
    d.add_argument("--image", help="the minimized image to diagnose (default: the profile's "
                   "output)")
    how = d.add_mutually_exclusive_group()
    how.add_argument("--exec", dest="replay", action="store_const", const="exec",
                     help="replay ARGV inside the running service container (docker exec), "
                     "like an `exec` smoke step")
    how.add_argument("--command", dest="replay", action="store_const", const="command",
                     help="replay ARGV in a fresh one-shot container from the image, like a "
                     "`command` smoke step (the only kind a job profile has)")
    d.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the replayed command (repeatable); set "
                   "through the image's `env` program, as a smoke step can")
    d.add_argument("--stdin-file", type=Path, metavar="FILE",
                   help="feed FILE (any bytes: a document, an image) to the replayed "
                   "command's standard input")
    d.add_argument("--exit", type=int, metavar="N", help="the exit code the command should "
                   "return (default: whatever it returns on the original image)")
    d.add_argument("--timeout", metavar="DURATION", help="time limit of the replayed command "
                   "(30s, 5m; default 60s)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_budget(d)
    _add_engine(d)


def _add_why(sub: Any) -> None:
    w = sub.add_parser("why", help="why is PATH kept, or why not?",
                       description="Answer from the files `tracer minimize --report FILE.json` "
                       "left: FILE.json, FILE.keeplist and FILE.paths.gz (the original "
                       "image's paths, for the answer \"not kept\"). Nothing runs.",
                       epilog="exit 0 with an answer (kept or not); 2 when the report or "
                       "keep-list cannot be read.")
    w.add_argument("source", type=Path, metavar="REPORT_OR_KEEPLIST",
                   help="FILE.json or FILE.keeplist written by `tracer minimize --report`")
    w.add_argument("path", metavar="PATH",
                   help="a path in the image, as the keep-list writes it or as the real "
                   "name; a bare program name is looked up on the image's PATH")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    _add_budget(w)


def _add_batch(sub: Any) -> None:
    b = sub.add_parser("batch", help="minimize many profiles, N at a time, incrementally",
                       description="Run `tracer minimize` for each profile (files, or every "
                       "*.yaml in a directory), N at a time, each with its own log, report and "
                       "keep-list under --out. Unchanged jobs (same input image digest, profile "
                       "and tracer version as the last success) are skipped. Writes "
                       "summary.json and junit.xml.",
                       epilog="exit codes: 0 all passed, unchanged or skipped; 1 any failed; 2 bad "
                       "input (also: two profiles with one name).")
    b.add_argument("profiles", nargs="+", metavar="PROFILE_OR_DIR")
    b.add_argument("--jobs", type=int, help="parallel jobs (default: from cores and memory)")
    b.add_argument("--out", type=Path, default=Path("tracer-batch"),
                   help="directory for logs, reports and summaries (default: ./tracer-batch)")
    b.add_argument("--force", action="store_true", help="redo unchanged jobs too")
    b.add_argument("--share-base", action="store_true", help="jobs whose inputs start with "
                   "the same layers get outputs on one shared, minimized base layer (the "
                   "union of what they keep of those layers, the same digest in every "
                   "output); each output is still verified alone")
    b.add_argument("--pin-base", type=Path, metavar="PREVIOUS", help="with --share-base: keep "
                   "the base of a previous batch (its --out, or a base descriptor FILE) when "
                   "it still covers every job, else say why not")
    _add_granularity(b)
    _add_evidence(b)
    _add_budget(b)
    _add_registry(b, all_platforms=True)
    _add_engine(b)


def _add_record(sub: Any) -> None:
    r = sub.add_parser(
        "record", help="record what a running container (or every container of an image) "
        "uses, as evidence for keep.evidence",
        description="""Attach to a container that is already running (staging, a canary,
production) and record every file its processes open or execute, with fanotify on the
container's root mount only: no ptrace, no restart, nothing added to the container. With
--image REF instead of CONTAINER: every container of that image that runs on this host
while the recorder runs, short jobs included. Stops after --for DURATION, when the
container stops, or on Ctrl-C or SIGTERM, and then writes FILE atomically (format:
docs/recording.md). Merge recordings into a minimization with `keep.evidence: [FILE]` in
the profile or `tracer minimize PROFILE --evidence FILE`. Needs root on the engine's
host.""",
        epilog="exit codes: 0 recorded (FILE written); 2 bad input (no such container or "
        "image, a bad duration, FILE not writable); 4 cannot record here (not root, no "
        "fanotify, no engine, the container is not running or not on this host).\n"
        "example: tracer record api-canary -o evidence/api-canary.rec --for 1h",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("container", nargs="?", metavar="CONTAINER",
                   help="the running container's name or id")
    r.add_argument("--image", metavar="REF", help="record every container of this image "
                   "instead (its running ones, and each one started while recording)")
    r.add_argument("-o", "--output", dest="file", type=Path, required=True, metavar="FILE",
                   help="write the recording here (replaced atomically at the end)")
    r.add_argument("--for", dest="duration", metavar="DURATION",
                   help="stop after this long (30s, 10m, 2h; default: until the container "
                   "stops, or Ctrl-C / SIGTERM)")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_budget(r)
    _add_engine(r)


def _image_options(args: argparse.Namespace) -> RefOptions:
    from tracer.profile.load import image_options

    return image_options(getattr(args, "tls_verify", None), getattr(args, "cert_dir", None),
                         getattr(args, "platform", None))


def _overrides(args: argparse.Namespace) -> Overrides:
    from tracer.profile.load import Overrides, evidence_flags, parse_budget_flags

    return Overrides(budgets=parse_budget_flags(args.budget),
                     granularity=getattr(args, "granularity", None),
                     evidence=evidence_flags(getattr(args, "evidence", None)),
                     image_options=_image_options(args),
                     all_platforms=getattr(args, "all_platforms", False))


def _cmd_batch(args: argparse.Namespace) -> int:
    import time

    from tracer.batch import (
        Batch,
        check_out_dir,
        check_unique_names,
        find_profiles,
        summary_table,
        write_summaries,
    )

    overrides = _overrides(args)
    profiles = find_profiles(args.profiles)
    if args.jobs is not None and args.jobs < 1:
        raise BadInput("--jobs must be at least 1")
    check_out_dir(args.out)
    check_unique_names(profiles, overrides)
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"tracer batch: {line}", file=sys.stderr, flush=True)

    def starting(batch: Batch) -> None:
        how = "" if args.jobs else " at first (cores and measured memory; jobslots.py)"
        say(f"{len(profiles)} profile(s), {batch.slots.limit} at a time{how}, output in "
            f"{args.out}")

    if args.pin_base is not None and not args.share_base:
        raise BadInput("--pin-base keeps a shared base: it needs --share-base")
    if args.share_base:
        from tracer.fleet.runner import FleetBatch
        from tracer.fleet.summary import fleet_table
        from tracer.workdir import workdir

        with workdir() as work:  # the shared layers' index and the jobs' saved runs
            fleet_batch = FleetBatch(args.out, args.jobs, args.force, work, overrides, say,
                                     pin_base=args.pin_base)
            starting(fleet_batch)
            results = fleet_batch.run(profiles)
            fleets = fleet_batch.fleet_summaries()
        write_summaries(args.out, results, time.monotonic() - started, {"fleets": fleets})
        print(summary_table(results))
        if fleets:
            print(fleet_table(fleets))
        return 1 if any(r.status == "failed" for r in results) else 0
    batch = Batch(args.out, args.jobs, args.force, overrides, say=say)
    starting(batch)
    results = batch.run(profiles)
    write_summaries(args.out, results, time.monotonic() - started)
    print(summary_table(results))
    return 1 if any(r.status == "failed" for r in results) else 0


def _replay_command(args: argparse.Namespace) -> object | None:
    """The Command to replay from --exec/--command and their options; None without them."""
    from tracer.explain.replay import Command
    from tracer.profile.checker import parse_duration

    options = [name for name, given in (("--env", args.env), ("--stdin-file", args.stdin_file),
                                        ("--exit", args.exit is not None),
                                        ("--timeout", args.timeout)) if given]
    if args.replay is None:
        if args.argv:
            raise BadInput(f"a command to replay ({' '.join(args.argv)}) needs --exec (inside "
                           "the running service container) or --command (a fresh container)")
        if options:
            raise BadInput(f"{', '.join(options)}: only with --exec or --command")
        return None
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    timeout = None
    if args.timeout is not None:
        timeout = parse_duration(args.timeout)
        if not timeout or timeout <= 0:
            raise BadInput(f"--timeout {args.timeout!r}: expected a duration such as 30s or 5m")
    return Command(kind=args.replay, argv=list(args.argv), env=env,
                   stdin_file=args.stdin_file, exit=args.exit, timeout=timeout)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from tracer.explain.replay import diagnose_profile, replay_command
    from tracer.profile.load import load_profile
    from tracer.progress import Progress

    command = _replay_command(args)
    profile = load_profile(args.profile, _overrides(args))
    progress = Progress(quiet=args.quiet)
    if command is not None:
        answer = replay_command(profile, command, image=args.image,  # type: ignore[arg-type]
                                progress=progress)
    else:
        answer = diagnose_profile(profile, image=args.image, progress=progress)
    if args.json:
        print(json.dumps(answer.to_json(), indent=2))
    else:
        print(answer.format_text())
    return 0 if answer.passed else 1


def _cmd_why(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tracer.explain.why import why

    if args.source.suffix in (".yaml", ".yml"):
        raise BadInput(f"{args.source} looks like a profile; `tracer why` reads what `tracer "
                       "minimize PROFILE --report FILE.json` left: FILE.json or FILE.keeplist")
    answer = why(args.source, args.path, _overrides(args).run_budgets)
    print(json.dumps(asdict(answer), indent=2) if args.json else answer.format_text())
    return 0


def _finish_order() -> str | None:
    """--then-wait: one line on stdin says how to go on (EOF: stop, like `exit`)."""
    line = sys.stdin.readline().strip()
    word, _, rest = line.partition(" ")
    if word != "finish":
        return None
    return rest.strip()


def _cmd_minimize(args: argparse.Namespace) -> int:
    from tracer.pipeline import minimize
    from tracer.profile.load import load_profile
    from tracer.progress import Progress
    from tracer.report import summary_table

    overrides = _overrides(args)
    profile = load_profile(args.profile, overrides)
    if overrides.all_platforms:
        from tracer.allplatforms import minimize_all_platforms as minimize
    report = minimize(profile, output=args.output, report_path=args.report,
                      progress=Progress(quiet=args.quiet), options=overrides.image_options,
                      stop_after=args.stop_after,
                      state=args.state, resume=args.resume, shared_base=args.shared_base,
                      wait_for=_finish_order if args.then_wait else None)
    if report.stage == "analysed":
        print(f"{report.name}: analysed, {report.files_after:,} of {report.files_before:,} "
              f"files kept; saved in {args.state} (finish it with --resume)")
        return 0
    print(summary_table(report))
    if report.package_sizes_text:
        print(report.package_sizes_text)
    if args.report:
        print(f"report: {args.report}" + (f", keep-list: {report.keeplist_file}"
                                          if report.keeplist_file else ""))
    if not report.verified:
        if report.diagnosis_text:
            print(report.diagnosis_text)
        print("the minimized image FAILED verification; the output was not replaced",
              file=sys.stderr)
        return 1
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from tracer.batch import find_profiles
    from tracer.profile.load import load_profile
    from tracer.report import describe_checks

    overrides = _overrides(args)
    status = 0
    for path in find_profiles([str(p) for p in args.profile]):
        try:
            profile = load_profile(path, overrides)
            print(f"{path}: ok - {profile.name}, {describe_checks(profile)}")
        except BadInput as exc:
            print(f"tracer: {exc}", file=sys.stderr)
            status = 2
    return status


def _cmd_ldd(args: argparse.Namespace) -> int:
    from tracer.inspect_image import ldd
    from tracer.static import format_text, to_json

    overrides = _overrides(args)
    closure = ldd(args.image, args.paths, budgets=overrides.run_budgets,
                  options=overrides.image_options)
    if args.json:
        print(json.dumps(to_json(closure), indent=2))
    else:
        print(format_text(closure))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from tracer.profile.starter import init_profile, write_new
    from tracer.progress import Progress

    text = init_profile(args.image, progress=Progress(quiet=args.quiet),
                        options=_image_options(args))
    if args.file is None:
        sys.stdout.write(text)
        return 0
    write_new(args.file, text)
    print(f"wrote {args.file}; check its TODO comments, then: tracer validate {args.file} && "
          f"tracer minimize {args.file}", file=sys.stderr)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from tracer.profile.schema import json_schema_text

    sys.stdout.write(json_schema_text())
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from tracer.profile.checker import parse_duration
    from tracer.progress import Progress
    from tracer.trace.record import record_container, record_image

    if (args.container is None) == (args.image is None):
        raise BadInput("name the running CONTAINER to record, or --image REF for every "
                       "container of an image (one of the two)")
    duration = None
    if args.duration is not None:
        duration = parse_duration(args.duration)
        if not duration or duration <= 0:
            raise BadInput(f"--for {args.duration!r}: expected a duration such as 30s, 10m "
                           "or 2h")
    progress = Progress(quiet=args.quiet)
    budgets = _overrides(args).run_budgets
    record = record_image if args.image is not None else record_container
    result = record(args.image if args.image is not None else args.container, args.file,
                    duration=duration, budgets=budgets, say=progress, note=progress.note)
    rec = result.recording
    stopped = {"duration": "the duration ended", "container": "the container stopped",
               "operator": "stopped by the operator"}[result.stopped_by]
    for note in result.notes:
        progress.note(f"note: {note}")
    print(f"{result.output}: {len(rec.paths):,} paths from {rec.where()}, "
          f"{rec.end - rec.start}s recorded ({stopped})")
    return 0


COMMANDS = {"minimize": _cmd_minimize, "validate": _cmd_validate, "ldd": _cmd_ldd,
            "diagnose": _cmd_diagnose, "why": _cmd_why, "batch": _cmd_batch,
            "init": _cmd_init, "schema": _cmd_schema, "record": _cmd_record}


def _interrupt(signum: int, frame: object) -> None:
    """First Ctrl-C or SIGTERM: stop and clean up. Later ones are ignored, so a second
    Ctrl-C (or a scheduler's SIGTERM on top) cannot cut the cleanup short and leave
    containers behind; SIGKILL still ends the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("tracer: interrupted, cleaning up ...", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; for `diagnose`, everything after `--` is the command to
    replay, options included (argparse would refuse it once PROFILE is matched)."""
    words = [w for w in argv if not w.startswith("-")]
    if words[:1] == ["diagnose"] and "--" in argv:
        cut = argv.index("--")
        args = build_parser().parse_args(argv[:cut])
        args.argv = [*args.argv, *argv[cut + 1:]]
        return args
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a first try: the commands and exit codes, not "arguments are required"
        build_parser().print_help(sys.stderr)
        return 2
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        from tracer.engine import choose

        choose(getattr(args, "engine", None))
        return COMMANDS[args.command](args)
    except TracerError as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tracer: interrupted; containers, temp images and files were removed",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `tracer ldd IMAGE | head`: the reader stopped reading, which is not a bug in
        # tracer. Exit as a program ended by SIGPIPE does (128 + 13), without a traceback,
        # and keep the interpreter's final flush from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - a bug must not look like a verdict (exit 1)
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"tracer: internal error: {type(exc).__name__}: {exc} (exit {INTERNAL_ERROR}; "
              "please report it with the traceback above)", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
