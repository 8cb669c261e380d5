"""New overlay mounts on this host, as the engine makes them: a container's root before it runs.

A short job can be over before the engine's `start` event reaches anyone: the engine
mounts the container's root (overlay2: `/var/lib/docker/overlay2/ID/merged`), asks the
runtime to create and start the process, and only then says "start". The mount itself is
the earliest sign of a new container, and this host's mount table says when it changes
(poll() on /proc/self/mountinfo wakes with POLLPRI on every mount and unmount). Marking
that overlay's filesystem at once (tracer.trace.fanotify `add_filesystem`) records the
container from its first exec on, however short it is.

Which image a new overlay belongs to is read from its options: Docker's overlay2 stacks
the container's `-init` layer on the image's layers, so the second `lowerdir` is the
image's top layer, by the short name in that layer's `link` file (`image_top_layer`).
Podman's overlay driver (containers-storage's, overlay2 under another name) has no init
layer: there it is the first (the engine's Flavour says how many come before it).
Only a host process in the engine's mount namespace sees these mounts; elsewhere (tracer
in a container, another storage driver) nothing matches, and the recorder marks each
container at its `start` event instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
OVERLAY_DRIVERS = ("overlay2", "overlay")  # Docker's name, containers-storage's (Podman)
MAX_MOUNTINFO = 64 << 20  # bytes of the mount table read at once (a host with many mounts)
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class OverlayMount:
    mountpoint: str
    lowerdirs: tuple[str, ...]
    dev: int  # the mount's device number (what stat() says of every file on it)


def _unoctal(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as `\\NNN` (octal)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def overlay_mounts(text: str) -> dict[str, OverlayMount]:
    """The overlay mounts of a mountinfo text, by mount point."""
    out: dict[str, OverlayMount] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, fs = left.split(" "), right.split(" ")
        if len(fields) < 5 or len(fs) < 3 or fs[0] != "overlay":
            continue
        lower: tuple[str, ...] = ()
        for option in fs[2].split(","):
            if option.startswith("lowerdir="):
                lower = tuple(_unoctal(d) for d in option[len("lowerdir="):].split(":"))
        major, _, minor = fields[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        mountpoint = _unoctal(fields[4])
        out[mountpoint] = OverlayMount(mountpoint, lower, os.makedev(int(major), int(minor)))
    return out


def image_top_layer(graph_driver: dict | None) -> str | None:
    """The short name overlay2 gives the image's top layer (its `link` file), or None when
    the engine does not store the image with overlay2 or the file is not readable here."""
    if not isinstance(graph_driver, dict) or graph_driver.get("Name") not in OVERLAY_DRIVERS:
        return None
    upper = (graph_driver.get("Data") or {}).get("UpperDir")
    if not isinstance(upper, str) or not upper.endswith("/diff"):
        return None
    try:
        link = (Path(upper).parent / "link").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return link if re.fullmatch(r"[A-Z0-9]{1,64}", link) else None


def is_container_of(mount: OverlayMount, top_layer: str, init_layers: int = 1) -> bool:
    """Does `mount` stack a container's `init_layers` layers (Docker's `-init` layer: 1;
    Podman: 0) right on the image's top layer? (An image built on this one has its own
    layers in between, so it does not match.)"""
    if len(mount.lowerdirs) <= init_layers:
        return False
    below = mount.lowerdirs[init_layers].rstrip("/")
    return below == f"l/{top_layer}" or below.endswith(f"/l/{top_layer}")


class MountWatch:
    """Calls `on_new(mount)` from a thread for each overlay mount that appears while it
    runs (mounts there at `start()` are not new)."""

    def __init__(self, on_new: Callable[[OverlayMount], None]) -> None:
        self.on_new = on_new
        self._file = open(MOUNTINFO, "rb")  # noqa: SIM115 - closed by stop()
        # by mount point AND device: an overlay unmounted and mounted again at the same
        # point between two reads (the engine sets a container up, then runs it) is new
        self._known = {(m.mountpoint, m.dev) for m in self._read().values()}
        self._stop = threading.Event()
        self._wake: tuple[int, int] | None = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []  # what on_new raised, for the recorder's notes

    def _read(self) -> dict[str, OverlayMount]:
        self._file.seek(0)
        data = self._file.read(MAX_MOUNTINFO)
        return overlay_mounts(data.decode("utf-8", "surrogateescape"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mountwatch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._file.fileno(), select.POLLPRI | select.POLLERR)
        assert self._wake is not None
        poller.register(self._wake[0], select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(1000):
                continue
            mounts = self._read()
            for point, mount in mounts.items():
                if (point, mount.dev) not in self._known:
                    try:
                        self.on_new(mount)
                    except Exception as exc:  # noqa: BLE001 - said in the notes, watch goes on
                        self.errors.append(f"{point}: {exc}")
            self._known = {(m.mountpoint, m.dev) for m in mounts.values()}

    def stop(self) -> None:
        """End the thread and close everything; safe to call twice."""
        self._stop.set()
        if self._wake is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        for fd in self._wake:
            os.close(fd)
        self._wake = None
        self._file.close()
