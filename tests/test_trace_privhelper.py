"""Privileged helpers run by a non-root profile user keep their privilege when traced.

The privhelper fixture's job runs as user `privjob` (4300) and reads a root-only file
through a setuid-root helper and through a cap_dac_override file-capability program.
Under strace run as that user the kernel ignores both (the tracer lacks CAP_SYS_PTRACE)
and the job fails: tracer used to call that "the smoke test fails on the original image".
Now strace runs as root and starts the job as the user.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.profile.load import load_profile
from tracer.profile.model import Profile, RunSpec
from tracer.trace.run import run_smoke

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "privhelper.yaml"


def _with_user(profile: Profile, user: str) -> Profile:
    r = profile.run
    return Profile(name=profile.name, image=profile.image, smoke=profile.smoke,
                   run=RunSpec(user=user, network=r.network, mode=r.mode, exit=r.exit,
                               stdout=r.stdout, timeout=r.timeout))


@pytest.mark.parametrize("user", ["privjob", "4300", "4300:4300", "privjob:privjob"])
def test_setuid_and_file_capability_helpers_work_traced(docker_client, fixture_image,
                                                        tmp_path, user):
    image = fixture_image("privhelper")
    profile = _with_user(load_profile(PROFILE), user)
    r = run_smoke(profile, image, traced=True, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)
    assert "strace" in r.recorders
    secret = [a for a in r.accesses if a.path == "/etc/privhelper/secret" and a.ok]
    assert {a.program for a in secret} >= {"/usr/local/bin/suid-read",
                                            "/usr/local/bin/cap-read"}
    # the job itself never ran as root: its own read of the secret was refused
    refused = [a for a in r.accesses if a.path == "/etc/privhelper/secret" and not a.ok]
    assert refused and refused[0].errno == "EACCES" and refused[0].program == "/usr/bin/cat"
    # setpriv's own calls (the bundle's user switch) are not the app's
    assert not [a for a in r.accesses if a.program.startswith("/.tracer")
                and not a.syscall.startswith("fanotify:")]


def test_minimize_keeps_the_setuid_bit_and_the_capability(docker_client, fixture_image,
                                                          tmp_path):
    fixture_image("privhelper")
    out = "tracer-test/trace-privhelper:min"
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tracer", "minimize", str(PROFILE), "--output",
             f"docker-daemon:{out}", "--report", str(report)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        data = json.loads(report.read_text())
        assert data["verified"] is True
        # the engine's own view of the minimized image: mode bits and the xattr survived
        check = docker_client.containers.run(
            out, entrypoint=["/usr/local/bin/suid-read"], command=["/etc/privhelper/secret"],
            network_mode="none", remove=True)
        assert check == b"s3cret\n"
        check = docker_client.containers.run(
            out, entrypoint=["/usr/local/bin/cap-read"], command=["/etc/privhelper/secret"],
            network_mode="none", remove=True)
        assert check == b"s3cret\n"
    finally:
        with contextlib.suppress(Exception):  # the run may have failed before writing it
            docker_client.images.remove(out, force=True)


def test_a_sabotaged_minimization_is_diagnosed_by_the_missing_helper(docker_client,
                                                                     fixture_image, tmp_path):
    """Excluding the setuid helper breaks the job; the diagnosis names that program (a
    keep.binaries suggestion), not a directory tree."""
    import yaml

    fixture_image("privhelper")
    data = yaml.safe_load(PROFILE.read_text())
    data["exclude"] = [*data["exclude"], "/usr/local/bin/suid-read"]
    profile = tmp_path / "sabotaged.yaml"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    out = "tracer-test/trace-privhelper:sabotaged"
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tracer", "minimize", str(profile), "--output",
             f"docker-daemon:{out}", "--report", str(report)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        missing = json.loads(report.read_text())["diagnosis"]["missing"]
        helper = [m for m in missing if m["image_path"] == "/usr/local/bin/suid-read"]
        assert helper and helper[0]["excluded_by"] == "/usr/local/bin/suid-read"
        assert "/usr/local/bin/suid-read" in proc.stdout
        assert '"/usr/local/*"' not in proc.stdout and '"/usr/*"' not in proc.stdout
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(out, force=True)
