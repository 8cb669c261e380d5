"""`tracer batch --share-base`: the batch that gives each fleet one shared base layer.

A fleet's base holds what all its jobs keep of their common lowest layers, so it can
only be written once every job's keep-list is known. Each job still runs in processes of
its own, as in any batch (one crashing or hanging job cannot take the others down, a
timeout or Ctrl-C stops it with SIGTERM and its own cleanup), in two steps (tracer.stage):

1. group the jobs by their inputs' layers (plan.group) and index each fleet's shared
   layers once, into the batch's private work dir (sharedbase.index_prefix): every job
   on them reads only its own layers on top (TRACER_LAYER_CACHE);
2. analyse every job (`tracer minimize --stop-after analyse --state DIR`): read, trace,
   keep-list; the job then holds no memory and no slot;
3. decide each fleet's base (plan.decide: the union, or the pinned base when it still
   covers every job), say what changed since the last batch (plan.changes), and write
   its descriptor to OUT/fleets/NAME.json;
4. finish every job on its base (`tracer minimize --resume DIR --shared-base FILE`): write
   the image, verify it alone with its full smoke test, publish it.

Jobs alone on their layers run as in any batch. A job is skipped, as in any batch, when
its input, profile and tracer are those of its last success, and in addition the base its
output stands on is the one its fleet gets now; when the base changes, every output of
the fleet is made again on it (that is the point: one base for all).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer import __version__, stage
from tracer.analysis.keeplist import size_of
from tracer.batch import (
    Batch,
    JobResult,
    _JobFiles,
    _judge,
    _load_json,
    _terminate,
    job_line,
    output_exists,
)
from tracer.budgets import Budgets
from tracer.engine import NotInEngine, connect
from tracer.errors import BadInput, TracerError
from tracer.fleet.descriptor import (
    BaseDescriptor,
    previous_of,
    read_base_descriptor,
    read_pins,
)
from tracer.fleet.plan import Change, Fleet, changes, decide, group, held_for
from tracer.fleet.summary import fleet_numbers
from tracer.image.documents import DIGEST_RE
from tracer.image.layercache import CACHE_ENV, Seed, seed_dir
from tracer.image.reference import ImageRef, parse_reference
from tracer.image.sharedbase import SharedBase, index_prefix
from tracer.image.transports import open_image
from tracer.jobslots import MEMORY_SHARE, Use
from tracer.pipeline import pinned
from tracer.profile.load import Overrides, budgets_of, load_profile
from tracer.profile.model import Profile
from tracer.report import human_size
from tracer.statefile import private_dir

BASE_FILE = "base.json"  # OUT/NAME/: the base the job's output stands on, and its needs
FLEETS_DIR = "fleets"  # OUT/fleets/NAME.json: each fleet's base descriptor


@dataclass
class _Job:
    """One fleet job through its two steps."""

    path: Path
    profile: Profile
    files: _JobFiles
    result: JobResult
    fingerprint: dict[str, str]
    layers: list[str]
    state: Path
    started: float = field(default_factory=time.monotonic)
    needs: list[str] | None = None  # of the fleet's base layers (None: not on them)
    last_base: dict[str, Any] | None = None  # OUT/NAME/base.json of its last success
    analysed: bool = False
    fleet_layers: list[str] = field(default_factory=list)  # its fleet's base layers
    last_seconds: float | None = None  # what its last run worked (its report's total)

    @property
    def name(self) -> str:
        return self.profile.name


def input_layers(ref: ImageRef, work: Path, budgets: Budgets) -> list[str]:
    """The layer digests (diff_ids) of image `ref`, bottom first: from the engine's answer
    for an engine image (nothing is read), else from the image's own config. [] when they
    cannot be had (no such image, a bad one): the job then runs alone, and its own run
    says what is wrong with its input."""
    try:
        if ref.transport == "docker-daemon":
            with connect().lookup(f"inspect image {ref}"):
                attrs = connect().api.inspect_image(str(ref.repo_tag))
            layers = (attrs.get("RootFS") or {}).get("Layers") \
                if isinstance(attrs, dict) else None
            if not isinstance(layers, list) or not all(
                    isinstance(x, str) and DIGEST_RE.match(x) for x in layers):
                return []
            return list(layers)
        with open_image(ref, work, budgets) as image:
            return [str(x.diff_id) for x in image.layers if x.diff_id is not None]
    except (TracerError, NotInEngine):
        return []


class FleetBatch(Batch):
    """A batch whose jobs on common lowest layers share one minimized base (module doc)."""

    def __init__(self, out: Path, jobs: int | None, force: bool, work: Path,
                 overrides: Overrides | None = None, say: Any = None,
                 pin_base: Path | None = None) -> None:
        super().__init__(out, jobs, force, overrides, say)
        self.work = private_dir(work)
        self.cache = private_dir(work / "layers")
        self.pinned = read_pins(pin_base, FLEETS_DIR) if pin_base is not None else None
        self.fleets: list[dict[str, Any]] = []  # for summary.json
        # children that saved their run and wait, alive, for their fleet's base
        self._waiting: dict[str, tuple[subprocess.Popen[bytes], Any]] = {}
        self._finishers: list[Callable[[], None]] = []  # fill in the numbers at the end

    # ---------------------------------------------------------------- the whole batch

    def run(self, profiles: list[Path]) -> list[JobResult]:
        self.out.mkdir(parents=True, exist_ok=True)
        private_dir(self.work / "jobs")
        results: dict[Path, Future[JobResult] | JobResult] = {}
        with self._metered(), ThreadPoolExecutor(max_workers=max(2, self.slots.most)) as pool:
            try:
                jobs: dict[Path, _Job] = {}
                for path in profiles:
                    loaded = self._load(path)
                    if isinstance(loaded, JobResult):
                        self.say(job_line(loaded))
                        results[path] = loaded
                    else:
                        jobs[path] = loaded
                fleets, alone = group({str(p): j.layers for p, j in jobs.items()})
                for name in alone:  # as in any batch
                    results[Path(name)] = pool.submit(self._job, Path(name))
                for fleet in fleets:
                    members = [jobs[Path(p)] for p in fleet.jobs]
                    fleet.jobs = [j.name for j in members]
                    self._fleet(fleet, members, pool, results)
                return [r if isinstance(r, JobResult) else r.result()
                        for r in (results[p] for p in profiles)]
            except KeyboardInterrupt:
                self.stop()
                for r in results.values():
                    if isinstance(r, Future):
                        r.cancel()
                raise
            finally:
                self._dismiss_waiting()

    def _dismiss_waiting(self) -> None:
        """A child still waiting for a base it will not get (its fleet went wrong): end of
        input tells it to stop, with its own cleanup."""
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for proc, log in waiting:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _terminate(proc)
            with self._lock:
                self._procs.pop(proc.pid, None)
            log.close()

    def _load(self, path: Path) -> _Job | JobResult:
        """The job of profile `path`, or its failure (it never stops the others)."""
        started = time.monotonic()
        try:
            profile = load_profile(path, self.overrides)
            files = _JobFiles(self.out / profile.name)
            files.dir.mkdir(parents=True, exist_ok=True)
            in_ref, out_ref = self._refs(profile)
            result = JobResult(name=profile.name, profile=str(path), status="failed",
                               exit_code=None, seconds=0.0, output=str(out_ref),
                               log=str(files.log), report=str(files.report))
            fingerprint = self._fingerprint(path, profile)
            fingerprint["share_base"] = "yes"  # its output stands on a fleet's base
            layers = input_layers(in_ref, self.work / "inspect" / profile.name,
                                  budgets_of(profile))
            job = _Job(path, profile, files, result, fingerprint, layers,
                       self.work / "jobs" / profile.name, started)
            job.last_base = _load_json(files.dir / BASE_FILE)
            total = ((_load_json(files.report) or {}).get("seconds") or {}).get("total")
            job.last_seconds = float(total) if isinstance(total, (int, float)) else None
            if (not self.force and _load_json(files.state) == fingerprint
                    and output_exists(out_ref) and job.last_base is not None):
                job.result.status, job.result.exit_code = "skipped", 0
                job.result.message = ("unchanged since the last successful run (image, "
                                      "profile, tracer)")
            return job
        except Exception as exc:  # noqa: BLE001 - one job's problem must not stop the others
            return JobResult(name=path.stem, profile=str(path), status="failed",
                             exit_code=getattr(exc, "exit_code", None),
                             seconds=round(time.monotonic() - started, 3),
                             message=f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- one fleet

    def _fleet(self, fleet: Fleet, members: list[_Job], pool: ThreadPoolExecutor,
               results: dict[Path, Future[JobResult] | JobResult]) -> None:
        """Steps 1-4 of the module doc for one fleet; its jobs' results go to `results`."""
        self.say(f"fleet {fleet.name}: {len(members)} jobs on {len(fleet.layers)} shared "
                 f"layer(s) ({', '.join(j.name for j in members)}); indexing them once")
        try:
            seed = self._seed(fleet, members[0])
        except TracerError as exc:
            self.say(f"fleet {fleet.name}: its layers cannot be indexed ({exc}); its jobs "
                     "get one-layer outputs")
            for j in members:
                results[j.path] = pool.submit(self._job, j.path)
            return
        for j in members:
            j.result.fleet = fleet.name
            j.fleet_layers = fleet.layers
        skipped = [j for j in members if j.result.status == "skipped"
                   and (j.last_base or {}).get("layers") == fleet.layers]
        for j in members:
            if j.result.status == "skipped" and j not in skipped:
                j.result.status, j.result.message = "failed", ""  # its base is another's
        # longest first (as last time; unknown ones before all): the fleet's base waits
        # for its last analysis, and a long one started last would leave slots idle
        self._analyse_all(sorted((j for j in members if j not in skipped),
                                 key=lambda j: -(j.last_seconds or float("inf"))), pool)
        while True:
            needs = self._needs(fleet, members, skipped)
            decision = decide(fleet, needs, seed.flat, self._pin_for(fleet))
            base = SharedBase(seed.flat, len(fleet.layers), decision.paths)
            digest = base.plan().digest()
            pinned = self._pin_for(fleet)
            if decision.pinned and pinned is not None and digest.diff_id != pinned.diff_id:
                decision = decide(fleet, needs, seed.flat, None)
                decision.pin_note = (f"cannot keep the pinned base {pinned.diff_id[:19]}: "
                                     f"its paths come to {digest.diff_id[:19]} with tracer "
                                     f"{__version__} (written otherwise since)")
                base = SharedBase(seed.flat, len(fleet.layers), decision.paths)
                digest = base.plan().digest()
            stale = [j for j in skipped if (j.last_base or {}).get("diff_id") != digest.diff_id]
            if not stale:
                break
            for j in stale:  # its output stands on another base: made again on this one
                skipped.remove(j)
                j.result.status, j.result.message = "failed", ""
            self.say(f"fleet {fleet.name}: the base changes, so {len(stale)} unchanged "
                     f"job(s) are made again on it: {', '.join(j.name for j in stale)}")
            self._analyse_all(stale, pool)
        descriptor = self._describe(fleet, base, digest.diff_id, digest.size, needs,
                                    decision.pinned, decision.pin_note)
        for j in members:
            if j in skipped:
                j.result.shared_base = (_load_json(j.files.report) or {}).get("shared_base")
                self.say(job_line(j.result))
                results[j.path] = j.result
            elif j.analysed:
                on_base = j.needs is not None
                results[j.path] = pool.submit(self._finish, j, descriptor if on_base else None)
            else:
                results[j.path] = j.result
        self._summarize_later(fleet, descriptor, members, results)

    def _seed(self, fleet: Fleet, first: _Job) -> Seed:
        """The fleet's shared layers indexed once (sharedbase.index_prefix), from the
        first job's input pinned to its id, as the jobs read it."""
        dest = seed_dir(self.cache, fleet.layers)
        ref = parse_reference(pinned(first.profile.image)) \
            .with_options(self.overrides.image_options)  # reached as the batch says
        with open_image(ref, self.work / "seed-source" / fleet.name,
                        budgets_of(first.profile)) as image:
            if [x.diff_id for x in image.layers[:len(fleet.layers)]] != fleet.layers:
                raise BadInput(f"{ref} changed while the batch started")
            return index_prefix(image, len(fleet.layers), private_dir(dest),
                                budgets_of(first.profile))

    def _analyse_all(self, jobs: list[_Job], pool: ThreadPoolExecutor) -> None:
        for future in [pool.submit(self._analyse, j) for j in jobs]:
            future.result()

    def _needs(self, fleet: Fleet, members: list[_Job], skipped: list[_Job]
               ) -> dict[str, list[str]]:
        """What each job needs of the base: analysed now, or as its output stands (skipped,
        or failed now: its last good output keeps standing on the base)."""
        needs: dict[str, list[str]] = {}
        for j in members:
            if j.analysed and j.needs is not None:
                needs[j.name] = j.needs
            elif (j in skipped or not j.analysed) and j.last_base is not None \
                    and j.last_base.get("layers") == fleet.layers:
                last = j.last_base.get("needs")
                if isinstance(last, list) and all(isinstance(p, str) for p in last):
                    needs[j.name] = last
        return needs

    def _pin_for(self, fleet: Fleet) -> BaseDescriptor | None:
        if self.pinned is None:
            return None
        same = [d for d in self.pinned if d.layers == fleet.layers]
        if same:
            return same[0]
        # the pinned base of another set of layers (a new base image): said, not kept
        near = [d for d in self.pinned if d.layers[:1] == fleet.layers[:1]]
        return near[0] if near else None

    def _describe(self, fleet: Fleet, base: SharedBase, diff_id: str, size: int,
                  needs: dict[str, list[str]], pinned: bool, pin_note: str) -> Path:
        """Say what changed, and write the fleet's descriptor (the previous one is what
        the changes are told against)."""
        fleets = self.out / FLEETS_DIR
        fleets.mkdir(exist_ok=True)
        path = fleets / f"{fleet.name}.json"
        previous = None
        with contextlib.suppress(BadInput):
            if path.exists():
                previous = read_base_descriptor(path)
            else:  # the fleet's layers changed: compare with the last base of its jobs
                previous = previous_of(fleets, set(fleet.jobs))
        content = size_of(base.flat.entries, base.paths)
        members = set(fleet.jobs)
        desc = BaseDescriptor(fleet.name, fleet.layers, diff_id, size, content, base.paths,
                              {job: sorted(paths) for job, paths in needs.items()
                               if job in members}, __version__)
        change: Change = changes(previous, desc.needed_by, base.paths, diff_id, base.flat,
                                 pinned)
        if pinned:
            desc.held_for = held_for(previous, desc.needed_by, base.paths)
        if pin_note:
            change.lines.insert(0, pin_note)
        for line in change.lines:
            self.say(f"fleet {fleet.name}: {line}")
        self.say(f"fleet {fleet.name}: shared base {diff_id[:19]}: {len(base.paths):,} "
                 f"paths, {human_size(content)} of files, {human_size(size)} as a layer")
        desc.write(path)
        self.fleets.append({"name": fleet.name, "layers": fleet.layers, "jobs": fleet.jobs,
                            "descriptor": str(path),
                            "base": {"diff_id": diff_id, "size": size, "paths": len(base.paths),
                                     "content_bytes": content},
                            "pinned": pinned, "pin_note": pin_note,
                            "changes": change.lines, "paths_added": len(change.added),
                            "paths_removed": len(change.removed)})
        return path

    def _summarize_later(self, fleet: Fleet, descriptor: Path, members: list[_Job],
                         results: dict[Path, Future[JobResult] | JobResult]) -> None:
        """Once its jobs end: the fleet's numbers (fleet_numbers) into its summary."""
        summary = self.fleets[-1]
        pending = [results[j.path] for j in members]

        def fill() -> None:
            done = [r if isinstance(r, JobResult) else r.result() for r in pending]
            summary.update(fleet_numbers(summary["base"], done))

        self._finishers.append(fill)

    # ---------------------------------------------------------------- one job's steps

    def _env(self) -> dict[str, str]:
        return {**os.environ, CACHE_ENV: str(self.cache)}

    def _analyse(self, job: _Job) -> None:
        """Step 2 for one job; its failure is its result, never the batch's.

        While memory allows (`_may_wait`), the child stays alive once it has saved its
        run, holding no slot, and finishes it itself when told on its standard input
        (`--then-wait`): one process start and one reload of the run less per job. Else
        it ends, and step 4 takes the saved run up in a new process (`--resume`)."""
        try:
            job.files.start()
            keep = self._may_wait()
            cmd = self._minimize_argv(job.path, job.files.report, "--stop-after", "analyse",
                                      "--state", str(private_dir(job.state)),
                                      *(["--then-wait"] if keep else []))
            timeout = job.profile.run.timeout + 600
            started, code = self._until_saved(job, cmd, timeout, keep)
            job.result.seconds = round(time.monotonic() - job.started, 3)
            job.result.peak_memory = self.peaks.get(str(job.files.log))
            if not started:
                job.result.message = "not started: the batch was interrupted"
            elif code == 0:
                doc = json.loads((job.state / stage.NEEDS_FILE).read_text(encoding="utf-8"))
                # on other layers than its fleet's: its input changed since the batch began
                on = doc.get("base_layers") == job.fleet_layers
                job.needs = [str(p) for p in doc.get("needs", [])] if on else None
                job.analysed = True
                return
            else:
                job.result.exit_code = code
                _judge(job.result, job.files, code, timeout, job.fingerprint)
        except Exception as exc:  # noqa: BLE001 - one job's problem must not stop the others
            job.result.message = f"{type(exc).__name__}: {exc}"
        self.say(job_line(job.result))

    def _may_wait(self) -> bool:
        """May one more child wait alive for its fleet's base? As many as fit, at what a
        job was measured to use, in the memory the running jobs leave (jobslots.py)."""
        with self._lock:
            waiting = len(self._waiting)
        room = int(self.slots.available * MEMORY_SHARE) // max(self.slots.per_job, 1)
        return waiting < room - self.slots.limit

    def _until_saved(self, job: _Job, cmd: list[str], timeout: float, keep: bool
                     ) -> tuple[bool, int | None]:
        """Run step 2's child in a slot until it ends, or (`keep`) until it has saved its
        run and waits: then it stays in `_waiting` for step 4, and its slot is free."""
        if not self.slots.acquire(lambda: self._stopping):
            return False, None
        use: Use | None = None
        try:
            self.say(f"{job.name}: started ({job.path}; log: {job.files.log})")
            log = open(job.files.log, "wb")  # noqa: SIM115 - closed when the child is done
            with self._lock:
                if self._stopping:
                    log.close()
                    return False, None
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.PIPE if keep else subprocess.DEVNULL,
                                        start_new_session=True, env=self._env())
                self._procs[proc.pid] = proc
            if self._meter is not None:
                self._meter.watch(proc.pid)
            deadline = time.monotonic() + timeout
            saved = job.state / stage.NEEDS_FILE
            code: int | None = None
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if keep and saved.exists():
                    with self._lock:
                        self._waiting[job.name] = (proc, log)
                    return True, 0
                if time.monotonic() > deadline:
                    _terminate(proc)
                    break
            use = self._child_done(proc, log, job)
            return True, code
        finally:
            self.slots.release(job.name, use)

    def _child_done(self, proc: subprocess.Popen[bytes], log: Any, job: _Job) -> Use:
        """Forget an ended child; what it used."""
        with self._lock:
            self._procs.pop(proc.pid, None)
            self._waiting.pop(job.name, None)
        log.close()
        use = self._meter.done(proc.pid) if self._meter is not None else Use(0)
        key = str(job.files.log)
        self.peaks[key] = max(use.memory, self.peaks.get(key, 0))
        return use

    def _finish(self, job: _Job, descriptor: Path | None) -> JobResult:
        """Step 4 for one job: write it on the base, verify it alone, publish it."""
        result = job.result
        try:
            timeout = 2 * job.profile.run.timeout + 600
            with self._lock:
                live = self._waiting.get(job.name)
            if live is not None:
                started, code = self._tell(job, live, descriptor, timeout)
            else:
                cmd = self._minimize_argv(job.path, job.files.report, "--resume",
                                          str(job.state))
                if descriptor is not None:
                    cmd += ["--shared-base", str(descriptor)]
                started, code = self._spawn(cmd, job.files.log, timeout, env=self._env(),
                                            mode="ab")
            result.seconds = round(time.monotonic() - job.started, 3)
            result.peak_memory = self.peaks.get(str(job.files.log))
            if not started:
                result.message = "not started: the batch was interrupted"
            else:
                result.exit_code = code
                _judge(result, job.files, code, timeout, job.fingerprint)
                report = _load_json(job.files.report) or {}
                result.shared_base = report.get("shared_base")
                if code == 0:
                    self._record_base(job, descriptor)
        except Exception as exc:  # noqa: BLE001 - one job's problem must not stop the others
            result.status = "failed"
            result.message = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(job.state, ignore_errors=True)
        self.say(job_line(result))
        return result

    def _tell(self, job: _Job, live: tuple[subprocess.Popen[bytes], Any],
              descriptor: Path | None, timeout: float) -> tuple[bool, int | None]:
        """Step 4 in the child that waits since step 2: take a slot, tell it the base, and
        wait for it to end."""
        proc, log = live
        if not self.slots.acquire(lambda: self._stopping):
            return False, None
        use: Use | None = None
        try:
            order = f"finish {descriptor}\n" if descriptor is not None else "finish\n"
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # it ended meanwhile: its code says how
                proc.stdin.write(order.encode())
                proc.stdin.close()
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _terminate(proc)
                code = None
            use = self._child_done(proc, log, job)
            return True, code
        finally:
            self.slots.release(job.name, use)

    def _record_base(self, job: _Job, descriptor: Path | None) -> None:
        """OUT/NAME/base.json: the base the job's output now stands on, and what it needs
        of it (the next batch's skip and union read it)."""
        path = job.files.dir / BASE_FILE
        if descriptor is None or job.needs is None:
            path.unlink(missing_ok=True)
            return
        desc = read_base_descriptor(descriptor)
        doc = {"fleet": desc.fleet, "layers": desc.layers, "diff_id": desc.diff_id,
               "needs": job.needs}
        tmp = path.with_name(f".{BASE_FILE}.tmp")
        tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def fleet_summaries(self) -> list[dict[str, Any]]:
        """Every fleet's summary, its numbers filled in (call after run)."""
        for fill in self._finishers:
            fill()
        self._finishers.clear()
        return self.fleets

