"""`tracer batch`: parallel jobs, incremental skips, never replacing a good output."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import interrupt_when_running

from tracer.batch import JobResult, junit_xml

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
    profiles.mkdir()
    for name in ("slow-a", "slow-b"):
        data = yaml.safe_load((REPO / "profiles" / "hardcases.yaml").read_text())
        data["name"] = name
        data["output"] = f"docker-daemon:tracer-test/{name}:never"
        # a fresh container per step: the command step keeps one up for a long time
        data["smoke"] = [{"command": ["sleep", "300"], "timeout": "400s"}]
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    before = {c.id for c in docker_client.containers.list(all=True)}
    proc = interrupt_when_running(
        ["batch", str(profiles), "--jobs", "2", "--out", str(tmp_path / "out")],
        docker_client, lambda new: len(new) >= 2, cwd=REPO, timeout=120)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert {c.id for c in docker_client.containers.list(all=True)} <= before
