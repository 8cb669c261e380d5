"""`tracer record`: what a running container (or every container of an image) really uses.

The smoke test proves a minimized image; it cannot walk every path production walks. So
the recorder attaches to containers that already run (staging, a canary, production) and
records every file their processes open or execute, with fanotify alone: no ptrace, no
restart, nothing added to the container, and a cost the service barely notices
(scripts/bench_record.py). What it writes is a recording (tracer.analysis.recording) that
`keep.evidence` merges into the keep-list.

Two ways to choose what is recorded:
- one container (`record_container`): its own root mount is marked through
  /proc/PID/root, as the traced run marks its containers (tracer.trace.fanotify), and
  only processes of its PID namespace count. What its processes had mapped or open when
  recording began (libraries, the program itself, open files) is read from /proc and
  recorded as `mapped`, so what was loaded before the recorder came is not missing. It
  ends when the duration is over, the container stops, or the operator stops it.
- every container of an image (`record_image`), for jobs: a job may last milliseconds,
  less than it takes the engine to say it started. The recorder watches this host's
  mount table (tracer.trace.mountwatch) and marks a new container's overlay filesystem as
  soon as the engine mounts it, before its first process runs; the engine's `start`
  events then say which container it was, and mark any container the mount table did not
  show (another storage driver) from its first process on, a little late.

Attribution: an event counts when it came through a container's own root mount (an event
through the engine's host-side mount of an overlay names a host path and is dropped) and
its process is not a host process (PID namespace). Opens by the runtime setting a
container up (`runc init`, whose executable is not in the image) are not the app's. Each
use is recorded once per path, kind and program, within the `entries` and
`recording_bytes` budgets; the rest is counted in the recording (`#dropped`).

Stopping (Ctrl-C, SIGTERM, the end of the duration, the container's exit) always writes
what was recorded, atomically.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.analysis.recording import RecordedContainer, Recording, write_recording
from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput, EnvironmentProblem
from tracer.trace import fanotify
from tracer.trace.mountwatch import MountWatch, OverlayMount, image_top_layer, is_container_of
from tracer.trace.recorder import ContainerRecorder, PathTable, snapshot

# -- the engine side -------------------------------------------------------------------------

@dataclass
class _Container:
    id: str
    name: str
    merged: str  # the engine's host-side mount point of its root ("" when not overlay2)
    seen: str


def _engine() -> Any:
    from tracer.engine import connect

    return connect()


def _running_pid(attrs: dict[str, Any], what: str) -> int:
    """The container's first process as this host sees it; EnvironmentProblem when it
    is not running or its processes are not visible here (a remote engine)."""
    state = attrs.get("State") or {}
    if not state.get("Running"):
        raise EnvironmentProblem(f"container {what} is not running (status: "
                                 f"{state.get('Status', 'unknown')}); `tracer record` "
                                 "attaches to a running container")
    pid = int(state.get("Pid") or 0)
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            mine = attrs.get("Id", "") in f.read(1 << 16)
    except OSError:
        mine = False
    if not pid or not mine:
        raise EnvironmentProblem(f"the processes of container {what} are not visible from "
                                 "here (a remote engine?); run `tracer record` on the "
                                 "engine's host")
    return pid


def _name(attrs: dict[str, Any]) -> str:
    return str(attrs.get("Name") or "").lstrip("/")


def _merged(attrs: dict[str, Any]) -> str:
    return _engine().flavour.root_mount_point(attrs.get("GraphDriver"))


def inspect_container(ref: str) -> dict[str, Any]:
    """The engine's view of container `ref` (name or id); BadInput when there is none."""
    import docker

    from tracer.engine import engine_errors

    engine = _engine()
    try:
        with engine_errors(f"inspect container {ref}"):
            return engine.api.inspect_container(ref)
    except docker.errors.NotFound:
        raise BadInput(f"no container {ref!r} in {engine.flavour.title} (`"
                       f"{engine.flavour.cli} ps` lists the running ones); to record every "
                       "container of an image, use --image REF") from None


