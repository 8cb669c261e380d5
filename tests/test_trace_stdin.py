"""Standard input of jobs and steps: given text is fed and closed; none means empty and
closed (a program reading stdin sees end of file at once, it never waits for a terminal)."""

from __future__ import annotations

import pytest

from tracer.profile.model import CommandStep, ExecStep, Profile, Ready, RunSpec, SmokeStep
from tracer.trace.run import run_smoke

pytestmark = pytest.mark.integration

XML = "<report><item>alpha</item><item>beta</item></report>\n"
COUNT = "n=$(grep -o '<item>' | wc -l); echo \"items: $n\""


@pytest.mark.parametrize("traced", [False, True])
def test_a_job_reads_the_profiles_stdin(docker_client, fixture_image, tmp_path, traced):
    base = fixture_image("base")
    profile = Profile(name="stdin-job", image=base, run=RunSpec(
        mode="job", entrypoint=["sh", "-c", COUNT], cmd=[], stdin=XML, stdout="^items: 2$",
        timeout=60))
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)


@pytest.mark.parametrize("traced", [False, True])
def test_without_stdin_a_job_and_its_steps_read_end_of_file_at_once(
    docker_client, fixture_image, tmp_path, traced
):
    base = fixture_image("base")
    reads = "cat; echo \"eof:$?\"; [ -t 0 ] && echo tty || echo notty"
    want = "^eof:0\nnotty$"
    profile = Profile(
        name="no-stdin", image=base,
        run=RunSpec(mode="job", entrypoint=["sh", "-c", reads], cmd=[], stdout=want, timeout=60),
        smoke=[SmokeStep(0, CommandStep(argv=["sh", "-c", reads], stdout=want, timeout=20))],
    )
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)


@pytest.mark.parametrize("traced", [False, True])
def test_exec_and_command_steps_get_their_own_stdin(docker_client, fixture_image, tmp_path,
                                                    traced):
    base = fixture_image("base")
    profile = Profile(
        name="stdin-steps", image=base,
        run=RunSpec(entrypoint=["sh", "-c", "echo ready; exec sleep 1000"], cmd=[],
                    ready=Ready(log="ready", timeout=60), timeout=120),
        smoke=[
            SmokeStep(0, ExecStep(argv=["sh", "-c", COUNT], stdin=XML, stdout="^items: 2$")),
            SmokeStep(1, ExecStep(argv=["sh", "-c", "cat; echo eof"], stdout="^eof$",
                                  timeout=20)),
            SmokeStep(2, CommandStep(argv=["sh", "-c", COUNT], stdin=XML * 3,
                                     stdout="^items: 6$")),
        ],
    )
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)
    if traced:
        assert any(a.path == "/usr/bin/grep" and a.step == "smoke[0].exec" for a in r.accesses)
