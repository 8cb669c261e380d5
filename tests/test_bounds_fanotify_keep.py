"""What the fanotify recorder keeps of the events it reads (no kernel needed: the events
are the ones `_parse` makes from the kernel's, fed directly)."""

from __future__ import annotations

from tracer.trace.fanotify import FanEvent, FanotifyRecorder


def _ev(path: str, cmdline: tuple[str, ...] = ("app",), pid: int = 7) -> FanEvent:
    return FanEvent(path, pid, False, 1.0, "/usr/bin/app", cmdline)


def test_an_event_like_one_of_the_same_step_is_kept_once_and_argv_is_shared():
    step = [0]
    rec = FanotifyRecorder(epoch=lambda: step[0])
    for pid in range(100):
        rec._keep(_ev("/etc/x", tuple(f"w{i}" for i in range(50)), pid))
    step[0] = 1  # the next smoke step: the same open is evidence of that step too
    rec._keep(_ev("/etc/x", tuple(f"w{i}" for i in range(50))))
    rec._keep(_ev("/etc/y", tuple(f"w{i}" for i in range(50))))
    assert [e.path for e in rec.events] == ["/etc/x", "/etc/x", "/etc/y"]
    assert rec.events[0].cmdline is rec.events[2].cmdline, "one copy of a command line"
    assert rec.dropped == 0


def test_past_its_bounds_the_recorder_counts_instead_of_keeping():
    rec = FanotifyRecorder(max_events=10)
    for i in range(25):
        rec._keep(_ev(f"/f{i}"))
    assert len(rec.events) == 10 and rec.dropped == 15
    rec = FanotifyRecorder(max_bytes=10_000)
    for i in range(100):
        rec._keep(_ev(f"/f{i}", (f"argv-{i}" * 100,)))  # a new long command line each
    assert 0 < len(rec.events) < 20 and rec.dropped == 100 - len(rec.events)
