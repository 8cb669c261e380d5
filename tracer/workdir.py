"""Work directories that say whose they are, and sweeping what dead tracer processes left.

A run keeps its temporary files (saved and spooled layers, traces, written images) in one
work directory and its containers and temporary images in the engine; it removes them on
success, failure and Ctrl-C. SIGKILL, an OOM kill or a power cut skip that cleanup, and
nothing removed the leftovers: later runs then met a full TMPDIR (exit 4) and containers
nobody would ever look at again.

So everything tracer leaves on the machine says who made it:

- a work directory holds `.tracer-owner`, a lock file that its process holds an exclusive
  flock on for as long as it lives (the kernel drops it however the process ends) and that
  records the owner (host, pid, process start time);
- containers carry `owner_labels()`: host, pid and the process start time (a pid alone is
  reused), plus the boot and pid namespace they were read in;
- temporary images carry the same owner in their tag (`temp_tag()`), not in a label: a
  verified candidate becomes the published output by a retag, and the output's config
  must stay the original's. Labelled images are recognized as well.

On start (`workdir()`), tracer removes what dead tracer processes left: work directories
whose lock is free, and labelled containers and temporary images whose owner process no
longer exists. It never touches anything of a live process (a concurrent `tracer batch`
job), nor anything without tracer's lock file or labels, nor what belongs to another host
or pid namespace, where it cannot tell life from death. It says what it removed on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tracer.engine import engine_failures
from tracer.errors import EnvironmentProblem, no_space

OWNER_LABEL = "org.tracer.owner"  # HOST:PID:STARTTIME of the process that made the object
SCOPE_LABEL = "org.tracer.owner.scope"  # BOOT_ID/PIDNS: where that pid and time mean it
LOCK_NAME = ".tracer-owner"  # in every work directory: flocked by, and naming, its owner
PREFIX = "tracer-"  # work directory names start with it: only those are looked at
TEMP_REPOSITORY = "tracer-tmp/"  # temporary images' tags: the only tags a sweep removes
_UNCLAIMED_GRACE = 60.0  # seconds a lock file may stay empty while its owner starts


@dataclass(frozen=True)
class Owner:
    """A process, told apart from any later process that gets the same pid."""

    host: str
    pid: int
    start: int  # start time in clock ticks after boot (/proc/PID/stat, field 22)
    boot: str  # /proc/sys/kernel/random/boot_id: a reboot ends every process
    pidns: str  # inode of the pid namespace the pid was read in

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    def labels(self) -> dict[str, str]:
        return {OWNER_LABEL: self.label, SCOPE_LABEL: f"{self.boot}/{self.pidns}"}

    @classmethod
    def from_labels(cls, labels: dict[str, str] | None) -> Owner | None:
        """The owner that `labels()` wrote, or None if they are not tracer's (or garbled)."""
        labels = labels or {}
        try:
            host, pid, start = labels[OWNER_LABEL].rsplit(":", 2)
            boot, _, pidns = labels.get(SCOPE_LABEL, "").partition("/")
            return cls(host, int(pid), int(start), boot, pidns)
        except (KeyError, ValueError):
            return None

    @property
    def token(self) -> str:
        """The owner in a form that fits in an image tag (`[a-z0-9]`, about 50 characters):
        a hash of the host, the boot id's first 8 hex digits, pid namespace, pid, start."""
        return (f"o{_host_hash(self.host)}{self.boot.replace('-', '')[:8]:0>8}"
                f"n{self.pidns or 0}p{self.pid}s{self.start}")

    @classmethod
    def from_tag(cls, tag: str) -> Owner | None:
        """The owner `temp_tag()` put into `tag`, or None."""
        m = _TOKEN.search(tag)
        if m is None:
            return None
        host, boot, pidns, pid, start = m.groups()
        return cls("#" + host, int(pid), int(start), boot, pidns)

    def alive(self, me: Owner | None = None) -> bool | None:
        """Whether this process still runs: None when this machine cannot tell (another
        host or pid namespace); a different boot means dead."""
        me = me or current_owner()
        if self.host not in (me.host, "#" + _host_hash(me.host)):
            return None
        if self.boot and me.boot and not me.boot.replace("-", "").startswith(
                self.boot.replace("-", "")):
            return False
        if self.pidns != me.pidns or not me.boot:
            return None
        return start_time(self.pid) == self.start


_TOKEN = re.compile(r"-o([0-9a-f]{8})([0-9a-f]{8})n(\d+)p(\d+)s(\d+)-")


def _host_hash(host: str) -> str:
    return f"{zlib.crc32(host.encode()):08x}"