def inspect_image(ref: str) -> dict[str, Any]:
    import docker

    from tracer.engine import engine_errors

    engine = _engine()
    name = ref.removeprefix("docker-daemon:")
    try:
        with engine_errors(f"inspect image {name}"):
            return engine.api.inspect_image(name)
    except docker.errors.NotFound:
        raise BadInput(f"image {name!r} is not in {engine.flavour.title}") from None


def check_can_record() -> None:
    """Refuse up front, exit 4, when this host cannot record (not root, no fanotify)."""
    reason = fanotify.available()
    if reason is not None:
        raise EnvironmentProblem(f"cannot record: {reason}; `tracer record` watches "
                                 "containers with fanotify, which needs root (CAP_SYS_ADMIN) "
                                 "on the engine's host")


def check_output(path: Path) -> None:
    """Bad input now, not after an hour of recording: a directory, or one not writable."""
    if path.is_dir():
        raise BadInput(f"-o {path}: is a directory; name the recording file")
    where = path.parent
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        raise BadInput(f"-o {path}: directory {where} does not exist or is not writable")


# -- one recording -----------------------------------------------------------------------------

@dataclass
class RecordResult:
    """What `record_*` did: the recording written, why it stopped, and notes for people."""

    recording: Recording
    output: Path
    stopped_by: str  # duration | container | operator
    foreign: int = 0  # events of host processes or through the host's view, not counted
    notes: list[str] = field(default_factory=list)


class _Session:
    """The state one recording shares between the main thread and its helper threads."""

    def __init__(self, budgets: Budgets, *, any_container: bool) -> None:
        self.table = PathTable(budgets.entries, budgets.recording_bytes)
        self.fan = ContainerRecorder(self.table, any_container=any_container)
        self.containers: dict[str, _Container] = {}
        self.notes: list[str] = []
        self.lock = threading.Lock()
        self.started = 0.0

    def recording(self, image_id: str, image: str, end: float) -> Recording:
        containers = [RecordedContainer(c.name, c.id[:12], c.seen)
                      for c in self.containers.values()]
        return Recording(host=socket.gethostname(), start=int(self.started), end=int(end),
                         image_id=image_id, image=image, containers=containers,
                         paths=self.table.result(),
                         dropped=self.table.dropped + self.fan.dropped)

    def fan_notes(self) -> list[str]:
        notes = list(self.notes)
        if self.fan.overflowed:
            notes.append("the fanotify queue overflowed: some opens were lost")
        if self.fan.lost:
            notes.append(f"{self.fan.lost} events whose file could not be opened were lost")
        if self.table.dropped:
            notes.append(f"{self.table.dropped:,} uses past the entries or recording_bytes "
                         "budget were not recorded (raise them with --budget)")
        return notes


@contextlib.contextmanager
def _signals_noted(stop: threading.Event) -> Iterator[None]:
    """While the recording is written, Ctrl-C and SIGTERM only say "stop" (they would
    otherwise cut the write short); outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _wait(deadline: float | None, stop: threading.Event, ended: Callable[[], bool],
          say: Callable[[str], None], table: PathTable) -> str:
    """Until the deadline, the container's end or the operator (Ctrl-C, SIGTERM)."""
    last = 0.0
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "duration"
            if ended():
                return "container"
            if stop.is_set():
                return "operator"
            if now - last >= 1.0:
                say(f"{len(table):,} paths recorded")
                last = now
            time.sleep(0.1 if deadline is None else min(0.1, max(deadline - now, 0.001)))
    except KeyboardInterrupt:
        return "operator"


