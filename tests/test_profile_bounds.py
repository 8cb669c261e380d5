"""Hostile profiles cost little: `tracer validate` refuses them with exit 2, file and line,
in a child process whose peak memory stays near that of validating a tiny profile.

Measured before the bounds: a 50 MB profile took 416 s and 7.6 GB; 50,000 nested `[`
crashed with RecursionError (exit 70); nine levels of nine aliases expand to 10^9 nodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 120.0  # seconds before the child is killed and the test fails (a bound, not a
#                   speed measurement: the refusals take well under a second)
MEMORY_MARGIN_KB = 64 * 1024  # over the baseline child's peak RSS


@dataclass
class Child:
    code: int
    stdout: str
    stderr: str
    max_rss_kb: int


def run_measured(tmp: Path, *args: str) -> Child:
    """`python -m tracer ARGS` with its own peak RSS (wait4 gives exactly this child's)."""
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tracer", *args], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + DEADLINE
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            pytest.fail(f"tracer {' '.join(args)} still ran after {DEADLINE:.0f}s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss)


@pytest.fixture(scope="module")
def baseline_kb(tmp_path_factory: pytest.TempPathFactory) -> int:
    tmp = tmp_path_factory.mktemp("baseline")
    small = tmp / "small.yaml"
    small.write_text("version: 1\nname: small\nimage: a:1\n")
    child = run_measured(tmp, "validate", str(small))
    assert child.code == 0, child.stderr
    return child.max_rss_kb


def test_a_50_mb_profile_is_refused_before_parsing(tmp_path: Path, baseline_kb: int) -> None:
    big = tmp_path / "big.yaml"
    line = b"  - /usr/share/doc/some-package/changelog.Debian.gz\n"
    with open(big, "wb") as f:
        f.write(b"version: 1\nname: big\nimage: a:1\nexclude:\n")
        f.write(line * (50 * 2**20 // len(line)))
    child = run_measured(tmp_path, "validate", str(big))
    assert child.code == 2
    assert f"{big}: the profile is larger than the profile_bytes budget of 1MiB" in child.stderr
    assert "raise it with --budget profile_bytes=N" in child.stderr
    assert child.max_rss_kb < baseline_kb + MEMORY_MARGIN_KB


def test_50000_nested_brackets_are_bad_input_with_file_and_line(tmp_path: Path,
                                                                baseline_kb: int) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nname: deep\nimage: a:1\nexclude: " + "[" * 50_000 + "\n")
    child = run_measured(tmp_path, "validate", str(deep))
    assert child.code == 2, child.stderr
    assert f"{deep}:4: nested deeper than 64 levels" in child.stderr
    assert "Traceback" not in child.stderr
    assert child.max_rss_kb < baseline_kb + MEMORY_MARGIN_KB


def test_a_billion_laughs_is_bounded(tmp_path: Path, baseline_kb: int) -> None:
    lines = ["version: 1", "name: lol", "image: a:1", "run:", "  network: host", "smoke:",
             "  - exec: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  - exec: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("exclude: *a9")
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("\n".join(lines) + "\n")
    child = run_measured(tmp_path, "validate", str(laughs))
    assert child.code == 2, child.stderr
    assert f"{laughs}:" in child.stderr
    assert "aliases expand the document by more than 100,000 nodes" in child.stderr
    assert child.max_rss_kb < baseline_kb + MEMORY_MARGIN_KB


def test_wide_alias_fan_out_in_steps_is_bounded(tmp_path: Path, baseline_kb: int) -> None:
    """Quadratic, not exponential: 2,000 steps that each alias a 2,000-word argv."""
    argv = "[" + ", ".join(["w"] * 2000) + "]"
    text = ("version: 1\nname: fan\nimage: a:1\nrun: {network: host}\nsmoke:\n"
            f"  - exec: &argv {argv}\n" + "  - exec: *argv\n" * 2000)
    fan = tmp_path / "fan.yaml"
    fan.write_text(text)
    child = run_measured(tmp_path, "validate", str(fan))
    assert child.code == 2, child.stderr
    assert "aliases expand the document by more than 100,000 nodes" in child.stderr
    assert child.max_rss_kb < baseline_kb + MEMORY_MARGIN_KB
