"""Rootless Podman: tracer run by a normal user, on a path where only Podman answers.

scripts/setup makes the user `tracer-rootless` (subordinate ids, its runtime directory,
its own Podman API socket, a Python environment it can run tracer from). Run as that
user, tracer finds no Docker engine it may use (the socket is root's) and takes the
user's Podman. What works does: the image is read through `save` (the rootless store is
the user's, with shifted owners), strace traces inside the user namespace, the output is
verified and published. fanotify needs CAP_SYS_ADMIN on the host and is off, said in the
report. What cannot work is refused up front, naming the missing capability.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import engine_under_test
from prereq import missing

REPO = Path(__file__).resolve().parent.parent
USER = "tracer-rootless"
VENV_PYTHON = "/opt/tracer/rootless-venv/bin/python"
pytestmark = pytest.mark.integration


class Rootless:
    """Commands as the rootless user, with its Podman."""

    def __init__(self, user: pwd.struct_passwd, work: Path) -> None:
        self.user = user
        self.work = work
        self.runtime = f"/run/user/{user.pw_uid}"

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.user.pw_dir,
                "XDG_RUNTIME_DIR": self.runtime, "LANG": "C.UTF-8",
                "PYTHONPATH": str(REPO), "TRACER_WORKDIR": str(self.work)}

    def run(self, *argv: str, stdin: bytes | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", USER, "--", "env", "-i",
                               *(f"{k}={v}" for k, v in self.env().items()), *argv],
                              input=stdin, capture_output=True, cwd=REPO, timeout=timeout)

    def tracer(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(VENV_PYTHON, "-m", "tracer", *args)

    def podman(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return self.run("podman", *args, stdin=stdin)

    def load(self, ref: str) -> None:
        """The fixture image into the user's own store (Docker's copy, same id)."""
        want = engine_under_test("docker").image_id(ref)
        have = self.podman("image", "inspect", "-f", "{{.Id}}", ref).stdout.decode().strip()
        if f"sha256:{have}" == want:
            return
        saved = subprocess.run(["docker", "save", ref], capture_output=True, check=True)
        loaded = self.podman("load", "-q", stdin=saved.stdout)
        assert loaded.returncode == 0, loaded.stderr.decode()


@pytest.fixture(scope="module")
def rootless() -> Iterator[Rootless]:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        missing("running tracer as the rootless user needs root and runuser")
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        missing(f"no user {USER}; run scripts/setup")
    if not os.access(VENV_PYTHON, os.X_OK):
        missing(f"no {VENV_PYTHON}; run scripts/setup")
    # pytest's base directory is root's (0700): the user gets one of its own
    work = Path(tempfile.mkdtemp(prefix="tracer-rootless-test-"))
    os.chown(work, user.pw_uid, user.pw_gid)
    try:
        r = Rootless(user, work)
        ping = r.run("curl", "-sf", "--max-time", "5", "--unix-socket",
                     f"{r.runtime}/podman/podman.sock", "http://d/_ping")
        if ping.returncode != 0:
            missing(f"{USER}'s Podman API socket does not answer; run scripts/setup")
        yield r
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_rootless_run_on_a_podman_only_path_gives_a_verified_image(rootless,
                                                                      fixture_image) -> None:
    """As the rootless user (Docker's socket is root's: not usable), tracer takes Podman
    on its own, and the output is the image rootful Docker makes of the same profile, with
    strace alone and the report saying why."""
    ref = fixture_image("tmpjob")
    rootless.load(ref)
    output = f"tracer-test/tmpjob:rootless-{uuid.uuid4().hex[:8]}"
    report_path = rootless.work / "r.json"
    proc = rootless.tracer("minimize", "profiles/tmpjob.yaml", "--output",
                           f"docker-daemon:{output}", "--report", str(report_path))
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        err = proc.stderr.decode()
        assert "read by docker save (the engine runs rootless" in err
        report = json.loads(report_path.read_text())
        assert report["verified"] is True and report["recorders"] == ["strace"]
        assert any("fanotify not used: not running as root on the engine's host "
                   "(fanotify needs CAP_SYS_ADMIN" in n for n in report["recorder_notes"])
        listed = rootless.podman("image", "inspect", "-f", "{{.Id}}", output)
        assert f"sha256:{listed.stdout.decode().strip()}" == report["output_digest"]
    finally:
        rootless.podman("rmi", "-f", output)
    # rootful Docker, both recorders: the same paths kept, so the same output image
    docker = engine_under_test("docker")
    rootful = rootless.work / "rootful.json"
    out = f"tracer-test/tmpjob:rootful-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([sys.executable, "-m", "tracer", "minimize",
                           "profiles/tmpjob.yaml", "--engine", "docker", "--quiet",
                           "--output", f"docker-daemon:{out}", "--report", str(rootful)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    docker.remove_image(out)
    assert done.returncode == 0, done.stderr
    full = json.loads(rootful.read_text())
    assert full["recorders"] == ["strace", "fanotify"]
    assert full["output_digest"] == report["output_digest"]

    def paths(keeplist: str) -> list[str]:
        return [line.split("\t", 1)[0] for line in Path(keeplist).read_text().splitlines()]

    assert paths(report["keeplist_file"]) == paths(full["keeplist_file"])


def test_what_rootless_cannot_do_is_refused_up_front(rootless, fixture_image) -> None:
    """A service on port 80 of the host's network: rootless Podman's root cannot bind it
    (CAP_NET_BIND_SERVICE on the host); `tracer record` needs fanotify (CAP_SYS_ADMIN on
    the host). Both exit 4 before a container exists, naming the capability."""
    ref = fixture_image("tmpjob")
    rootless.load(ref)
    data = yaml.safe_load((REPO / "profiles" / "tmpjob.yaml").read_text())
    data["run"] = {"mode": "service", "network": "host", "ready": {"tcp": 80}}
    data["smoke"] = [{"http": {"url": "http://127.0.0.1/", "status": 200}}]
    profile = rootless.work / "port80.yaml"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    profile.chmod(0o644)
    before = rootless.podman("ps", "-aq").stdout
    proc = rootless.tracer("minimize", str(profile), "--engine", "podman")
    err = proc.stderr.decode()
    assert proc.returncode == 4, err
    assert "listens on port 80 of the host's network" in err
    assert "needs CAP_NET_BIND_SERVICE on the host" in err and "rootless" in err
    assert "traced run" not in err  # refused before anything ran
    assert rootless.podman("ps", "-aq").stdout == before
    recorded = rootless.tracer("record", "--image", ref, "-o", str(rootless.work / "x.rec"),
                               "--engine", "podman")
    assert recorded.returncode == 4
    assert "needs root (CAP_SYS_ADMIN)" in recorded.stderr.decode()
