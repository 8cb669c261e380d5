"""`tracer batch --share-base` on real fixture images, all built on the same base layer.

One fleet, four nights: two jobs; a third joins (the base grows for it, every output is
made again on the new base); it leaves with --pin-base (the base stays, nothing is made
again); it leaves without a pin, in another job order and another time zone (the base is
the first night's again, byte for byte). Every output is verified alone by the batch; the
test checks the layers the engine holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
FLEET = ("tmpjob", "privhelper", "hardcases")


def _layers(docker_client, ref: str) -> list[str]:
    return docker_client.images.get(ref).attrs["RootFS"]["Layers"]


@pytest.mark.integration
def test_a_fleet_shares_one_base_that_changes_only_with_the_union(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    for name in FLEET:
        fixture_image(name)
    run_id = uuid.uuid4().hex[:8]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    outputs = {n: f"tracer-test/fleet-{n}:{run_id}" for n in FLEET}
    for name in FLEET:
        data = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())
        data["output"] = f"docker-daemon:{outputs[name]}"
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"

    def batch(names: list[str], *extra: str, tz: str = "UTC") -> tuple[dict, dict, str]:
        env = {**os.environ, "TZ": tz}
        proc = subprocess.run([sys.executable, "-m", "tracer", "batch",
                               *(str(profiles / f"{n}.yaml") for n in names), "--out", str(out),
                               "--share-base", *extra], capture_output=True, text=True,
                              cwd=REPO, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        [fleet] = summary["fleets"]
        return {j["name"]: j for j in summary["jobs"]}, fleet, proc.stderr

    def why(job: str, path: str) -> str:
        return subprocess.run([sys.executable, "-m", "tracer", "why",
                               str(out / job / "report.json"), path],
                              capture_output=True, text=True, cwd=REPO).stdout

    try:
        # night 1: two jobs, one base under both outputs
        jobs, fleet, _ = batch(["tmpjob", "privhelper"])
        assert {n: j["status"] for n, j in jobs.items()} == {"tmpjob": "passed",
                                                             "privhelper": "passed"}
        first = fleet["base"]["diff_id"]
        for name in ("tmpjob", "privhelper"):
            assert _layers(docker_client, outputs[name])[0] == first
            assert len(_layers(docker_client, outputs[name])) == 2
        assert fleet["outputs"] == 2
        assert fleet["unique_bytes"] < fleet["single_layer_bytes"]
        assert fleet["unique_bytes"] == fleet["base"]["size"] + sum(
            j["shared_base"]["own_bytes"] for j in jobs.values())
        for name in ("tmpjob", "privhelper"):  # each job read only its own layers on top
            assert "layer(s) indexed once for the batch" in \
                (out / name / "run.log").read_text(), name

        # night 2: hardcases joins; the base grows for it alone, and every output of the
        # fleet is made again on the new base
        jobs, fleet, err = batch(["tmpjob", "privhelper", "hardcases"])
        assert all(j["status"] == "passed" for j in jobs.values()), jobs
        grown = fleet["base"]["diff_id"]
        assert grown != first and fleet["paths_added"] > 0 and fleet["paths_removed"] == 0
        assert any(line.startswith("hardcases joined the fleet: the base grows by")
                   for line in fleet["changes"]), fleet["changes"]
        assert "hardcases joined the fleet" in err
        assert {_layers(docker_client, ref)[0] for ref in outputs.values()} == {grown}
        # what only hardcases keeps is in tmpjob's image too, and `why` says for whom
        zone = "/usr/share/zoneinfo/Europe/Berlin"
        answer = why("tmpjob", zone)
        assert "kept in the shared base for hardcases" in answer, answer
        assert fleet["extra"]["tmpjob"]["bytes"] > 0

        # night 3: hardcases leaves; with --pin-base the last base stays: no output is
        # made again, so no node pulls anything new
        jobs, fleet, _ = batch(["tmpjob", "privhelper"], "--pin-base", str(out))
        assert {j["status"] for j in jobs.values()} == {"skipped"}
        assert fleet["pinned"] is True and fleet["base"]["diff_id"] == grown
        assert any(line.startswith("hardcases left the fleet") and "stay in the pinned base"
                   in line for line in fleet["changes"]), fleet["changes"]

        # night 4: without a pin, in the other order and another time zone: the union is
        # night 1's, and so is the base, byte for byte
        jobs, fleet, _ = batch(["privhelper", "tmpjob"], tz="Pacific/Kiritimati")
        assert {j["status"] for j in jobs.values()} == {"passed"}, jobs
        assert fleet["base"]["diff_id"] == first
        assert any("held for hardcases" in line and "left the base" in line
                   for line in fleet["changes"]), fleet["changes"]
        for name in ("tmpjob", "privhelper"):
            assert _layers(docker_client, outputs[name])[0] == first
    finally:
        for ref in outputs.values():
            with contextlib.suppress(Exception):  # not created
                docker_client.images.remove(ref, force=True)


@pytest.mark.integration
def test_ctrl_c_stops_a_fleet_and_leaves_nothing(docker_client, fixture_image, host_strace,
                                                 tmp_path: Path) -> None:
    """Ctrl-C while a fleet's jobs are analysed: every job stops with its own cleanup, no
    container stays, and the batch's private work dir (the index of the shared layers,
    the saved runs) is gone."""
    from conftest import interrupt_when_running, write_sleeping_profiles

    fixture_image("hardcases")
    profiles = tmp_path / "profiles"
    write_sleeping_profiles(profiles)
    work = tmp_path / "work"
    work.mkdir()
    proc = interrupt_when_running(
        ["batch", str(profiles), "--jobs", "2", "--out", str(tmp_path / "out"),
         "--share-base"], docker_client, lambda new: len(new) >= 2, cwd=REPO,
        env={**os.environ, "TRACER_WORKDIR": str(work)}, timeout=180)
    assert proc.returncode == 130, proc.stderr
    assert len(proc.pids) >= 3, "the batch and its two jobs"
    assert proc.containers() == []
    assert list(work.iterdir()) == []


@pytest.mark.integration
def test_a_run_in_two_steps_gives_the_image_of_one(docker_client, fixture_image, host_strace,
                                                   tmp_path: Path) -> None:
    """`--stop-after analyse --state DIR` then `--resume DIR` (two processes, as a fleet's
    jobs run when they cannot wait alive) writes and verifies the very image one
    `tracer minimize` writes: same digest, and the second step says it is unchanged."""
    fixture_image("tmpjob")
    output = f"tracer-test/fleet-steps-{uuid.uuid4().hex[:8]}:min"
    profile = str(REPO / "profiles" / "tmpjob.yaml")

    def minimize(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tracer", "minimize", profile, "--output",
                               f"docker-daemon:{output}", "--report",
                               str(tmp_path / "r.json"), *args], capture_output=True,
                              text=True, cwd=REPO, timeout=600)

    try:
        once = minimize()
        assert once.returncode == 0, once.stderr
        digest = json.loads((tmp_path / "r.json").read_text())["output_digest"]
        state = tmp_path / "state"
        first = minimize("--stop-after", "analyse", "--state", str(state))
        assert first.returncode == 0, first.stderr
        assert json.loads((tmp_path / "r.json").read_text())["stage"] == "analysed"
        assert docker_client.images.get(output).id == digest
        second = minimize("--resume", str(state))
        assert second.returncode == 0, second.stderr
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["verified"] and report["stage"] is None
        assert report["output_digest"] == digest and report["output_unchanged"]
    finally:
        with contextlib.suppress(Exception):  # not created
            docker_client.images.remove(output, force=True)
