"""Parsing a trace that lies: whatever bytes reach the trace FIFO, no crash, bounded memory.

An app running as root in its container can write into strace's FIFO (README, "Limits of
the model"): at worst it makes tracer keep or drop files of its own image. These traces
are what such an app can write; before, a number of thousands of digits ended the run
with exit 70 (int() refuses them) and a line without end was held whole.
"""

from __future__ import annotations

import io
from pathlib import Path

from tracer.trace.parser import parse_trace
from tracer.trace.strace_syntax import MAX_PENDING, iter_syscalls

OPEN = '7 1.0 openat(AT_FDCWD, "{path}", O_RDONLY) = 3\n'


def test_numbers_of_thousands_of_digits_are_not_a_crash():
    huge = "9" * 5000
    lines = [
        f"{huge} 1.0 openat(AT_FDCWD, \"/pid\", O_RDONLY) = 3\n",
        f"7 1.0 clone(child_stack=NULL, flags=SIGCHLD) = {huge}\n",
        f"7 1.0 openat(AT_FDCWD, \"/ret\", O_RDONLY) = {huge}\n",
        OPEN.format(path="/etc/after"),
    ]
    paths = {a.path for a in parse_trace(lines).accesses}
    assert "/etc/after" in paths


def test_a_line_without_end_is_skipped_in_bounded_pieces(tmp_path: Path):
    trace = tmp_path / "main.trace"
    with open(trace, "w") as f:
        f.write(OPEN.format(path="/etc/before"))
        f.write('7 1.0 openat(AT_FDCWD, "' + "a" * (80 << 20))  # 80 MiB, no newline yet
        f.write('", O_RDONLY) = 3\n')
        f.write(OPEN.format(path="/etc/after"))
    with open(trace, encoding="utf-8", errors="surrogateescape") as f:
        parsed = parse_trace(f)
    assert {a.path for a in parsed.accesses} == {"/etc/before", "/etc/after"}
    assert parsed.long_lines == 1


def test_distinct_uses_past_the_cap_are_counted_not_kept():
    text = "".join(OPEN.format(path=f"/n/{i}") for i in range(1000)) * 3
    parsed = parse_trace(io.StringIO(text), max_accesses=100)
    assert [a.path for a in parsed.accesses] == [f"/n/{i}" for i in range(100)]
    assert parsed.dropped == 3 * 900  # repeats of a kept use are the same use


def test_unfinished_calls_hold_at_most_max_pending_characters():
    # one unfinished call per made-up pid, each with a long argument: a real strace
    # leaves one per traced thread; these would otherwise all be held until the end
    arg = "a" * (1 << 20)
    lines = (f'{pid} 1.0 openat(AT_FDCWD, "{arg}" <unfinished ...>\n' for pid in range(1, 200))
    # what is held shows in what comes back joined with its resumed half
    resumed = [f"{pid} 1.0 <... openat resumed>, O_RDONLY) = 3\n" for pid in range(1, 200)]
    calls = list(iter_syscalls([*lines, *resumed]))
    held = len(calls)
    assert 0 < held <= MAX_PENDING // len(arg) + 1
