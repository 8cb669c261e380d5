"""Parsing a trace that lies: whatever bytes reach the trace FIFO, no crash, bounded memory.

An app running as root in its container can write into strace's FIFO (README, "Limits of
the model"): at worst it makes tracer keep or drop files of its own image. These traces
are what such an app can write; before, a number of thousands of digits ended the run
with exit 70 (int() refuses them) and a line without end was held whole.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from parse_child import parse_in_child

from tracer.trace import strace_syntax
from tracer.trace.parser import parse_trace

REPO = Path(__file__).resolve().parent.parent

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


_LONG_LINE = r"""
import json, sys
from tracer.trace.parser import parse_trace
with open(sys.argv[1], encoding="utf-8", errors="surrogateescape") as f:
    parsed = parse_trace(f)
print(json.dumps({"paths": sorted(a.path for a in parsed.accesses),
                  "long_lines": parsed.long_lines}))
"""


def test_a_line_without_end_is_skipped_in_bounded_pieces(tmp_path: Path):
    trace = tmp_path / "main.trace"
    with open(trace, "w") as f:
        f.write(OPEN.format(path="/etc/before"))
        f.write('7 1.0 openat(AT_FDCWD, "')
        for _ in range(80):  # 80 MiB without a newline
            f.write("a" * (1 << 20))
        f.write('", O_RDONLY) = 3\n')
        f.write(OPEN.format(path="/etc/after"))
    # in a child: what it reads must not raise this test process's peak memory, which
    # later tests' children would inherit
    done = subprocess.run([sys.executable, "-c", _LONG_LINE, str(trace)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    parsed = json.loads(done.stdout)
    assert parsed == {"paths": ["/etc/after", "/etc/before"], "long_lines": 1}


def test_distinct_uses_past_the_cap_are_counted_not_kept():
    text = "".join(OPEN.format(path=f"/n/{i}") for i in range(1000)) * 3
    parsed = parse_trace(io.StringIO(text), max_accesses=100)
    assert [a.path for a in parsed.accesses] == [f"/n/{i}" for i in range(100)]
    assert parsed.dropped == 3 * 900  # repeats of a kept use are the same use


def test_unfinished_calls_hold_at_most_max_pending_characters(monkeypatch):
    # one unfinished call per made-up pid, each with a long argument: a real strace
    # leaves one per traced thread; these would otherwise all be held until the end
    monkeypatch.setattr(strace_syntax, "MAX_PENDING", 64 << 10)
    arg = "a" * 1024
    lines = [f'{pid} 1.0 openat(AT_FDCWD, "{arg}" <unfinished ...>\n' for pid in range(1, 200)]
    # what was held shows in what comes back joined with its resumed half
    resumed = [f"{pid} 1.0 <... openat resumed>, O_RDONLY) = 3\n" for pid in range(1, 200)]
    held = len(list(strace_syntax.iter_syscalls([*lines, *resumed])))
    assert 0 < held <= (64 << 10) // len(arg)


def test_lines_just_under_the_line_limit_cost_their_size(tmp_path: Path):
    """A quoted string, a bare argument and brackets nested millions deep, each of 24 MiB:
    the regex engine kept backtracking state for every character of a string (4 GB for a
    30 MB one) and the argument split held a list entry per character."""
    trace = tmp_path / "main.trace"
    big = 24 << 20
    with open(trace, "w") as f:
        f.write(OPEN.format(path="/etc/before"))
        f.write('7 1.0 openat(AT_FDCWD, "' + "a" * big + '", O_RDONLY) = 3\n')
        f.write('7 1.0 openat(AT_FDCWD, "' + "\\x61" * (big // 4) + '", O_RDONLY) = 3\n')
        f.write("7 1.0 openat(AT_FDCWD, " + "b" * big + ", O_RDONLY) = 3\n")
        f.write("7 1.0 openat(AT_FDCWD, " + "[" * big + ", O_RDONLY) = 3\n")
        f.write(OPEN.format(path="/etc/after"))
    got = parse_in_child(trace)
    assert got["paths"] == ["/etc/after", "/etc/before"]  # none longer than a path can be
    assert got["accesses"] == 2
    assert got["seconds"] < 30
    assert got["maxrss_kb"] < 300 * 1024, f"{got['maxrss_kb']} KiB for 100 MiB of lines"
