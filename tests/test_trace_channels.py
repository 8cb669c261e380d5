"""Trace channels: FIFOs tracer made, read only if they are still the FIFOs it made, capped.

No engine needed: a thread in the test plays strace (the writer); the attacks a container
could try on a shared directory are made directly on the FIFO directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

from tracer.trace.channels import Gate, TraceChannels


def _write(path: Path, data: bytes) -> threading.Thread:
    def run() -> None:
        fd = os.open(path, os.O_WRONLY)  # blocks until the pump opened its end, as strace does
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_fifos_are_made_before_any_writer_in_a_directory_only_tracer_can_write(tmp_path):
    ch = TraceChannels(tmp_path, ["main", "smoke-0-exec"], cap=1 << 20, mount="/.tracer-out")
    assert stat.S_IMODE(ch.host_dir.stat().st_mode) == 0o755
    fifo = ch.host_dir / "main.fifo"
    st = fifo.lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert ch.container_path("smoke-0-exec") == "/.tracer-out/smoke-0-exec.fifo"
    assert not ch.store.is_relative_to(ch.host_dir), "the copies are never in the mount"
    ch.close()


def test_pump_copies_the_stream_then_removes_the_fifo_name(tmp_path):
    ch = TraceChannels(tmp_path, ["main"], cap=1 << 20, mount="/m")
    ch.open("main")
    writer = _write(ch.host_dir / "main.fifo", b"1 0.1 openat(...) = 3\n" * 1000)
    writer.join(10)
    ch.close()
    assert ch.traces()["main"].read_bytes() == b"1 0.1 openat(...) = 3\n" * 1000
    assert not (ch.host_dir / "main.fifo").exists(), "no second writer can find it"
    assert ch.notes() == []


def test_over_the_cap_the_stream_is_drained_so_the_writer_never_blocks(tmp_path):
    line = b"x" * 99 + b"\n"
    ch = TraceChannels(tmp_path, ["main"], cap=1050, mount="/m")
    ch.open("main")
    writer = _write(ch.host_dir / "main.fifo", line * 20_000)  # 2 MB, far more than a pipe
    writer.join(30)
    assert not writer.is_alive(), "the writer finished: the pump kept draining"
    ch.close()
    kept = ch.traces()["main"].read_bytes()
    assert kept == line * 10, "cut at the last whole line under the cap"
    assert any("trace_bytes" in n and "main" in n for n in ch.notes())


def test_a_swapped_fifo_is_not_read(tmp_path):
    """Whatever replaces the FIFO tracer made (another FIFO, a symlink to a host file) is
    never read: O_NOFOLLOW refuses the link, the inode check the impostor."""
    canary = tmp_path / "canary"
    canary.write_text("1 0.1 openat(AT_FDCWD, \"/INJECTED\", O_RDONLY) = 3\n")
    (tmp_path / "run").mkdir()
    ch = TraceChannels(tmp_path / "run", ["main", "exec"], cap=1 << 20, mount="/m")
    (ch.host_dir / "link").symlink_to(canary)
    os.rename(ch.host_dir / "link", ch.host_dir / "main.fifo")
    os.mkfifo(ch.host_dir / "impostor", 0o600)  # made first: it cannot reuse the inode
    os.rename(ch.host_dir / "impostor", ch.host_dir / "exec.fifo")
    ch.open("main")
    ch.open("exec")
    writer = _write(ch.host_dir / "exec.fifo", b"1 0.1 openat(AT_FDCWD, \"/INJECTED\") = 3\n")
    ch.close(timeout=5)
    writer.join(5)
    assert ch.traces() == {}
    assert len(ch.notes()) == 2 and all("main" in n or "exec" in n for n in ch.notes())
    assert canary.read_text().startswith("1 0.1"), "the link's target is untouched"


def test_close_ends_a_pump_whose_writer_never_came(tmp_path):
    ch = TraceChannels(tmp_path, ["main"], cap=100, mount="/m")
    ch.open("main")
    ch.close(timeout=10)
    assert not any(t.name == "trace-main" and t.is_alive() for t in threading.enumerate())


def test_gate_lets_a_late_waiter_through_and_never_blocks_tracer(tmp_path):
    ch = TraceChannels(tmp_path, [], cap=100, mount="/m")
    gate = Gate(ch, "go-main")
    assert stat.S_IMODE(gate.fifo.lstat().st_mode) == 0o644  # the app's user may read it
    gate.release()  # no reader yet: must not block
    with open(gate.fifo, "rb") as f:  # the waiter comes later and still reads its line
        assert f.readline() == b"go\n"
    gate.close()
    ch.close()


def test_a_gate_someone_filled_is_read_out_and_still_opened(tmp_path):
    """A root app can write into a gate of a later step (a read-only mount does not stop
    writes into a FIFO) and fill it: the release used to fail on EAGAIN (exit 70)."""
    ch = TraceChannels(tmp_path, [], cap=100, mount="/m")
    gate = Gate(ch, "go-smoke-0-command")
    filler = os.open(gate.fifo, os.O_RDWR | os.O_NONBLOCK)  # as the app holds it, full
    wrote = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            wrote += os.write(filler, b"x" * 4096)  # no newline: one endless line
    assert wrote >= 4096
    gate.release()
    assert not gate.stuck
    with open(gate.fifo, "rb") as f:  # the waiter reads a line and goes
        assert f.readline() in (b"\n", b"go\n")
    os.close(filler)
    gate.close()
    ch.close()
