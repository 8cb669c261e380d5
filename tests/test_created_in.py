"""End to end: applications that only CREATE things in a directory keep that directory.

Two fixtures, each minimized through the real command line with its shipped profile (no
tmpfs, no keep.paths): a non-root service that binds its unix socket in /run/sockd (owned
by its user), and a non-root job that writes only new files into /tmp and /var/tmp. Then
a sabotaged profile (exclude the directory) must fail verification, and the diagnosis
must name that directory and the rule, never `/`.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
pytestmark = pytest.mark.integration

CASES = {
    # fixture: (directories it creates in, owner uid, mode) for the written image
    "unixsock": {"/run/sockd": (4343, 0o750)},
    "tmpjob": {"/tmp": (0, 0o1777), "/var/tmp": (0, 0o1777)},
}
SABOTAGE = {"unixsock": "/run/sockd", "tmpjob": "/var/tmp"}


def run_tracer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=900, cwd=REPO)


@pytest.fixture()
def outputs(docker_client):
    made: list[str] = []
    yield made
    for ref in made:
        with contextlib.suppress(Exception):  # never written (a failed verification)
            docker_client.images.remove(ref, force=True)


def exported_entries(docker_client, ref: str) -> dict[str, tarfile.TarInfo]:
    """The image's filesystem as the engine itself exports it (not tracer's reader)."""
    container = docker_client.containers.create(ref, name=f"evidence-export-{uuid.uuid4().hex[:8]}")
    try:
        data = b"".join(container.export())
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {"/" + m.name.strip("/"): m for m in tf.getmembers()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_created_in_directories_are_kept_with_their_owner_and_mode(
        docker_client, fixture_image, host_strace, tmp_path: Path, outputs, name: str) -> None:
    fixture_image(name)
    profile = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    assert not profile["run"].get("tmpfs") and not profile.get("keep"), \
        "the point is that no tmpfs or keep.paths is needed"
    output = f"tracer-test/evidence-{name}:min-{uuid.uuid4().hex[:8]}"
    outputs.append(output)
    report = tmp_path / f"{name}.json"
    proc = run_tracer("minimize", str(PROFILES / f"{name}.yaml"), "--output",
                      f"docker-daemon:{output}", "--report", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(report.read_text())["verified"] is True
    keeplist = (tmp_path / f"{name}.keeplist").read_text().splitlines()
    for directory in CASES[name]:
        line = next(x for x in keeplist if x.startswith(directory + "\t"))
        assert "created in by /usr/local/bin/" in line, line
    written = exported_entries(docker_client, output)
    for directory, (uid, mode) in CASES[name].items():
        entry = written[directory]
        assert entry.isdir() and (entry.uid, entry.mode & 0o7777) == (uid, mode), directory
    assert written["/var/run"].issym(), "/var/run stays the image's symlink"
    root = run_tracer("why", str(report), "/")
    assert root.returncode == 0 and "/ is KEPT because" in root.stdout
    program = run_tracer("why", str(report), name if name == "tmpjob" else "sockd")
    assert "on the image's PATH" in program.stdout and "is KEPT because" in program.stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_excluding_the_directory_is_diagnosed_by_its_name(
        docker_client, fixture_image, host_strace, tmp_path: Path, outputs, name: str) -> None:
    fixture_image(name)
    directory = SABOTAGE[name]
    rule = f"{directory}/**"
    data = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    data["exclude"] = [*data.get("exclude", []), rule]
    profile = tmp_path / f"{name}-broken.yaml"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    output = f"tracer-test/evidence-{name}:broken-{uuid.uuid4().hex[:8]}"
    outputs.append(output)
    report = tmp_path / "r.json"
    proc = run_tracer("minimize", str(profile), "--output", f"docker-daemon:{output}",
                      "--report", str(report))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    diagnosis = json.loads(report.read_text())["diagnosis"]
    named = [(m["image_path"], m["excluded_by"]) for m in diagnosis["missing"]]
    assert (directory, rule) in named, named
    assert all(path != "/" for path, _ in named)
    assert diagnosis["suggested_keep_paths"] == [directory]
    assert f'- "{directory}"' in proc.stdout and "the directory it is in is missing" in \
        proc.stdout
    assert '- "/"' not in proc.stdout
