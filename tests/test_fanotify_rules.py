"""fanotify's security rule, without an engine: only the traced containers' processes count.

The mark is on the container's own mount; on top of that, every event's process must be in
a traced container's PID namespace, and a live process outside them (a host process that
reached the mount through /proc/PID/root) is dropped and counted, never recorded as the
app's. The engine-backed tests (test_trace_fanotify, test_bounds_fanotify) show it with
real containers; here the recorder's event parser is fed real kernel event records built
by the test, with real descriptors, so each branch of the rule is pinned.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer.trace.fanotify import (
    _METADATA,
    FAN_NOFD,
    FAN_OPEN,
    FAN_OPEN_EXEC,
    FAN_Q_OVERFLOW,
    FanEvent,
    FanotifyRecorder,
    to_accesses,
)

OUR_NS = os.readlink("/proc/self/ns/pid")
OTHER_NS = "pid:[1]"  # no process of this test lives there


def record(fd: int, pid: int, mask: int = FAN_OPEN) -> bytes:
    """One struct fanotify_event_metadata as the kernel writes it."""
    return _METADATA.pack(_METADATA.size, 3, 0, _METADATA.size, mask, fd, pid)


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for name in ("app.conf", "other.conf", "exe"):
        (tmp_path / name).write_text(name)
        out.append(tmp_path / name)
    return out


def recorder(namespaces: set[str]) -> FanotifyRecorder:
    rec = FanotifyRecorder()
    rec._namespaces = set(namespaces)
    return rec


def test_a_live_process_outside_the_traced_namespaces_is_dropped_and_counted(
        files: list[Path]) -> None:
    rec = recorder({OTHER_NS})
    fds = [os.open(f, os.O_RDONLY) for f in files[:2]]
    rec._parse(b"".join(record(fd, os.getpid()) for fd in fds))
    assert rec.events == [] and rec.foreign == 2
    for fd in fds:  # every descriptor the kernel handed over is closed, kept or not
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_process_in_a_traced_namespace_is_recorded_with_its_program(
        files: list[Path]) -> None:
    rec = recorder({OTHER_NS, OUR_NS})
    rec._parse(record(os.open(files[0], os.O_RDONLY), os.getpid())
               + record(os.open(files[2], os.O_RDONLY), os.getpid(), FAN_OPEN_EXEC))
    assert rec.foreign == 0
    assert [(e.path, e.exec) for e in rec.events] == [(str(files[0]), False),
                                                      (str(files[2]), True)]
    assert rec.events[0].program == os.readlink("/proc/self/exe")


def test_an_exited_process_is_attributed_by_the_mount_alone(files: list[Path]) -> None:
    """Its namespace cannot be read any more: the mount mark (the container's own mount)
    is what attributes it; it is kept, with no program, and marked unidentified later."""
    rec = recorder({OTHER_NS})
    rec._parse(record(os.open(files[0], os.O_RDONLY), dead_pid()))
    assert [(e.path, e.program) for e in rec.events] == [(str(files[0]), "")]
    assert rec.foreign == 0


def test_overflow_and_events_without_a_descriptor(files: list[Path]) -> None:
    rec = recorder({OUR_NS})
    rec._parse(record(FAN_NOFD, os.getpid(), FAN_Q_OVERFLOW)
               + record(os.open(files[0], os.O_RDONLY), os.getpid()))
    assert rec.overflowed and [e.path for e in rec.events] == [str(files[0])]


def test_a_short_or_truncated_record_ends_the_buffer(files: list[Path]) -> None:
    rec = recorder({OUR_NS})
    fd = os.open(files[0], os.O_RDONLY)
    bad = _METADATA.pack(8, 3, 0, _METADATA.size, FAN_OPEN, fd, os.getpid())
    rec._parse(bad + record(fd, os.getpid())[:10])
    assert rec.events == []
    os.close(fd)


def test_tooling_and_excluded_paths_never_become_accesses() -> None:
    events = [FanEvent("/etc/localtime", 1, False, 0.0, "/.tracer/strace", ("strace",)),
              FanEvent("/etc/passwd", 1, False, 0.0, "/usr/bin/runc", ("runc", "init")),
              FanEvent("/etc/app.conf", 2, False, 0.0, "/usr/bin/app", ("app",)),
              FanEvent("/proc/1/status", 2, False, 0.0, "/usr/bin/app", ("app",)),
              FanEvent("/etc/gone", 3, False, 0.0, "", ()),
              FanEvent("/.tracer/strace", 4, True, 0.0, "/.tracer/strace", ())]
    got = to_accesses(events, step_of=lambda ts: "run",
                      excluded=lambda p: p.startswith("/proc/"), keep_unidentified=False)
    # an exec is always the app's, even of a path under the tool prefix
    assert [(a.path, a.syscall) for a in got] == [("/etc/app.conf", "fanotify:open"),
                                                  ("/.tracer/strace", "fanotify:exec")]
    got = to_accesses(events, step_of=lambda ts: "run", excluded=lambda p: False)
    assert "/etc/gone" in [a.path for a in got]
