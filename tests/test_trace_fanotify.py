"""The fanotify recorder on the host: opens and execs are seen with their paths."""

from __future__ import annotations

import time
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


@pytest.mark.integration
def test_mount_mark_sees_the_containers_opens_and_execs_and_nothing_of_the_hosts(
    docker_client, fixture_image
):
    """The container's own root mount is marked: its processes' opens and execs arrive with
    in-container paths; a host read through the merged directory makes no event at all;
    a live host process reading through /proc/PID/root is dropped and counted."""
    c = docker_client.containers.run(fixture_image("base"), ["sleep", "1000"], detach=True,
                                     network_mode="none", name="trace-fanotify-test")
    rec = fanotify.FanotifyRecorder()
    try:
        c.reload()
        pid = c.attrs["State"]["Pid"]
        merged = c.attrs["GraphDriver"]["Data"]["MergedDir"]
        rec.start(pid)
        c.exec_run(["cat", "/etc/debian_version"])
        c.exec_run(["/usr/bin/true"])
        Path(merged, "etc/hostname").read_bytes()  # the host's view: another mount
        with open(f"/proc/{pid}/root/etc/issue", "rb") as f:  # this live process: not ours
            f.read()
            deadline = time.monotonic() + 30
            while not rec.foreign and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        rec.stop()
        c.remove(force=True)
    paths = {(e.path, e.exec) for e in rec.events}
    assert ("/etc/debian_version", False) in paths
    assert ("/usr/bin/true", True) in paths and ("/usr/bin/cat", True) in paths
    assert not any(e.path.endswith(("/etc/hostname", "/etc/issue")) for e in rec.events)
    assert not any("overlay2" in e.path for e in rec.events), "in-container paths only"
    assert rec.foreign == 1
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


def test_an_open_by_a_process_already_gone_counts_only_without_strace():
    """strace, PID 1 of the container, reads /etc/localtime as it exits and is gone
    before the event is read: beside strace such opens are dropped (two runs of one
    profile kept different files), with fanotify alone they are all there is."""
    ev = fanotify.FanEvent
    events = [ev("/usr/share/zoneinfo/Etc/UTC", 14, False, 5.0, "", ()),
              ev("/usr/bin/helper", 15, True, 5.0, "", ()),
              ev("/etc/app.conf", 16, False, 5.0, "/usr/bin/app", ("app",))]

    def paths(**kw) -> list[str]:
        return [a.path for a in fanotify.to_accesses(events, step_of=lambda _t: "run",
                                                      excluded=lambda _p: False, **kw)]

    assert paths(keep_unidentified=False) == ["/usr/bin/helper", "/etc/app.conf"]
    assert paths(keep_unidentified=True) == [e.path for e in events]
