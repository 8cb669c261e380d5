"""A run removes every container it made, and makes sure they are gone, on a busy engine too.

On a loaded host (load average 180 on 2 cores) the engine answered a forced removal of a
stopped service's container with an error (it was still killing it) or not in time, and
the container stayed: cleanup tried once and forgot it. The engine's answers are what a
test cannot make the real engine give on demand, so a fake API plays them here; the
load test (tests/test_load.py) runs the real thing.
"""

from __future__ import annotations

from types import SimpleNamespace

import docker

from tracer.trace.docker_runner import RUNNER_LABEL, DockerRunner


class _BusyEngine:
    """Refuses to remove a container `refusals` times ("could not kill"), then removes
    it; lists by label what it still has."""

    def __init__(self, refusals: int, late: list[dict] | None = None) -> None:
        self.refusals = refusals
        self.present: set[str] = set()
        self.removals: list[str] = []
        self.late = late or []

    def remove_container(self, ref: str, force: bool, v: bool) -> None:
        self.removals.append(ref)
        if ref not in self.present:
            raise docker.errors.NotFound("gone")
        if self.refusals:
            self.refusals -= 1
            raise docker.errors.APIError("cannot remove container: could not kill: tried to "
                                         "kill container, but did not receive an exit event")
        self.present.discard(ref)

    def inspect_container(self, ref: str) -> dict:
        if ref not in self.present:
            raise docker.errors.NotFound("gone")
        return {}

    def containers(self, all: bool, filters: dict) -> list[dict]:  # noqa: A002 - the SDK's
        return [c for c in self.late if filters["label"] == f"{RUNNER_LABEL}={c['runner']}"
                and c["Id"] in self.present]


def _runner(api: _BusyEngine, *names: str) -> DockerRunner:
    runner = DockerRunner(SimpleNamespace(api=api))
    for name in names:
        api.present.add(name)
        runner.created.append(name)
    return runner


def test_a_container_the_engine_is_slow_to_kill_is_removed_all_the_same(capsys):
    api = _BusyEngine(refusals=3)
    runner = _runner(api, "tracer-main", "tracer-step")
    runner.cleanup(deadline=30)
    assert api.present == set() and runner.created == []
    assert api.removals.count("tracer-main") + api.removals.count("tracer-step") == 5
    assert "warning" not in capsys.readouterr().err


def test_a_container_whose_create_answer_was_lost_is_found_by_the_runners_label():
    api = _BusyEngine(refusals=0)
    runner = _runner(api)
    api.late.append({"Id": "abc", "runner": runner.runner_id})
    api.present.add("abc")
    runner.cleanup(deadline=5)
    assert api.present == set()


def test_one_removal_that_fails_is_kept_for_cleanup():
    api = _BusyEngine(refusals=1)
    runner = _runner(api, "tracer-cmd")
    runner.remove(SimpleNamespace(id="tracer-cmd", name="tracer-cmd"))
    assert runner.created == ["tracer-cmd"], "forgotten while the engine still has it"
    runner.cleanup(deadline=5)
    assert api.present == set()


def test_what_cannot_be_removed_by_the_deadline_is_said(capsys):
    api = _BusyEngine(refusals=10**6)
    runner = _runner(api, "tracer-stuck")
    runner.cleanup(deadline=1)
    err = capsys.readouterr().err
    assert "could not remove container tracer-stuck" in err and "could not kill" in err
    assert runner.created == []
