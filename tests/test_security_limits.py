"""Every container of a run has process, memory and CPU limits (README, "Security model").

The image under test is not trusted, and neither is what it does when it runs: without
limits a fork bomb in a traced or verification container takes the build host. The
limits are read back from inside the containers, traced and untraced, and a real fork
bomb runs through `tracer minimize`: it is stopped by its process limit and the run's
timeout, tracer says what happened (exit 3: it fails on the original), and nothing of it
is left.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest
from image_builders import run_tracer

from tracer.profile.model import Limits, Profile, RunSpec
from tracer.trace.run import run_smoke

pytestmark = pytest.mark.integration

SHOW = ('echo "pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null '
        '|| cat /sys/fs/cgroup/pids.max)"; '
        'echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null '
        '|| cat /sys/fs/cgroup/memory.max)"; grep NoNewPrivs /proc/self/status')


@pytest.mark.parametrize("traced", [False, True])
def test_limits_and_no_new_privileges_reach_every_container(fixture_image, tmp_path, traced):
    base = fixture_image("base")
    profile = Profile(name="limits-root", image=base, run=RunSpec(
        mode="job", entrypoint=["sh", "-c", SHOW], cmd=[], timeout=60,
        limits=Limits(pids=300, memory=512 << 20),
        stdout=r"^pids=300\nmem=536870912\nNoNewPrivs:\s+1$"))  # root: nothing to gain
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, r.steps


def test_a_non_root_app_keeps_setuid_where_the_image_may_need_it(fixture_image, tmp_path):
    base = fixture_image("base")
    run = RunSpec(mode="job", user="nobody", entrypoint=["sh", "-c", SHOW], cmd=[],
                  timeout=60, stdout=r"^pids=4096\n[\s\S]*NoNewPrivs:\s+0$")
    r = run_smoke(Profile(name="limits-user", image=base, run=run), base, traced=False,
                  workdir=tmp_path)  # whether the image has setuid programs: not known
    assert r.passed, r.steps
    run = RunSpec(mode="job", user="nobody", entrypoint=["sh", "-c", SHOW], cmd=[],
                  timeout=60, stdout=r"NoNewPrivs:\s+1$")
    r = run_smoke(Profile(name="limits-user", image=base, run=run), base, traced=False,
                  workdir=tmp_path, privileged_programs=False)
    assert r.passed, r.steps


def _ours(label_value: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter",
                          f"label=org.tracer.smoke={label_value}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_fork_bomb_is_held_by_its_process_limit(fixture_image, tmp_path: Path):
    base = fixture_image("base")
    before = len(psutil.pids())
    profile = tmp_path / "bomb.yaml"
    profile.write_text(
        f"version: 1\nname: fork-bomb\nimage: docker-daemon:{base}\n"
        "output: docker-daemon:tracer-test/security-fork-bomb:min\n"
        "run:\n  mode: job\n"
        "  entrypoint: [sh, -c, 'f() { f | f & }; f; sleep 60']\n  cmd: []\n"
        "  timeout: 20s\n  limits: {pids: 200}\n")
    res = run_tracer(["minimize", str(profile)], env={"TRACER_WORKDIR": str(tmp_path)},
                     timeout=600)
    subprocess.run(["docker", "rmi", "-f", "tracer-test/security-fork-bomb:min"],
                   capture_output=True)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "did not finish within the run timeout of 20s" in res.stderr
    assert "hit its limit of 200 processes" in res.stderr, res.stderr[-3000:]
    # traced, then untraced: 20 s each, and their output read by the deadline
    assert res.seconds < 150 and res.max_rss_mb < 400
    assert _ours("fork-bomb") == [], "a container of the run is left"
    assert len(psutil.pids()) < before + 100, "processes of the bomb are left on the host"


def test_a_container_killed_for_memory_says_so(fixture_image, tmp_path: Path):
    """The main job and a command step each run out of their memory limit: the engine
    kills them (137) and the step's message names the limit, so the operator knows to
    raise run.limits.memory instead of hunting a missing file."""
    from tracer.profile.model import CommandStep, SmokeStep

    base = fixture_image("base")
    hog = ["sh", "-c", "head -c 200000000 /dev/zero | tail"]  # tail holds it all
    job = Profile(name="limits-oom-job", image=base, run=RunSpec(
        mode="job", entrypoint=hog, cmd=[], timeout=60, limits=Limits(memory=32 << 20)))
    r = run_smoke(job, base, traced=False, workdir=tmp_path / "job")
    assert not r.passed
    assert "killed for using its 32MiB of memory (run.limits.memory)" in r.steps[0].message
    service = Profile(name="limits-oom-step", image=base, run=RunSpec(
        entrypoint=["sleep", "300"], cmd=[], timeout=60, limits=Limits(memory=32 << 20)),
        smoke=[SmokeStep(0, CommandStep(argv=hog, timeout=60))])
    r = run_smoke(service, base, traced=False, workdir=tmp_path / "step")
    assert not r.passed
    [step] = [s for s in r.steps if s.kind == "command"]
    assert "killed for using its 32MiB of memory (run.limits.memory)" in step.message, step
