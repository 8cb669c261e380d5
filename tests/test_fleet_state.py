"""The batch's private state between a job's two steps: read back only as tracer's own
data, only from a directory only this user can write (tracer.statefile)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tracer import statefile
from tracer.errors import BadInput, EnvironmentProblem
from tracer.image.model import Entry
from tracer.jobslots import FIRST_GUESS, GiB, Slots, Use, limit_for, read_usage, write_usage
from tracer.trace.result import Access, Meaning


def test_tracer_data_round_trips(tmp_path: Path) -> None:
    data = {"entry": Entry("/x", "file", 0o644, 0, 0, 1.5, 3, "", {"user.a": b"\0"}, 1),
            "access": Access("/x", "openat", True, None, 1, "/bin/x", ("x",), "run",
                             Meaning.READ), "paths": {"/a", "/b"}, "where": Path("/p")}
    path = tmp_path / "state" / "s.pickle"
    statefile.save(data, path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert statefile.load(path) == data


class _Boom:
    def __reduce__(self):  # what a forged state file would do when read
        return (os.system, ("echo owned > /dev/null",))


def test_anything_but_tracer_data_is_refused(tmp_path: Path) -> None:
    state = statefile.private_dir(tmp_path / "state")
    path = state / "s.pickle"
    path.write_bytes(pickle.dumps(_Boom()))
    os.chmod(path, 0o600)
    with pytest.raises(BadInput, match="refusing to rebuild posix.system"):
        statefile.load(path)
    # a tracer function is no data either
    path.write_bytes(pickle.dumps(statefile.save))
    with pytest.raises(BadInput, match="refusing to rebuild tracer.statefile.save"):
        statefile.load(path)


def test_state_is_read_only_from_a_private_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(EnvironmentProblem, match="not a private directory"):
        statefile.load(shared / "s.pickle")
    state = statefile.private_dir(tmp_path / "state")
    statefile.save([1], state / "s.pickle")
    os.chmod(state / "s.pickle", 0o666)
    with pytest.raises(BadInput, match="not a state file tracer wrote"):
        statefile.load(state / "s.pickle")
    (state / "link.pickle").symlink_to(state / "s.pickle")
    with pytest.raises(BadInput, match="cannot read the state file"):
        statefile.load(state / "link.pickle")


def test_jobs_at_once_follow_cores_and_measured_memory(tmp_path: Path) -> None:
    assert limit_for(1 * GiB, 16 * GiB, 2) == 2  # cores bound it
    assert limit_for(4 * GiB, 10 * GiB, 8) == 2  # memory does: 8 GiB usable / 4 GiB
    assert limit_for(64 * GiB, 1 * GiB, 8) == 1  # never below one
    slots = Slots(None, None, available=10 * GiB, cpus=8)
    assert slots.per_job == FIRST_GUESS and slots.limit == 8
    assert slots.acquire()
    slots.release("big", Use(3 * GiB))  # a job was measured: the limit follows it
    assert slots.limit == 2
    write_usage(tmp_path, slots.measured)
    remembered = Slots(None, read_usage(tmp_path), available=10 * GiB, cpus=8)
    assert remembered.per_job == 3 * GiB and remembered.limit == 2  # before any job ends
    (tmp_path / "usage.json").write_text('{"old": 123, "bad": "x", "neg": -1}')
    assert read_usage(tmp_path) == {"old": Use(123)}  # an older file's plain numbers
    assert Slots(5, None, available=GiB, cpus=1).limit == 5  # --jobs fixes it