def start_time(pid: int) -> int | None:
    """Process start time in clock ticks after boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count after the last ')'
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@cache
def current_owner() -> Owner:
    """This process as an Owner (read once)."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return Owner(socket.gethostname(), os.getpid(), start_time(os.getpid()) or 0,
                 _read("/proc/sys/kernel/random/boot_id"), pidns)


def owner_labels() -> dict[str, str]:
    """The labels to put on every container and temporary image this process creates, so
    that a later run can remove them if this one dies without cleaning up."""
    return current_owner().labels()


def temp_tag(purpose: str) -> str:
    """A unique tag for a temporary image (`PURPOSE-OWNER-RANDOM`) that names this process,
    so that a later run can remove the image if this one dies without cleaning up."""
    return f"{purpose}-{current_owner().token}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- work directories


def work_root() -> Path:
    """Where work directories go: $TRACER_WORKDIR, else the temp dir ($TMPDIR)."""
    base = os.environ.get("TRACER_WORKDIR")
    return Path(base) if base else Path(tempfile.gettempdir())


@contextlib.contextmanager
def workdir(prefix: str = PREFIX, *, say: Callable[[str], None] | None = None
            ) -> Iterator[Path]:
    """A private work directory, locked for the life of this process and removed whatever
    happens; first, what dead tracer processes left is swept (see the module docstring)."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"work directory names start with {PREFIX!r}: sweeps look for them")
    root = work_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(root, exc) from None
    sweep(root, say=say)
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise _cannot_create(root, exc) from None
    try:
        lock = _claim(path)
    except BaseException as exc:
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _cannot_create(root, exc) from None
        raise
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # still locked: no sweep races it
        os.close(lock)


def _cannot_create(root: Path, exc: OSError) -> EnvironmentProblem:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(root)
    return EnvironmentProblem(f"cannot create a work directory in {root}: "
                              f"{exc.strerror or exc}; set TRACER_WORKDIR (or TMPDIR) to a "
                              "writable directory")


def _claim(path: Path) -> int:
    """Lock the new work directory and write who owns it; return the lock's descriptor
    (held, never closed, until the directory is removed: its lock is the proof of life)."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a sweep looks at it
        record = dict(asdict(current_owner()), created=time.time())
        os.write(fd, json.dumps(record).encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Leftover:
    """Something a dead tracer process left and a sweep removed."""

    kind: str  # "work directory", "container", "temporary image"
    name: str
    size: int = 0  # bytes, for work directories


def sweep_workdirs(root: Path, me: Owner | None = None) -> list[Leftover]:
    """Remove work directories under `root` whose owner is dead (their lock is free)."""
    me = me or current_owner()
    removed = []
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(PREFIX)]
    except OSError:
        return []
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            fd = os.open(os.path.join(entry.path, LOCK_NAME),
                         os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # not a tracer work directory (or an older tracer's, unlabelled)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # locked: its process lives
            if not _dead_owners_dir(fd, me):
                continue
            size = disk_usage(entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Leftover("work directory", entry.path, size))
        finally:
            os.close(fd)
    return removed


def _dead_owners_dir(fd: int, me: Owner) -> bool:
    """With the lock taken: is this directory a dead owner's (and this host's to judge)?"""
    try:
        data = os.pread(fd, 4096, 0)
        st = os.fstat(fd)
    except OSError:
        return False
    try:
        record = json.loads(data)
        host = record["host"]
    except (ValueError, KeyError, TypeError):
        # no record yet: its owner may be starting (created, not yet locked) unless old
        return not data and time.time() - st.st_mtime > _UNCLAIMED_GRACE
    # a free lock means a dead owner on this host; a directory shared with another host
    # (network TMPDIR) is left to that host, where flock may not reach
    return host == me.host


def disk_usage(directory: str | os.PathLike[str]) -> int:
    """Bytes of disk the files below `directory` take (allocated blocks; files that vanish
    meanwhile count nothing): what a work directory or a download holds."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


# ---------------------------------------------------------------- the engine


def sweep_engine(client: Any, me: Owner | None = None,
                 local_name: Callable[[str], str] = lambda name: name) -> list[Leftover]:
    """Remove containers and temporary images labelled by tracer processes that are dead.

    `client` is a docker SDK client; `local_name` spells an image name as tracer wrote it
    (the engine's Flavour.local_name: Podman lists `localhost/tracer-tmp/...`). Containers
    are removed with their anonymous volumes; of an image only its `tracer-tmp/` tags
    whose owner (from the tag, else the image's labels) is dead are removed: an image that
    also carries another tag, such as a published output, stays. What the sweep cannot
    judge (an answer of the wrong shape, an image it cannot inspect) stays too. Engine
    errors leave things where they are, since a sweep never stops a run; a bug in tracer
    is not an engine error and is raised.
    """
    me = me or current_owner()
    api = client.api
    removed = []
    with contextlib.suppress(*engine_failures()):
        containers = api.containers(all=True, filters={"label": OWNER_LABEL})
        image_labels: dict[str, dict | None] = {}
        for c in containers if isinstance(containers, list) else ():
            if not isinstance(c, dict) or not isinstance(c.get("Id"), str):
                continue
            owner = Owner.from_labels(_labels(c))
            if owner is not None and owner.alive(me) is False and \
                    not _inherited(api, c, image_labels):
                with contextlib.suppress(*engine_failures()):
                    api.remove_container(c["Id"], force=True, v=True)
                    names = c.get("Names")
                    name = names[0] if isinstance(names, list) and names and \
                        isinstance(names[0], str) else c["Id"][:12]
                    removed.append(Leftover("container", name.lstrip("/")))
    with contextlib.suppress(*engine_failures()):
        images = api.images(filters={"reference": TEMP_REPOSITORY + "*"})
        for image in images if isinstance(images, list) else ():
            if not isinstance(image, dict):
                continue
            labelled = Owner.from_labels(_labels(image))
            tags = image.get("RepoTags")
            for tag in tags if isinstance(tags, list) else ():
                if not isinstance(tag, str) or \
                        not local_name(tag).startswith(TEMP_REPOSITORY):
                    continue
                owner = Owner.from_tag(tag.rpartition(":")[2]) or labelled
                if owner is not None and owner.alive(me) is False:
                    with contextlib.suppress(*engine_failures()):
                        api.remove_image(tag)
                        removed.append(Leftover("temporary image", local_name(tag)))
    return removed


def _labels(obj: dict) -> dict[str, str] | None:
    """An engine object's labels, or None when they are not a mapping of strings."""
    labels = obj.get("Labels")
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return None
    return labels


def _inherited(api: Any, container: dict, cache: dict[str, dict | None]) -> bool:
    """Are the container's owner labels its image's? A container inherits its image's
    labels: an image labelled `org.tracer.owner=HOST:1:1` would make every container run
    from it (and from every image built on it) look like a dead tracer's leftover, to be
    removed with its volumes. tracer sets the labels on its own containers, with its own
    value. True also when the image cannot be inspected: then nobody can tell."""
    image_id = container.get("ImageID") or container.get("Image") or ""
    if not isinstance(image_id, str):
        return True
    if image_id not in cache:
        try:
            image = api.inspect_image(image_id)
            config = image.get("Config") if isinstance(image, dict) else None
            cache[image_id] = None if not isinstance(config, dict) else \
                {} if config.get("Labels") is None else _labels(config)
        except engine_failures():  # gone or unreadable: cannot tell
            cache[image_id] = None
    labels = cache[image_id]
    if labels is None:
        return True
    mine = _labels(container) or {}
    return labels.get(OWNER_LABEL) == mine.get(OWNER_LABEL)


def _connected_engine() -> Any | None:
    """The engine (tracer.engine.Engine) this process already has, if any: a sweep never
    connects on its own (commands that need no engine, like `tracer ldd`, must not wait
    for one)."""
    from tracer.engine import connect, connected

    if not connected():
        return None
    try:
        return connect()
    except EnvironmentProblem:
        return None


_KINDS = (("work directory", "work directories"), ("container", "containers"),
          ("temporary image", "temporary images"))


def sweep(root: Path | None = None, *,
          say: Callable[[str], None] | None = None) -> list[Leftover]:
    """Remove what dead tracer processes left: work directories under `root` (default:
    `work_root()`), and containers and temporary images in the engine this process is
    connected to, if it is. One line per kind on stderr (or `say`)."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    root = root or work_root()
    removed = sweep_workdirs(root)
    connected = _connected_engine()
    if connected is not None:
        removed += sweep_engine(connected.sdk, local_name=connected.flavour.local_name)
    for kind, plural in _KINDS:
        items = [r for r in removed if r.kind == kind]
        if not items:
            continue
        what = f"{len(items)} {kind if len(items) == 1 else plural}"
        names = ", ".join(Path(r.name).name if kind == "work directory" else r.name
                          for r in items)
        if kind == "work directory":
            freed = sum(r.size for r in items)
            say(f"tracer: removed {what} left by dead tracer processes in {root} "
                f"({freed / (1 << 20):.0f} MB freed): {names}")
        else:
            say(f"tracer: removed {what} left by dead tracer processes: {names}")
    return removed
