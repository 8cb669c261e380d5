"""`tracer batch`: many profiles, unattended, N at a time, incremental.

Each job is a separate `tracer minimize` process: one crashing, hanging or leaking job
cannot take the others down, its log goes to its own file, and a timeout or Ctrl-C ends
it with SIGTERM (which the child turns into its own cleanup) and then SIGKILL. A job is
skipped when the input image digest, the profile's content and the tracer version are the
ones of its last successful run; the new keep-list is diffed against the one of the last
run that passed, so a nightly run that suddenly keeps 300 more files stands out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from tracer import __version__
from tracer.budgets import DEFAULT
from tracer.engine import engine_name
from tracer.errors import BadInput, TracerError
from tracer.explain.runfiles import keeplist_paths
from tracer.image.reference import ImageRef, RefOptions, default_output, parse_reference
from tracer.image.transports import transport
from tracer.jobslots import Meter, Slots, Use, read_usage, write_usage
from tracer.operatorfiles import kind_of, open_regular, read_json, read_regular
from tracer.profile.load import Overrides, budgets_of, load_profile
from tracer.profile.model import Profile
from tracer.report import human_size, writable_dir

STATE_FILE = "state.json"
KILL_GRACE = 30.0  # seconds between SIGTERM and SIGKILL for a job that overran


@dataclass
class JobResult:
    name: str
    profile: str
    status: str  # passed | unchanged | skipped | failed
    exit_code: int | None
    seconds: float
    message: str = ""
    output: str = ""
    log: str = ""
    report: str = ""
    size_before: int | None = None
    size_after: int | None = None
    keeplist_added: list[str] = field(default_factory=list)
    keeplist_removed: list[str] = field(default_factory=list)
    peak_memory: int | None = None  # bytes: its processes and containers at most (jobslots)
    fleet: str | None = None  # --share-base: the fleet whose shared base it stands on
    shared_base: dict[str, Any] | None = None  # its report's shared_base (the price it pays)


def find_profiles(args: list[str]) -> list[Path]:
    """Profile files named directly, or every *.yaml/*.yml in a named directory.

    A file named twice (directly and through its directory) is one job, not two.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            candidates = sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml"))
            for q in candidates:  # a stray FIFO would block its job's read forever
                _check_regular(q)
        elif p.exists():
            _check_regular(p)
            candidates = [p]
        else:
            raise BadInput(f"{arg}: no such profile file or directory")
        for q in candidates:
            if q.resolve() not in seen:
                seen.add(q.resolve())
                found.append(q)
    if not found:
        raise BadInput("no profiles found in: " + " ".join(args))
    return found


def _check_regular(path: Path) -> None:
    """Refuse (exit 2) a profile name that is not a regular file, saying what it is."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the profile file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise BadInput(f"{path}: the profile file is {kind_of(mode)}, not a regular file")


def check_unique_names(paths: list[Path], overrides: Overrides | None = None) -> None:
    """Refuse a batch in which two profiles have the same `name:` (exit 2, naming both).

    Each job writes under OUT/NAME/: two profiles with one name would share a state
    file, a log and a report, and mix them. A profile that does not load is left to its
    own job, which fails with its problems.
    """
    first: dict[str, Path] = {}
    clashes: list[str] = []
    for path in paths:
        try:
            name = load_profile(path, overrides).name
        except TracerError:
            continue
        if name in first:
            clashes.append(f"{first[name]} and {path} both have name: {name}")
        else:
            first[name] = path
    if clashes:
        raise BadInput("profiles in one batch need different names (each job writes under "
                       "OUT/NAME/):\n  " + "\n  ".join(clashes))


def image_digest(ref: ImageRef) -> str:
    """A cheap identity of the input image: the engine's image id or the bytes' sha256."""
    return transport(ref).identity(ref)


def output_exists(ref: ImageRef) -> bool:
    return transport(ref).exists(ref)


def profile_digest(profile_path: Path, profile: Profile) -> str:
    """sha256 of the profile file and of every standard input it feeds: a stdin_file's
    bytes are read at load, so a changed input file (a new test document) is a new job.
    Each input is framed by its length, so no two different sets of inputs (any bytes,
    NULs included) hash alike, and "none" differs from "empty"."""
    h = hashlib.sha256(read_regular(profile_path, "profile file", budget="profile_bytes",
                                    limit=budgets_of(profile).profile_bytes))
    stdins = [profile.run.stdin, *(getattr(s.step, "stdin", None) for s in profile.smoke)]
    for data in stdins:
        if data is None:
            h.update(b"-")
        else:
            h.update(b"+" + len(data).to_bytes(8, "big") + data)
    for recording in profile.keep.evidence:  # a new recording of production is a new job
        name = os.fsencode(recording)
        h.update(b"@" + len(name).to_bytes(8, "big") + name)
        _hash_file(h, recording)
    return h.hexdigest()


def _hash_file(h: Any, path: str) -> None:
    """Add a regular file's size and bytes to `h`; only a marker for anything else (gone,
    a FIFO that would block, a device): the job itself then refuses it and says why."""
    try:
        fd = open_regular(path, "recording")
    except BadInput:
        h.update(b"!")
        return
    with os.fdopen(fd, "rb") as f:
        h.update(b"=" + os.fstat(fd).st_size.to_bytes(8, "big"))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _fingerprint(profile_path: Path, profile: Profile,
                 options: RefOptions | None = None) -> dict[str, str]:
    """What a job's result depends on: the input image (a registry tag: the digest it
    names now), the profile with the files it reads (stdin_file, keep.evidence and
    --evidence recordings), and the tracer version. `options`: how registries are
    reached (--tls-verify, --cert-dir) and which platform is read."""
    return {
        "image_digest": image_digest(parse_reference(profile.image)
                                     .with_options(options or RefOptions())),
        "profile_sha256": profile_digest(profile_path, profile),
        "tracer_version": __version__,
    }


def _keeplist_paths(path: Path) -> set[str]:
    """Kept paths as the keep-list writes them (escaped: one line per name, whatever it holds)."""
    return keeplist_paths(path)


class Batch:
    """Runs jobs; `stop()` (Ctrl-C) terminates every running child and waits for it."""

    def __init__(self, out: Path, jobs: int | None, force: bool,
                 overrides: Overrides | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.out = out
        self.say = say or (lambda _line: None)  # a line per job started and finished
        self.jobs = jobs  # None: from cores and measured memory (jobslots.py)
        self.force = force
        self.overrides = overrides or Overrides()  # --budget/--granularity for every job
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self.slots = Slots(jobs, read_usage(out))
        self.peaks: dict[str, int] = {}  # log file -> peak bytes of its job's children
        self._meter: Meter | None = None

    def run(self, profiles: list[Path]) -> list[JobResult]:
        self.out.mkdir(parents=True, exist_ok=True)
        with self._metered(), ThreadPoolExecutor(max_workers=self.slots.most) as pool:
            futures = [pool.submit(self._job, p) for p in profiles]
            return self._gather(futures)

    def _gather(self, futures: list[Any]) -> list[Any]:
        """Each future's result; on Ctrl-C every running child is stopped first."""
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            self.stop()
            for f in futures:
                f.cancel()
            raise

    @contextlib.contextmanager
    def _metered(self) -> Iterator[None]:
        """Measure every child's memory while the batch runs; keep what jobs used for the
        next batch in this --out (jobslots.py)."""
        self._meter = Meter()
        try:
            yield
        finally:
            self._meter.close()
            if self.slots.measured:
                with contextlib.suppress(OSError):
                    write_usage(self.out, {**read_usage(self.out), **self.slots.measured})

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
        for proc in procs:
            _terminate(proc)

    def _job(self, profile_path: Path) -> JobResult:
        """One job; whatever goes wrong in it is its own failure, never the batch's."""
        started = time.monotonic()
        try:
            result = self._run_job(profile_path, started)
        except Exception as exc:  # noqa: BLE001 - one job's problem must not stop the others
            result = JobResult(name=profile_path.stem, profile=str(profile_path),
                               status="failed", exit_code=getattr(exc, "exit_code", None),
                               seconds=round(time.monotonic() - started, 3),
                               message=f"{type(exc).__name__}: {exc}")
        self.say(job_line(result))
        return result

    def _refs(self, profile: Profile) -> tuple[ImageRef, ImageRef]:
        """A job's input and output, reached as the batch's --tls-verify, --cert-dir and
        --platform say."""
        options = self.overrides.image_options
        in_ref = parse_reference(profile.image).with_options(options)
        out_ref = (parse_reference(profile.output) if profile.output
                   else default_output(in_ref)).with_options(options)
        return in_ref, out_ref

    def _fingerprint(self, profile_path: Path, profile: Profile) -> dict[str, str]:
        """_fingerprint of a job of this batch: another --granularity or --budget is
        another job."""
        fingerprint = _fingerprint(profile_path, profile, self.overrides.image_options)
        if self.overrides.argv():
            fingerprint["overrides"] = " ".join(self.overrides.argv())
        return fingerprint

    def _minimize_argv(self, profile_path: Path, report: Path, *extra: str) -> list[str]:
        """The child `tracer minimize` of one job: the batch's overrides, on the engine
        this batch settled on (--engine auto decides once, for every job)."""
        return [sys.executable, "-m", "tracer", "minimize", str(profile_path), "--report",
                str(report), *extra, *self.overrides.argv(), "--engine", engine_name()]

    def _run_job(self, profile_path: Path, started: float) -> JobResult:
        """Load the profile, skip it when nothing changed, else run `tracer minimize` in a
        child process and judge what it left."""
        try:
            profile = load_profile(profile_path, self.overrides)
        except TracerError as exc:
            return JobResult(name=profile_path.stem, profile=str(profile_path), status="failed",
                             exit_code=exc.exit_code, seconds=0.0, message=str(exc))
        job = _JobFiles(self.out / profile.name)
        job.dir.mkdir(parents=True, exist_ok=True)
        in_ref, out_ref = self._refs(profile)
        result = JobResult(name=profile.name, profile=str(profile_path), status="failed",
                           exit_code=None, seconds=0.0, output=str(out_ref),
                           log=str(job.log), report=str(job.report))
        fingerprint = self._fingerprint(profile_path, profile)
        if not self.force and _load_json(job.state) == fingerprint and output_exists(out_ref):
            result.status, result.exit_code = "skipped", 0
            result.message = "unchanged since the last successful run (image, profile, tracer)"
            return result
        job.start()
        cmd = self._minimize_argv(profile_path, job.report)
        timeout = 2 * profile.run.timeout + 600  # trace + verify each bounded by run.timeout
        started_child, code = self._spawn(
            cmd, job.log, timeout,
            on_start=lambda: self.say(f"{profile.name}: started ({profile_path}; log: "
                                      f"{job.log})"))
        result.seconds = round(time.monotonic() - started, 3)
        if not started_child:
            result.message = "not started: the batch was interrupted"
            return result
        result.exit_code = code
        result.peak_memory = self.peaks.get(str(job.log))
        _judge(result, job, code, timeout, fingerprint)
        return result

    def _spawn(self, cmd: list[str], log_path: Path, timeout: float,
               env: dict[str, str] | None = None, mode: str = "wb",
               on_start: Callable[[], None] | None = None) -> tuple[bool, int | None]:
        """Run one job's child to its end: (started at all, exit code or None on timeout).
        It waits for a slot first (jobslots.py; `on_start` then), and what it uses is
        measured while it runs."""
        if not self.slots.acquire(lambda: self._stopping):
            return False, None
        use: Use | None = None
        try:
            if on_start is not None:
                on_start()
            with open(log_path, mode) as log:
                with self._lock:
                    if self._stopping:
                        return False, None
                    # Its own session: a terminal's Ctrl-C reaches only the batch, which then
                    # stops each job exactly once (a second signal would cut its cleanup short).
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env=env)
                    self._procs[proc.pid] = proc
                if self._meter is not None:
                    self._meter.watch(proc.pid)
                try:
                    return True, proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _terminate(proc)
                    return True, None
                finally:
                    with self._lock:
                        self._procs.pop(proc.pid, None)
                    if self._meter is not None:
                        use = self._meter.done(proc.pid)
                        self.peaks[str(log_path)] = max(use.memory,
                                                        self.peaks.get(str(log_path), 0))
        finally:
            self.slots.release(log_path.parent.name, use)


@dataclass(frozen=True)
class _JobFiles:
    """Where one job keeps its files under --out (OUT/NAME/)."""

    dir: Path

    @property
    def log(self) -> Path:
        return self.dir / "run.log"

    @property
    def report(self) -> Path:
        return self.dir / "report.json"

    @property
    def keeplist(self) -> Path:
        return self.dir / "report.keeplist"

    @property
    def path_index(self) -> Path:
        return self.dir / "report.paths.gz"

    @property
    def passed_keeplist(self) -> Path:
        """The keep-list of the last run that passed: what a new one is diffed against."""
        return self.dir / "passed.keeplist"

    @property
    def state(self) -> Path:
        return self.dir / STATE_FILE

    def start(self) -> None:
        """Before a run: the last run's report and keep-list go, so that what is there
        afterwards is this run's alone (sizes in the summary, `tracer why` on them); the
        last passed run's keep-list stays as the baseline."""
        if not self.passed_keeplist.exists() and self.state.exists() and \
                self.keeplist.exists():
            # written by an earlier tracer, which left the last passed run's keep-list here
            shutil.copyfile(self.keeplist, self.passed_keeplist)
        for stale in (self.report, self.keeplist, self.path_index):
            stale.unlink(missing_ok=True)


def _judge(result: JobResult, job: _JobFiles, code: int | None, timeout: float,
           fingerprint: dict[str, str]) -> None:
    """A finished child's verdict: status and message, sizes from its report, the keep-list
    diff against the last passed run (for a failed run too: what it dropped is often why),
    and, when it passed, the state for the next incremental run and the new baseline."""
    report = _load_json(job.report)
    if report:
        result.size_before = report.get("size_before")
        result.size_after = report.get("size_after")
    if code is None:
        result.message = f"timed out after {timeout:.0f}s; the job was stopped"
    elif code != 0:
        result.message = _failure(report, code) or _last_error(job.log) or f"exit code {code}"
    elif report and report.get("output_unchanged") is True:
        # the output already held this very image (same digest): not replaced
        result.status = "unchanged"
        result.message = (f"minimized and verified; the output already holds "
                          f"{report.get('output_digest')}, left as it was")
    else:
        result.status = "passed"
        result.message = "minimized and verified"
    if job.keeplist.exists() and job.passed_keeplist.exists():
        old, new = _keeplist_paths(job.passed_keeplist), _keeplist_paths(job.keeplist)
        result.keeplist_added = sorted(new - old)
        result.keeplist_removed = sorted(old - new)
    if code != 0:
        return
    tmp = job.state.with_name(STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2) + "\n")
    os.replace(tmp, job.state)  # a torn state file would break every later run
    if job.keeplist.exists():
        tmp = job.passed_keeplist.with_name(job.passed_keeplist.name + ".tmp")
        shutil.copyfile(job.keeplist, tmp)
        os.replace(tmp, job.passed_keeplist)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _load_json(path: Path) -> dict[str, Any] | None:
    """A JSON object tracer wrote under --out (a job's state or report); None when it is
    missing, not a regular file (never followed if a link), too big or not JSON."""
    if not os.path.lexists(path):
        return None
    try:
        doc = read_json(path, "file", limit=DEFAULT.index_bytes, budget="index_bytes",
                        follow=False)
    except BadInput:
        return None
    return doc if isinstance(doc, dict) else None


def _failure(report: dict[str, Any] | None, code: int) -> str:
    """Why a job failed, from its report (its first line: evidence follows on the next
    ones); "" when it wrote none. A log's last line may be a note, not the verdict."""
    failure = (report or {}).get("failure")
    if not isinstance(failure, str) or not failure.strip():
        return ""
    first = failure.strip().splitlines()[0]
    return f"the minimized image failed verification: {first}" if code == 1 else first


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("tracer: ") and "done in" not in line and not line.endswith("..."):
            return line[len("tracer: "):]
    return lines[-1] if lines else ""


def job_line(r: JobResult) -> str:
    """One line when a job ends, for the operator watching a long batch."""
    sizes = f", {_size(r.size_before)} -> {_size(r.size_after)}" if _after(r) else ""
    if r.status == "failed":
        lines = [line.strip() for line in r.message.splitlines() if line.strip()]
        first = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])
        more = " (more below)" if len(lines) > 2 else ""
        return (f"{r.name}: FAILED after {r.seconds:.1f}s: "
                f"{first or f'exit code {r.exit_code}'}{more}")
    if r.status == "skipped":
        return f"{r.name}: skipped, {r.message}"
    return f"{r.name}: {r.status} in {r.seconds:.1f}s{sizes}"


def summary_table(results: list[JobResult]) -> str:
    """The batch's table: sizes in the units of `tracer minimize`'s summary, an empty
    `after` for a job that wrote nothing, and below it why jobs failed or were skipped."""
    rows = [("profile", "status", "exit", "seconds", "before", "after", "keep-list diff")]
    for r in results:
        diff = f"+{len(r.keeplist_added)} -{len(r.keeplist_removed)}" \
            if (r.keeplist_added or r.keeplist_removed) else ""
        rows.append((r.name, r.status, "" if r.exit_code is None else str(r.exit_code),
                     f"{r.seconds:.1f}", _size(r.size_before),
                     _size(r.size_after) if _after(r) else "", diff))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    for r in results:
        if r.status == "failed":
            lines.append(f"{r.name}: {r.message}" + (f" (log: {r.log})" if r.log else ""))
    skipped = [r.name for r in results if r.status == "skipped"]
    if skipped:
        lines.append(f"skipped ({', '.join(skipped)}): input image, profile and tracer are "
                     "those of the last success and the output exists; --force redoes them")
    return "\n".join(lines)


def _after(r: JobResult) -> bool:
    """Whether the job got as far as a minimized image (a failure on the original did not)."""
    return r.size_after is not None and (r.status != "failed" or r.size_after > 0)


def _size(n: int | None) -> str:
    return "" if n is None else human_size(n)


def junit_xml(results: list[JobResult], seconds: float) -> str:
    """One test case per image, so CI systems show each minimization as a test."""
    failures = sum(r.status == "failed" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name="tracer batch" tests="{len(results)}" failures="{failures}" '
           f'skipped="{skipped}" time="{seconds:.3f}">']
    for r in results:
        out.append(f'  <testcase classname="tracer.minimize" name={quoteattr(r.name)} '
                   f'time="{r.seconds:.3f}">')
        if r.status == "failed":
            out.append(f"    <failure message={quoteattr(r.message)}>"
                       f"{escape(r.message)}\nlog: {escape(r.log)}</failure>")
        elif r.status == "skipped":
            out.append(f"    <skipped message={quoteattr(r.message)}/>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def write_summaries(out: Path, results: list[JobResult], seconds: float,
                    extra: dict[str, Any] | None = None) -> None:
    """summary.json (with `extra`: more top-level keys, e.g. --share-base's fleets) and
    junit.xml, each replaced atomically."""
    for name, text in (("summary.json", json.dumps(
            {"tracer_version": __version__, "seconds": round(seconds, 3),
             "jobs": [asdict(r) for r in results], **(extra or {})}, indent=2) + "\n"),
            ("junit.xml", junit_xml(results, seconds))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)


def check_out_dir(path: Path) -> None:
    """batch --out DIR: a directory (created when missing) whose parent must be writable."""
    if path.exists() and not path.is_dir():
        raise BadInput(f"--out {path}: is a file, not a directory")
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        writable_dir(parent, f"--out {path}")
    else:
        writable_dir(path, f"--out {path}")
