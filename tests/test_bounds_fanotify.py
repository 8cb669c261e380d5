"""The fanotify recorder's memory does not grow with what the app chooses to do.

Every open through the container's root mount is an event, and the recorder reads the
opening process's command line (up to 64 KiB) for each. An app that opens one file in a
loop with a long argv made the recorder hold one new copy of that argv per open: 2,000
opens of a 6,000-word command line cost about a gigabyte. And events are handed over
with a descriptor each: reading 2,700 of them at once under the usual limit of 1,024
descriptors lost the rest silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prereq import missing
from test_security_trace import RSS_LIMIT_KB, _run_child

from tracer.profile.model import Profile, RunSpec
from tracer.trace import fanotify

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def needs_fanotify() -> None:
    reason = fanotify.available()
    if reason is not None:
        missing(f"fanotify unusable: {reason}")


def test_an_app_opening_files_in_a_loop_with_a_long_argv(fixture_image, tmp_path: Path):
    words = [f"word{i:05d}" for i in range(6000)]  # 60 KB of command line
    # fresh files (the kernel merges repeated opens of one file still queued), then the
    # same file again and again
    loop = ('for my $i (1..2000) { open(my $f, ">", "/tmp/f$i") or die; close $f } '
            'for (1..2000) { open(my $f, "<", "/etc/hostname") or die; close $f } '
            'print "ok\\n"')
    profile = Profile(
        name="open-loop", image=fixture_image("base"),
        run=RunSpec(mode="job", entrypoint=["perl", "-e", loop, *words], cmd=[],
                    stdout="^ok$", timeout=120),
    )
    result, rss_kb, _ = _run_child(tmp_path, profile, fixture_image("base"), {})
    assert result["passed"], result["steps"]
    assert rss_kb < RSS_LIMIT_KB, f"tracer's memory grew to {rss_kb} KiB"
    assert "/etc/hostname" in result["paths"] and "/tmp/f2000" in result["paths"]


BURST = r"""
import json, os, resource, sys, time
from tracer.trace import fanotify
pid, limit = int(sys.argv[1]), int(sys.argv[2])
rec = fanotify.FanotifyRecorder()
rec._fd = fanotify._libc().fanotify_init(
    fanotify.FAN_CLASS_NOTIF | fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK
    | fanotify.FAN_UNLIMITED_QUEUE, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
rec.add(pid)
print("marked", flush=True)
sys.stdin.readline()  # the burst is queued: nothing was read yet
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
rec._drain()
print(json.dumps({"paths": sorted({e.path for e in rec.events}), "lost": rec.lost}))
"""


def test_a_burst_of_events_larger_than_the_descriptor_limit_loses_none(docker_client,
                                                                       fixture_image):
    c = docker_client.containers.run(fixture_image("base"), ["sleep", "1000"], detach=True,
                                     network_mode="none", name="tracer-test-rsec-burst")
    try:
        c.reload()
        pid = c.attrs["State"]["Pid"]
        child = subprocess.Popen([sys.executable, "-c", BURST, str(pid), "256"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "marked"
        # 1,000 distinct files created by one process: 1,000 events that cannot merge
        code, out = c.exec_run(["perl", "-e", 'for my $i (1..1000) { open(my $f, ">", '
                                '"/tmp/f$i") or die; close $f } print "done\\n"'])
        assert code == 0, out
        child.stdin.write("go\n")
        child.stdin.flush()
        got = json.loads(child.stdout.readline())
        child.wait(60)
    finally:
        c.remove(force=True)
    lost = {f"/tmp/f{i}" for i in range(1, 1001)} - set(got["paths"])
    assert not lost, f"{len(lost)} events lost"
