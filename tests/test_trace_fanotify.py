"""The fanotify recorder on the host: opens and execs are seen with their paths."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prereq import missing as prereq_missing

from tracer.trace import fanotify
from tracer.trace.parser import excluder


@pytest.fixture(autouse=True)
def needs_fanotify() -> None:
    """CI runs as root on the engine's host: there fanotify must work (missing() fails)."""
    reason = fanotify.available()
    if reason is not None:
        prereq_missing(f"fanotify unusable: {reason}")


def test_recorder_sees_opens_and_execs_on_the_marked_filesystem(tmp_path: Path):
    data = tmp_path / "data.txt"
    data.write_text("x")
    prog = tmp_path / "mytrue"
    shutil.copy2("/usr/bin/true", prog)
    rec = fanotify.FanotifyRecorder(str(tmp_path))
    rec.start()
    try:
        subprocess.run(["cat", str(data)], check=True, capture_output=True)
        subprocess.run([str(prog)], check=True)
    finally:
        rec.stop()
    # The kernel names the file relative to the root of the mount it was opened through
    # when that mount is not reachable from our root (a container's overlay, or a bind
    # mounted /tmp in a sandbox): so compare the tail.
    opened = [e for e in rec.events if str(data).endswith(e.path) and e.path.endswith("/data.txt")]
    assert opened and not any(e.exec for e in opened)
    # the program is read from /proc when the event is read: a short-lived one may be gone
    assert all(e.program in ("", "/usr/bin/cat") for e in opened)
    assert any(
        str(prog).endswith(e.path) and e.path.endswith("/mytrue") and e.exec for e in rec.events
    )
    assert not rec.overflowed


def test_to_accesses_drops_tooling_and_excluded_paths_but_keeps_execs():
    ev = fanotify.FanEvent
    events = [
        ev("/etc/nginx/nginx.conf", 10, False, 5.0, "/usr/sbin/nginx", ("nginx",)),
        ev("/etc/localtime", 11, False, 5.0, "/.tracer/ld-linux-x86-64.so.2", ("/.tracer/ld",)),
        ev("/usr/share/zoneinfo/UTC", 12, False, 5.0, "/", ("runc", "init")),
        ev("/usr/bin/perl", 13, True, 5.0, "/.tracer/ld-linux-x86-64.so.2", ()),
        ev("/tmp/x", 10, False, 5.0, "/usr/sbin/nginx", ()),
    ]
    acc = fanotify.to_accesses(events, step_of=lambda _t: "run", excluded=excluder(["/tmp"]))
    assert [(a.path, a.syscall) for a in acc] == [
        ("/etc/nginx/nginx.conf", "fanotify:open"),
        ("/usr/bin/perl", "fanotify:exec"),
    ]
    assert all(a.ok and a.step == "run" for a in acc)


def test_in_container_strips_the_merged_dir_prefix():
    rec = fanotify.FanotifyRecorder("/var/lib/docker/overlay2/abc/merged")
    assert rec._in_container("/var/lib/docker/overlay2/abc/merged/etc/x") == "/etc/x"
    assert rec._in_container("/var/lib/docker/overlay2/abc/merged") == "/"
    assert rec._in_container("/etc/x") == "/etc/x"