def record_container(ref: str, output: Path, *, duration: float | None = None,
                     budgets: Budgets = DEFAULT,
                     say: Callable[[str], None] = lambda _m: None,
                     note: Callable[[str], None] = lambda _m: None,
                     stop: threading.Event | None = None) -> RecordResult:
    """Record the running container `ref` until `duration` seconds pass, it stops, or the
    operator stops the recorder (Ctrl-C, SIGTERM, or `stop` set by a caller that runs
    this in a thread); write the recording to `output` and return it. `note` gets one
    line when recording has begun."""
    check_output(output)
    check_can_record()
    attrs = inspect_container(ref)
    pid = _running_pid(attrs, ref)
    namespace = os.readlink(f"/proc/{pid}/ns/pid")
    root_dev = os.stat(f"/proc/{pid}/root").st_dev
    session = _Session(budgets, any_container=False)
    session.containers[attrs["Id"]] = _Container(attrs["Id"], _name(attrs), _merged(attrs),
                                                  "attached")
    stop = stop or threading.Event()
    try:
        session.fan.start(pid)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot record container {ref}: {exc}") from None

    def ended() -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") != namespace
        except OSError:
            return True

    stopped_by = "operator"
    try:
        session.started = time.time()
        processes = snapshot(namespace, root_dev, session.table)
        note(f"recording container {_name(attrs) or ref} ({attrs['Id'][:12]}, image "
             f"{attrs.get('Config', {}).get('Image', '?')}): {processes} processes, "
             f"{len(session.table):,} files mapped or open already; "
             + (f"for {duration:g}s" if duration else "until it stops")
             + f"; Ctrl-C or SIGTERM stops and writes {output}")
        deadline = time.monotonic() + duration if duration else None
        stopped_by = _wait(deadline, stop, ended, say, session.table)
    except KeyboardInterrupt:
        pass  # stopped while it began: what was recorded is still written
    finally:
        with _signals_noted(stop):
            end = time.time()
            session.fan.stop()
    with _signals_noted(stop):
        recording = session.recording(attrs.get("Image", ""),
                                      attrs.get("Config", {}).get("Image", ""), end)
        write_recording(recording, output)
    return RecordResult(recording, output, stopped_by, session.fan.foreign,
                        session.fan_notes())


def record_image(ref: str, output: Path, *, duration: float | None = None,
                 budgets: Budgets = DEFAULT,
                 say: Callable[[str], None] = lambda _m: None,
                 note: Callable[[str], None] = lambda _m: None,
                 stop: threading.Event | None = None,
                 early: bool = True) -> RecordResult:
    """Record every container of image `ref` that runs on this host while the recorder
    runs (those running already, and each one started meanwhile, however short); ends
    as `record_container` does, but not when a container does.
    `early=False` marks each container only at its start event, as on an engine without
    overlay2 (scripts/bench_record.py measures what that misses)."""
    check_output(output)
    check_can_record()
    image = inspect_image(ref)
    image_id = image["Id"]
    top = image_top_layer(image.get("GraphDriver")) if early else None
    init_layers = _engine().flavour.init_layers
    session = _Session(budgets, any_container=True)
    stop = stop or threading.Event()
    try:
        session.fan.start(None)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot record image {ref}: {exc}") from None
    early: dict[str, int] = {}  # overlay mount points marked as the engine mounted them

    def on_mount(mount: OverlayMount) -> None:
        if top is None or not is_container_of(mount, top, init_layers):
            return
        with session.lock:
            try:
                session.fan.add_filesystem(mount.mountpoint, mount.dev)
            except FileNotFoundError:
                # unmounted already: the engine mounts a new container's root once to set
                # it up before the mount it runs on; a missed one shows at `start`
                return
            if mount.mountpoint not in session.fan.host_views:
                session.fan.host_views += (mount.mountpoint,)
            early[mount.mountpoint] = mount.dev

    watch = MountWatch(on_mount) if top is not None else None
    events: _StartEvents | None = None
    stopped_by = "operator"
    try:
        session.started = time.time()
        if watch is not None:
            watch.start()
        events = _StartEvents(lambda cid, event: _on_start(session, cid, image_id, early,
                                                           event=event))
        for cid in _running_containers():
            _on_start(session, cid, image_id, early, attach=True)
        note(f"recording every container of {ref} ({image_id[7:19]}) on this host, "
             + ("each from its first process on (its overlay is marked as the engine "
                "mounts it)" if top is not None else
                "each marked when the engine says it started (not overlay2: its first "
                "milliseconds may be missed)")
             + (f", for {duration:g}s" if duration else "")
             + f"; Ctrl-C or SIGTERM stops and writes {output}")
        deadline = time.monotonic() + duration if duration else None
        stopped_by = _wait(deadline, stop, lambda: False, say, session.table)
    except KeyboardInterrupt:
        pass  # stopped while it began: what was recorded is still written
    finally:
        with _signals_noted(stop):
            end = time.time()
            if events is not None:
                events.stop()
            if watch is not None:
                watch.stop()
                session.notes += watch.errors
            session.fan.stop()
    if events is not None:
        session.notes += events.errors
    with _signals_noted(stop):
        recording = session.recording(image_id, ref.removeprefix("docker-daemon:"), end)
        write_recording(recording, output)
    return RecordResult(recording, output, stopped_by, session.fan.foreign,
                        session.fan_notes())


