"""Registry to registry: `tracer minimize` and `tracer batch` with docker:// input and output.

The input is pushed to the local registry once (test setup, with skopeo from the
engine's fixture image); from there tracer reads it with skopeo, the engine only runs
the traced and verification containers, and the verified image is pushed by skopeo.
The result is pulled back with the reference client and run.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from registry import (
    Registry,
    manifest_digest,
    push_engine_image,
    repo,
    skopeo,
    upload_requests,
)

pytestmark = pytest.mark.integration
REPO_DIR = Path(__file__).resolve().parent.parent
PROFILES = REPO_DIR / "profiles"


def tracer(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_DIR, stdin=subprocess.DEVNULL)


def profile_for(tmp: Path, image: str, output: str | None, name: str = "hardcases") -> Path:
    data = yaml.safe_load((PROFILES / "hardcases.yaml").read_text())
    data["name"], data["image"] = name, image
    if output is None:
        data.pop("output", None)
    else:
        data["output"] = output
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def hardcases(plain_registry: Registry, fixture_image) -> tuple[str, str, str]:
    """(repository, reference by tag, manifest digest) of the hardcases fixture in the
    plain registry."""
    fixture_image("hardcases")
    name = repo("hardcases")
    ref = plain_registry.ref(name, "1")
    return name, ref, push_engine_image(plain_registry, "tracer-fixture/hardcases:test", ref)


def test_registry_to_registry_with_no_daemon_reading_or_writing(
        plain_registry: Registry, hardcases, docker_client, host_strace, tmp_path: Path) -> None:
    name, ref, digest = hardcases
    out = plain_registry.ref(name, "1-min")
    report_path = tmp_path / "r.json"
    done = tracer("minimize", str(profile_for(tmp_path, ref, out)), "--tls-verify=false",
                  "--report", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["verified"] is True and report["image"] == ref and report["output"] == out
    assert report["input_digest"] == digest
    assert report["platform"] == "linux/amd64" and report["platform_runs"] == "native"
    assert {"pull", "read", "push", "verify"} <= set(report["seconds"])
    assert "read by skopeo copy by digest" in done.stderr
    # the registry holds what the report says was pushed ...
    pushed = manifest_digest(plain_registry, out)
    assert pushed == report["output_digest"]
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", out).stdout)
    image_id = manifest["config"]["digest"]
    assert len(manifest["layers"]) == 1
    # ... and the engine never held the output: it was written from the index, not saved
    with pytest.raises(Exception, match="No such image"):
        docker_client.images.get(image_id)

    # pulled back by the reference client into the engine, it runs and passes its checks
    local = f"tracer-test/roundtrip:{uuid.uuid4().hex[:8]}"
    copied = skopeo("copy", "--quiet", "--src-tls-verify=false", out, f"docker-daemon:{local}")
    assert copied.returncode == 0, copied.stderr
    try:
        run = subprocess.run(["docker", "run", "--rm", "--network", "none", local],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "hardcases: all ok" in run.stdout
    finally:
        subprocess.run(["docker", "rmi", "-f", local], capture_output=True)

    # the same run again: the tag already holds exactly the verified image
    again = tracer("minimize", str(profile_for(tmp_path, ref, out)), "--tls-verify=false",
                   "--report", str(report_path))
    assert again.returncode == 0, again.stderr
    report = json.loads(report_path.read_text())
    assert report["output_unchanged"] is True and report["output_digest"] == pushed
    assert "push" not in report["seconds"]


def test_by_digest_with_the_default_output(plain_registry: Registry, hardcases,
                                           host_strace, tmp_path: Path) -> None:
    name, _ref, digest = hardcases
    by_digest = plain_registry.ref(name, digest=digest)
    report_path = tmp_path / "r.json"
    done = tracer("minimize", str(profile_for(tmp_path, by_digest, None)),
                  "--tls-verify=false", "--report", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    default = plain_registry.ref(name, f"sha256-{digest[7:19]}-min")
    assert report["output"] == default
    assert manifest_digest(plain_registry, default) == report["output_digest"]


def test_a_platform_this_host_cannot_run_is_exit_4_before_any_pull(
        plain_registry: Registry, hardcases, host_strace, tmp_path: Path) -> None:
    _name, ref, _digest = hardcases
    done = tracer("minimize", str(profile_for(tmp_path, ref, None)), "--tls-verify=false",
                  "--platform", "linux/s390x")
    assert done.returncode == 4, done.stderr
    assert "linux/s390x" in done.stderr and "binfmt_misc" in done.stderr
    assert "pulled" not in done.stderr


def test_a_nightly_batch_re_pushes_nothing_that_did_not_change(
        plain_registry: Registry, hardcases, host_strace, tmp_path: Path) -> None:
    """The README's registry-to-registry recipe: the first night pushes; a night with the
    same input skips the job; a night whose input tag moved to a new manifest of the same
    image (same files) minimizes again, finds the output tag already holds the verified
    image, and pushes nothing."""
    name, _ref, digest = hardcases
    ref = plain_registry.ref(name, "nightly")  # a tag of this test's own, moved below
    assert skopeo("copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                  _ref, ref).returncode == 0
    out_name = repo("nightly")
    out = plain_registry.ref(out_name, "1")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    profile_for(profiles, ref, out)
    nightly = tmp_path / "nightly"
    log = Path("/var/log/tracer/registry-plain.log")

    def night() -> dict:
        done = tracer("batch", str(profiles), "--out", str(nightly), "--tls-verify=false")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((nightly / "summary.json").read_text())["jobs"][0]

    first = night()
    assert first["status"] == "passed", first
    pushed = manifest_digest(plain_registry, out)
    assert pushed

    second = night()
    assert second["status"] == "skipped", second

    # the input tag moves to another manifest of the same image (the same config and
    # layers, written out with other spacing: a rebuild that changed nothing)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref).stdout
    manifest = json.loads(raw)
    request = urllib.request.Request(
        f"http://{plain_registry.host}/v2/{name}/manifests/nightly", method="PUT",
        data=json.dumps(manifest, indent=3).encode(),
        headers={"Content-Type": manifest["mediaType"]})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 201
    assert manifest_digest(plain_registry, ref) != digest
    mark = log.stat().st_size
    third = night()
    assert third["status"] == "unchanged", third
    assert "already holds" in third["message"]
    assert manifest_digest(plain_registry, out) == pushed
    assert upload_requests(log, mark, out_name) == 0
    assert f"PUT /v2/{out_name}/manifests/" not in log.read_bytes()[mark:].decode("utf-8",
                                                                                  "replace")


def test_a_fleet_of_registry_inputs_is_read_as_the_batch_says(
        plain_registry: Registry, hardcases, host_strace, tmp_path: Path) -> None:
    """`batch --share-base --tls-verify=false` over two jobs of one plain-HTTP registry
    input: the batch reads their layers as told, so they form one fleet on a shared base
    (read over TLS they would have no layers, and run alone), and a second night skips
    both."""
    _name, ref, _digest = hardcases
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    outputs = {n: f"docker-daemon:tracer-test/{n}:{uuid.uuid4().hex[:8]}"
               for n in ("reg-fleet-a", "reg-fleet-b")}
    for n, out in outputs.items():
        profile_for(profiles, ref, out, name=n)
    nightly = tmp_path / "nightly"

    def night() -> dict:
        done = tracer("batch", str(profiles), "--out", str(nightly), "--share-base",
                      "--tls-verify=false")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((nightly / "summary.json").read_text())

    try:
        first = night()
        assert {j["name"]: j["status"] for j in first["jobs"]} == {
            "reg-fleet-a": "passed", "reg-fleet-b": "passed"}
        [fleet] = first["fleets"]
        assert sorted(fleet["jobs"]) == ["reg-fleet-a", "reg-fleet-b"]
        second = night()
        assert [j["status"] for j in second["jobs"]] == ["skipped", "skipped"], second
    finally:
        for out in outputs.values():
            subprocess.run(["docker", "rmi", "-f", out.removeprefix("docker-daemon:")],
                           capture_output=True)


def test_an_output_registry_that_refuses_is_said_before_any_work(
        plain_registry: Registry, auth_registry: Registry, hardcases, host_strace,
        tmp_path: Path) -> None:
    """Credentials for the output registry are checked when the run is planned: a wrong
    password is exit 2 naming the auth file, before the pull and the traced run, and
    never prints the password."""
    _name, ref, _digest = hardcases
    wrong = "Wr0ng-" + uuid.uuid4().hex[:10]
    token = base64.b64encode(f"{auth_registry.user}:{wrong}".encode()).decode()
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    out = auth_registry.ref(repo("refused"), "min")
    # the input is on the plain registry, the output on the TLS one: trust its CA for both
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR), "REGISTRY_AUTH_FILE": str(auth)}
    done = subprocess.run([sys.executable, "-m", "tracer", "minimize",
                           str(profile_for(tmp_path, ref, out)), "--tls-verify=false"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_DIR, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert f"REGISTRY_AUTH_FILE={auth}" in done.stderr and "refused" in done.stderr
    assert "tracer: reading" not in done.stderr and "traced run" not in done.stderr
    assert wrong not in done.stderr + done.stdout and token not in done.stderr
