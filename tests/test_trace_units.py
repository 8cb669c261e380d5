"""Small pure parts of the trace package: step timeline, argv resolution, strace errors."""

from __future__ import annotations

import pytest

from tracer.errors import BadInput
from tracer.profile_model import RunSpec
from tracer.trace.docker_runner import ImageConfig, effective_argv
from tracer.trace.run import Timeline, _strace_error
from tracer.trace.steps import first_lines

CFG = ImageConfig(
    entrypoint=["/docker-entrypoint.sh"],
    cmd=["nginx", "-g", "daemon off;"],
    workdir="/",
    user="",
    env=[],
)


def test_effective_argv_takes_each_part_from_the_profile_or_else_the_image():
    assert effective_argv(RunSpec(), CFG, "img") == [
        "/docker-entrypoint.sh",
        "nginx",
        "-g",
        "daemon off;",
    ]
    assert effective_argv(RunSpec(cmd=["nginx", "-t"]), CFG, "img") == [
        "/docker-entrypoint.sh",
        "nginx",
        "-t",
    ]
    assert effective_argv(RunSpec(entrypoint=["/bin/sh"], cmd=[]), CFG, "img") == ["/bin/sh"]


def test_an_image_with_nothing_to_run_is_bad_input():
    empty = ImageConfig(entrypoint=[], cmd=[], workdir="/", user="", env=[])
    with pytest.raises(BadInput, match="img"):
        effective_argv(RunSpec(), empty, "img")


def test_timeline_attributes_times_to_the_step_that_was_running():
    t = Timeline()
    t.starts, t.labels = [100.0, 105.0, 110.0], ["run", "smoke[0].http", "stop"]
    assert t.step_of(99.0) == "run"  # strace's clock may be a hair ahead of ours
    assert t.step_of(104.9) == "run"
    assert t.step_of(105.0) == "smoke[0].http"
    assert t.step_of(200.0) == "stop"
    assert t.step_of(None) == "stop"


def test_strace_refusing_to_trace_is_told_apart_from_a_missing_program():
    assert _strace_error("/.tracer/strace: ptrace(PTRACE_TRACEME, ...): Operation not permitted\n")
    assert _strace_error("/.tracer/strace: exec: No such file or directory\n") is None
    assert _strace_error("app: ptrace is fun\n") is None


def test_first_lines_keeps_the_head_and_says_how_much_was_cut():
    text = "\n".join(f"line {i}" for i in range(30))
    out = first_lines(text, 3)
    assert out == "line 0\nline 1\nline 2\n... (27 more lines)"
