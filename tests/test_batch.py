"""`tracer batch`: parallel jobs, incremental skips, never replacing a good output."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import engine_under_test, interrupt_when_running, write_sleeping_profiles

from tracer.batch import Batch, JobResult, _fingerprint, junit_xml, profile_digest
from tracer.profile.load import load_profile

REPO = Path(__file__).resolve().parent.parent


def test_junit_has_one_case_per_image_with_failures_and_skips() -> None:
    results = [JobResult("a", "a.yaml", "passed", 0, 1.0),
               JobResult("b", "b.yaml", "failed", 1, 2.0, message="verification <failed>"),
               JobResult("c", "c.yaml", "skipped", 0, 0.0, message="unchanged")]
    suite = ET.fromstring(junit_xml(results, 3.0))
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    assert suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["b"].find("failure").get("message") == "verification <failed>"
    assert cases["c"].find("skipped") is not None and cases["a"].find("failure") is None


def test_a_changed_stdin_file_is_not_skipped_as_unchanged(tmp_path: Path) -> None:
    """The job depends on the bytes it feeds: a new stdin_file (one byte of a binary
    document changed, the profile text the same) is a new job, never "unchanged"."""
    (tmp_path / "in.tar").write_bytes(b"not an image")  # the child fails at once on it
    (tmp_path / "out.tar").write_bytes(b"a previous output")
    doc = tmp_path / "doc.bin"
    doc.write_bytes(bytes(range(256)) + b"\x00\xff")
    profile = tmp_path / "app.yaml"
    profile.write_text(f"version: 1\nname: app\nimage: docker-archive:{tmp_path}/in.tar\n"
                       f"output: docker-archive:{tmp_path}/out.tar\nrun: {{mode: job}}\n"
                       "smoke:\n  - command: [sha256sum]\n    stdin_file: doc.bin\n")
    out = tmp_path / "out"
    state = out / "app" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps(_fingerprint(profile, load_profile(profile))))
    assert Batch(out, 1, False)._job(profile).status == "skipped"
    doc.write_bytes(bytes(range(256)) + b"\x00\xfe")
    again = Batch(out, 1, False)._job(profile)
    assert again.status == "failed" and again.exit_code == 2, again


def test_the_profile_digest_frames_each_input() -> None:
    """Inputs of any bytes cannot be shifted between steps, and none is not empty."""
    path = REPO / "profiles" / "hardcases.yaml"
    base = load_profile(path)
    from dataclasses import replace

    from tracer.profile.model import CommandStep, SmokeStep

    def with_stdins(*stdins: bytes | None) -> str:
        steps = [SmokeStep(i, CommandStep(argv=["cat"], stdin=s)) for i, s in enumerate(stdins)]
        return profile_digest(path, replace(base, smoke=steps))

    digests = {with_stdins(b"a\x00", b""), with_stdins(b"a", b"\x00"), with_stdins(b"a\x00", None),
               with_stdins(b"", b"a\x00"), with_stdins(None, b"a\x00")}
    assert len(digests) == 5


def test_bad_input_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tracer", "batch", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "no such profile file or directory" in proc.stderr


@pytest.mark.integration
def test_batch_runs_skips_and_keeps_the_last_good_output(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    fixture_image("hardcases")
    fixture_image("layers")
    run_id = uuid.uuid4().hex[:8]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    outputs = {}

    def write(name: str, base: str, exclude_extra: list[str] | None = None) -> None:
        data = yaml.safe_load((REPO / "profiles" / f"{base}.yaml").read_text())
        data["name"] = name
        data["output"] = outputs[name] = f"docker-daemon:tracer-test/{name}:batch-{run_id}"
        if exclude_extra:
            data["exclude"] = data.get("exclude", []) + exclude_extra
            data.get("keep", {}).pop("paths", None)
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    write("hardcases", "hardcases")
    write("layers", "layers")
    write("flaky", "hardcases")
    out = tmp_path / "out"

    def batch() -> tuple[subprocess.CompletedProcess, dict, ET.Element]:
        proc = subprocess.run([sys.executable, "-m", "tracer", "batch", str(profiles),
                               "--jobs", "2", "--out", str(out)], capture_output=True,
                              text=True, cwd=REPO, timeout=1800)
        summary = json.loads((out / "summary.json").read_text())
        return proc, {j["name"]: j for j in summary["jobs"]}, ET.parse(out / "junit.xml").getroot()

    try:
        proc, jobs, _ = batch()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert {n: j["status"] for n, j in jobs.items()} == {
            "hardcases": "passed", "layers": "passed", "flaky": "passed"}
        for name in jobs:
            assert (out / name / "run.log").exists() and (out / name / "report.json").exists()
        good_id = docker_client.images.get(outputs["flaky"].split(":", 1)[1]).id

        # Break one profile: its minimized image now fails verification.
        write("flaky", "hardcases", exclude_extra=["/opt/hard/plugins/**"])
        proc, jobs, junit = batch()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert jobs["hardcases"]["status"] == "skipped" and jobs["layers"]["status"] == "skipped"
        assert jobs["flaky"]["status"] == "failed" and jobs["flaky"]["exit_code"] == 1
        assert docker_client.images.get(outputs["flaky"].split(":", 1)[1]).id == good_id
        cases = {c.get("name"): c for c in junit.findall("testcase")}
        assert cases["flaky"].find("failure") is not None
        assert cases["hardcases"].find("skipped") is not None
        assert "flaky" in proc.stdout and "failed" in proc.stdout
    finally:
        for ref in outputs.values():
            with contextlib.suppress(Exception):  # not created
                docker_client.images.remove(ref.split(":", 1)[1], force=True)


@pytest.mark.integration
def test_ctrl_c_stops_every_job_and_leaves_no_container(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    fixture_image("hardcases")
    profiles = tmp_path / "profiles"
    write_sleeping_profiles(profiles)
    proc = interrupt_when_running(
        ["batch", str(profiles), "--jobs", "2", "--out", str(tmp_path / "out")],
        docker_client, lambda new: len(new) >= 2, cwd=REPO, timeout=120)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert len(proc.pids) >= 3, "the batch and its two jobs"
    assert proc.containers() == []


@pytest.mark.integration
def test_each_job_leaves_its_own_files_and_diffs_against_the_last_passed_run(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    """report.json, report.keeplist and the sizes in the summary are the run's own (so
    `tracer why` on them explains that run); the keep-list diff compares with the last run
    that passed, never with a failed one."""
    fixture_image("tmpjob")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    output = f"tracer-test/rcore-batch-{uuid.uuid4().hex[:8]}:min"
    base = yaml.safe_load((REPO / "profiles" / "tmpjob.yaml").read_text())
    out = tmp_path / "out"
    job = out / "tmpjob"

    def run(**changes: object) -> dict:
        data = {**base, "output": f"docker-daemon:{output}", **changes}
        (profiles / "tmpjob.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        subprocess.run([sys.executable, "-m", "tracer", "batch", str(profiles), "--out",
                        str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
        return json.loads((out / "summary.json").read_text())["jobs"][0]

    def why(path: str) -> str:
        return subprocess.run([sys.executable, "-m", "tracer", "why", str(job / "report.json"),
                               path], capture_output=True, text=True, cwd=REPO).stdout

    entry = "/usr/local/bin/tmpjob"
    try:
        # 1. the first run fails verification: its files explain that failure
        failed = run(exclude=[*base["exclude"], entry])
        assert (failed["status"], failed["exit_code"]) == ("failed", 1)
        assert failed["message"].startswith("the minimized image failed verification: run: ")
        assert "NOT kept" in why(entry) and entry in why(entry)
        # 2. it passes: no earlier passed run, so nothing to diff with
        passed = run()
        assert passed["status"] == "passed"
        assert (passed["keeplist_added"], passed["keeplist_removed"]) == ([], [])
        assert "KEPT" in why(entry)
        # 3. it fails before anything is read: no sizes of an earlier run in its row
        broken = run(budgets={"entries": 10})
        assert (broken["status"], broken["exit_code"]) == ("failed", 2)
        assert (broken["size_before"], broken["size_after"]) == (None, None)
        assert not (job / "report.json").exists()
        # 4. passes keeping one file more: the diff against run 2 is exactly that file
        more = run(keep={"paths": ["/etc/debian_version"]})
        assert more["status"] == "passed"
        assert (more["keeplist_added"], more["keeplist_removed"]) == (
            ["/etc/debian_version"], [])
    finally:
        with contextlib.suppress(Exception):  # not created
            docker_client.images.remove(output, force=True)


@pytest.mark.integration
def test_a_batch_on_podman_runs_every_job_there_and_skips_what_did_not_change(
        podman, host_strace, tmp_path: Path) -> None:
    """`tracer batch --engine podman`: each job is a `tracer minimize` on Podman (its
    input read from Podman's store, its output published there), and a second night with
    nothing changed skips it by the image id Podman gives."""
    podman.image("tmpjob")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    output = f"tracer-test/rcore-batch-podman-{uuid.uuid4().hex[:8]}:min"
    data = yaml.safe_load((REPO / "profiles" / "tmpjob.yaml").read_text())
    (profiles / "tmpjob.yaml").write_text(yaml.safe_dump(
        {**data, "output": f"docker-daemon:{output}"}, sort_keys=False))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRACER_ENGINE"}

    def batch() -> dict:
        proc = subprocess.run([sys.executable, "-m", "tracer", "batch", str(profiles),
                               "--out", str(out), "--engine", "podman"], capture_output=True,
                              text=True, cwd=REPO, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((out / "summary.json").read_text())["jobs"][0]

    try:
        assert batch()["status"] == "passed"
        assert podman.has_image(output)
        assert not engine_under_test("docker").has_image(output)
        assert batch()["status"] == "skipped"
    finally:
        podman.remove_image(output)