def _running_containers() -> list[str]:
    from tracer.engine import engine_errors

    with engine_errors("list the running containers"):
        return [c["Id"] for c in _engine().api.containers()]


def _on_start(session: _Session, cid: str, image_id: str, early: dict[str, int],
              attach: bool = False, event: dict[str, Any] | None = None) -> None:
    """A container started (or was running when recording began): record it if it is of
    the image; an overlay marked by its layers that turns out to be another image's (the
    same layers, another config) is unmarked."""
    import docker

    if cid in session.containers:
        return
    try:
        attrs = _engine().api.inspect_container(cid)
    except docker.errors.NotFound:
        # a job already removed (--rm) when its start event was read (Podman reads its
        # events from a file, later than Docker sends them): if it was ours, its mount
        # was marked, and it is named from what the event says
        _gone(session, cid, image_id, early, event or {})
        return
    merged = _merged(attrs)
    if attrs.get("Image") != image_id:
        with session.lock:
            if merged in early:
                session.fan.host_views = tuple(v for v in session.fan.host_views
                                               if v != merged)
                with contextlib.suppress(OSError):  # unmounted already
                    session.fan.add_filesystem(merged, early[merged], remove=True)
        return
    marked = merged in early
    if marked and (attrs.get("State") or {}).get("Running"):
        with contextlib.suppress(OSError):  # the mount it runs on, not the one before it
            marked = os.stat(merged).st_dev == early[merged]
    seen = "attached" if attach else "start" if marked else "late"
    session.containers[cid] = _Container(cid, _name(attrs), merged, seen)
    if marked and not attach:
        return
    try:  # not marked by the mount table: its root mount, from its process
        pid = _running_pid(attrs, cid[:12])
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        with session.lock:
            session.fan.add(pid)
        if attach:
            snapshot(namespace, os.stat(f"/proc/{pid}/root").st_dev, session.table)
    except (OSError, EnvironmentProblem):
        if not attach:
            session.notes.append(f"container {_name(attrs) or cid[:12]} ended before it "
                                 "could be marked: what it used is not recorded")


def _gone(session: _Session, cid: str, image_id: str, early: dict[str, int],
          event: dict[str, Any]) -> None:
    """A container removed before its start event was read: recorded by name when the
    event names this image and the mount watch marked an overlay of it that no recorded
    container ran on (that was this one's root, marked before its first exec)."""
    import docker

    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    image = attributes.get("image") or event.get("from")
    if not isinstance(image, str) or not image:
        return
    try:
        if _engine().api.inspect_image(image).get("Id") != image_id:
            return
    except docker.errors.NotFound:
        return
    with session.lock:
        claimed = {c.merged for c in session.containers.values()}
        unclaimed = [m for m in early if m not in claimed]
        if not unclaimed:
            return
        name = attributes.get("name")
        session.containers[cid] = _Container(cid, name if isinstance(name, str) else "",
                                             unclaimed[0], "start")


class _StartEvents:
    """The engine's container `start` events, each handed to `on_start(id, event)` in a
    thread."""

    def __init__(self, on_start: Callable[[str, dict[str, Any]], None]) -> None:
        from tracer.engine import connect

        self.errors: list[str] = []
        self._on_start = on_start
        self._stream = connect(None).api.events(
            decode=True, filters={"type": "container", "event": "start"})
        self._thread = threading.Thread(target=self._loop, name="engine-events", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            for event in self._stream:
                cid = event.get("id") if isinstance(event, dict) else None
                if isinstance(cid, str):
                    try:
                        self._on_start(cid, event)
                    except Exception as exc:  # noqa: BLE001 - noted; the stream goes on
                        self.errors.append(f"container {cid[:12]}: {exc}")
        except Exception:  # noqa: BLE001 - closed by stop(), or the engine went away
            return

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()
        self._thread.join(5)
