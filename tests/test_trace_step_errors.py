"""A step fails for what the engine or the app did, never for a bug of tracer.

An exec step's stream runs in a thread; everything that thread raised used to become the
step's failure, so a TypeError in tracer turned into "the smoke test failed" (exit 1 or 3)
and sent operators chasing their image. Engine and stream failures still fail the step;
anything else is raised in the run (exit 70, a bug to report).
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from tracer.profile.model import ExecStep
from tracer.trace import steps
from tracer.trace.docker_runner import DockerRunner
from tracer.trace.steps import StepContext, run_exec

pytestmark = pytest.mark.integration


@pytest.fixture
def running(docker_client, fixture_image):
    base = fixture_image("base")
    container = docker_client.containers.run(
        base, ["sleep", "300"], detach=True, network_mode="none",
        name=f"tracer-test-steperr-{uuid.uuid4().hex[:8]}")
    try:
        yield container
    finally:
        container.remove(force=True)


def _ctx(docker_client, container) -> StepContext:
    return StepContext(runner=DockerRunner(docker_client), container=container,
                       wrap=lambda argv, stem: argv, command_spec=lambda step, stem: None,
                       deadline=time.monotonic() + 60)


def test_an_engine_failure_in_the_stream_fails_the_step(monkeypatch, docker_client,
                                                        running) -> None:
    def lost(*_a, **_k):
        raise requests.exceptions.ConnectionError("connection reset by the engine")

    monkeypatch.setattr(steps, "_exec_stream", lost)
    outcome = run_exec(_ctx(docker_client, running), "smoke[0].exec",
                       ExecStep(argv=["true"]), "s0")
    assert not outcome.passed and "exec failed" in outcome.message


def test_a_bug_in_the_stream_is_raised_not_a_failed_step(monkeypatch, docker_client,
                                                         running) -> None:
    def bug(*_a, **_k):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(steps, "_exec_stream", bug)
    with pytest.raises(TypeError):
        run_exec(_ctx(docker_client, running), "smoke[0].exec", ExecStep(argv=["true"]), "s0")


def test_a_real_exec_still_passes(docker_client, running) -> None:
    outcome = run_exec(_ctx(docker_client, running), "smoke[0].exec",
                       ExecStep(argv=["sh", "-c", "echo ok"], stdout="^ok$"), "s0")
    assert outcome.passed, outcome.message
