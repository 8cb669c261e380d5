"""End to end: `tracer minimize` on every fixture image, through the real command line.

Each minimized image must pass its smoke test, be much smaller, and a traced run of it
must never look for a file that the original had and it lost; on Podman as on Docker,
with the same keep-list and the same output. Also the contract's error paths: exit 3
(smoke fails on the original, nothing written), exit 2 (invalid profile, file:line), and
an interrupted run that leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
import yaml
from conftest import ENGINE_NAMES, EngineUnderTest, engine_under_test, interrupt_when_running

from tracer.engine import FLAVOURS

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
pytestmark = pytest.mark.integration

# Upper bounds of size_after / size_before (flattened file content) per fixture.
SIZE_BOUNDS = {"nginx": 0.10, "pyapp": 0.35, "hardcases": 0.35, "layers": 0.40}
PROFILE_NAMES = sorted(p.stem for p in PROFILES.glob("*.yaml"))


def tracer(*args: str, env: dict[str, str] | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


def write_profile(tmp_path: Path, base: str, **changes: object) -> Path:
    """A copy of a shipped profile with top-level fields replaced (None deletes)."""
    data = yaml.safe_load((PROFILES / f"{base}.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / f"{base}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Minimized:
    def __init__(self, name: str, proc: subprocess.CompletedProcess, report: dict,
                 output: str, report_path: Path) -> None:
        self.name, self.proc, self.report, self.output = name, proc, report, output
        self.report_path = report_path


@pytest.fixture(scope="module")
def minimized(host_strace, tmp_path_factory):
    """Run `tracer minimize` once per fixture and engine (on demand) and remove the
    outputs after."""
    done: dict[tuple[str, str], Minimized] = {}
    outputs: list[tuple[EngineUnderTest, str]] = []

    def get(name: str, engine: str = "docker") -> Minimized:
        if (name, engine) not in done:
            e = engine_under_test(engine)
            e.image(name)
            out_dir = tmp_path_factory.mktemp(f"min-{name}-{engine}")
            output = f"tracer-test/{name}:min-{uuid.uuid4().hex[:8]}"
            outputs.append((e, output))
            report_path = out_dir / f"{name}.json"
            proc = tracer("minimize", str(PROFILES / f"{name}.yaml"), "--output",
                          f"docker-daemon:{output}", "--report", str(report_path),
                          env=e.env())
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            done[name, engine] = Minimized(name, proc, report, output, report_path)
        return done[name, engine]

    yield get
    for e, output in outputs:
        e.remove_image(output)


@pytest.mark.parametrize("name", ["nginx", "pyapp", "hardcases", "layers"])
def test_minimized_image_passes_and_is_small(minimized, engine, name: str) -> None:
    m = minimized(name, engine.name)
    assert m.proc.returncode == 0, m.proc.stdout + m.proc.stderr
    r = m.report
    for key in ("name", "image", "output", "size_before", "size_after", "files_before",
                "files_after", "verified", "seconds", "kept"):
        assert key in r, key
    assert r["verified"] is True and r["name"] == name
    assert r["output"] == f"docker-daemon:{m.output}"
    assert 0 < r["size_after"] <= SIZE_BOUNDS[name] * r["size_before"], (
        r["size_after"], r["size_before"])
    assert 0 < r["files_after"] < r["files_before"]
    assert {"trace", "verify", "write"} <= set(r["seconds"])
    assert r["kept"].get("elf", 0) > 0 and r["kept"].get("traced", 0) > 0
    # CI and these tests run as root on the engine's host: both recorders must run
    assert r["recorders"] == ["strace", "fanotify"], r["recorder_notes"]
    # the before/after table is printed
    assert "before" in m.proc.stdout and "after" in m.proc.stdout and "verified: yes" in \
        m.proc.stdout
    # keep-list file next to the report: sorted, one line per path with reasons
    lines = Path(r["keeplist_file"]).read_text().splitlines()
    assert lines == sorted(lines) and all("\t" in line for line in lines)
    # the output is a real one-layer image with the original config
    original = engine.client.images.get(f"tracer-fixture/{name}:test").attrs["Config"]
    out = engine.client.images.get(m.output)
    assert len(out.attrs["RootFS"]["Layers"]) == 1
    for field in ("Env", "Entrypoint", "Cmd", "WorkingDir", "ExposedPorts", "Labels"):
        assert out.attrs["Config"].get(field) == original.get(field), field


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_both_engines_keep_the_same_paths_and_write_the_same_image(minimized,
                                                                   name: str) -> None:
    """Every fixture profile on Podman (rootful, both recorders) as on Docker: verified,
    the very same keep-list, line for line with the same reasons, and the same output
    image id (outputs are reproducible, and an engine image's id is its config's digest).
    Only which smoke steps a use fell in may differ: a service's worker reopening its log
    lands in whichever step runs then, on either engine."""
    on = {engine: minimized(name, engine) for engine in ENGINE_NAMES}
    for engine, m in on.items():
        assert m.proc.returncode == 0, (engine, m.proc.stdout + m.proc.stderr)
        assert m.report["verified"] is True
        assert m.report["recorders"] == ["strace", "fanotify"], (engine, m.report)
    docker, podman = on["docker"], on["podman"]
    assert _without_steps(Path(podman.report["keeplist_file"])) == \
        _without_steps(Path(docker.report["keeplist_file"]))
    assert podman.report["output_digest"] == docker.report["output_digest"]


def _without_steps(keeplist: Path) -> list[tuple[str, list[str]]]:
    """Each kept path with its distinct reasons, the step a traced use was in left out."""
    import re

    out = []
    for line in keeplist.read_text().splitlines():
        path, _, reasons = line.partition("\t")
        out.append((path, sorted({re.sub(r" in (run|smoke\[\d+\]\.\w+)$", "", r)
                                  for r in reasons.split("; ")})))
    return out


@pytest.mark.parametrize("name,engine", [
    *[(n, "docker") for n in ("nginx", "pyapp", "hardcases")], ("hardcases", "podman")],
    indirect=["engine"])
def test_minimized_run_never_misses_an_original_file(minimized, name: str, engine) -> None:
    m = minimized(name, engine.name)
    assert m.proc.returncode == 0, m.proc.stderr
    proc = tracer("diagnose", str(PROFILES / f"{name}.yaml"), "--image",
                  f"docker-daemon:{m.output}", "--json", "--quiet", env=engine.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    diagnosis = json.loads(proc.stdout)
    assert diagnosis["passed"] is True
    assert diagnosis["missing"] == [], diagnosis["missing"][:20]


def test_why_answers_kept_untouched_and_absent_paths(minimized) -> None:
    m = minimized("nginx")
    assert m.proc.returncode == 0, m.proc.stderr
    kept = tracer("why", str(m.report_path), "/usr/sbin/nginx")
    assert kept.returncode == 0 and "is KEPT because" in kept.stdout
    assert "elf:" in kept.stdout and "traced:" in kept.stdout
    untouched = tracer("why", str(m.report_path), "/usr/bin/apt-get")
    assert "in the original image but nothing needed it" in untouched.stdout
    absent = tracer("why", str(m.report_path), "/no/such/file")
    assert "not in the original image at all" in absent.stdout
    as_json = json.loads(tracer("why", str(m.report_path), "/usr/sbin/nginx", "--json").stdout)
    assert as_json["kept"] is True and as_json["reasons"]


@pytest.mark.parametrize("name,needed,rule", [
    ("hardcases", "/opt/hard/plugins/libplug_zebra.so", "/opt/hard/plugins/**"),
    ("hardcases", "/usr/share/zoneinfo/Europe/Berlin", "/usr/share/zoneinfo/Europe/**"),
    ("pyapp", "/usr/lib/python3.11/json/decoder.py", "/usr/lib/python3.11/json/**"),
])
def test_excluding_a_needed_file_fails_verification_and_is_diagnosed(
        fixture_image, host_strace, docker_client, tmp_path: Path, name: str, needed: str,
        rule: str) -> None:
    fixture_image(name)
    base = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    profile = write_profile(tmp_path, name, exclude=[*base.get("exclude", []), rule],
                            keep={k: v for k, v in base.get("keep", {}).items() if k != "paths"}
                            | {"paths": [p for p in base.get("keep", {}).get("paths", [])
                                         if not needed.startswith(p.rstrip("*"))]})
    output = f"tracer-test/{name}:broken-{uuid.uuid4().hex[:8]}"
    report_path = tmp_path / "r.json"
    proc = tracer("minimize", str(profile), "--output", f"docker-daemon:{output}",
                  "--report", str(report_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert needed in proc.stdout and rule in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["verified"] is False
    missing = report["diagnosis"]["missing"]
    assert any(m["image_path"] == needed and m["excluded_by"] == rule for m in missing)
    # the output was never written: only verified images are published
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(output)
    excluded = tracer("why", str(report_path), needed)
    assert f"exclude rule {rule!r}" in excluded.stdout


def test_an_exclude_the_closure_undoes_is_reported_for_each_path(
        fixture_image, host_strace, tmp_path: Path) -> None:
    """`date` reads /etc/localtime -> /usr/share/zoneinfo/Etc/UTC; an exclude rule over the
    zone file cannot remove the target of a kept link (glibc would fall back to UTC and
    nobody would notice), so it stays, and the report, the summary and `why` say that the
    rule was overridden and why, instead of the rule appearing to match nothing."""
    fixture_image("hardcases")
    base = yaml.safe_load((PROFILES / "hardcases.yaml").read_text())
    rule = "/usr/share/zoneinfo/Etc/**"
    profile = write_profile(tmp_path, "hardcases", exclude=[*base["exclude"], rule],
                            smoke=[*base["smoke"], {"command": ["date", "+%Z"],
                                                    "stdout": "^UTC$"}])
    report_path = tmp_path / "r.json"
    output = f"tracer-test/hardcases:overridden-{uuid.uuid4().hex[:8]}"
    proc = tracer("minimize", str(profile), "--output", f"docker-daemon:{output}",
                  "--report", str(report_path))
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(report_path.read_text())
        entry = report["excluded_but_kept"]["/usr/share/zoneinfo/Etc/UTC"]
        assert entry["rule"] == rule
        assert "symlink: target of /etc/localtime" in entry["kept_because"]
        assert "/usr/share/zoneinfo/Etc/UTC" not in report["excluded_paths"]
        assert f"note: exclude {rule!r} matches" in proc.stdout
        answer = tracer("why", str(report_path), "/usr/share/zoneinfo/Etc/UTC").stdout
        assert "is KEPT because" in answer and f"exclude rule {rule!r} matches it" in answer
    finally:
        subprocess.run(["docker", "rmi", "-f", output], capture_output=True)


def test_smoke_failing_on_the_original_exits_3_with_its_evidence_and_writes_no_image(
        fixture_image, host_strace, docker_client, tmp_path: Path) -> None:
    """Exit 3 says which step failed and shows what it printed, on the console and in the
    report; no image is written and no keep-list (nothing was proven)."""
    fixture_image("hardcases")
    profile = write_profile(tmp_path, "hardcases", smoke=[
        {"command": ["/opt/hard/bin/helper.sh", "smoke"], "stdout": "^NOT WHAT IT PRINTS$"}])
    output = f"tracer-test/hardcases:never-{uuid.uuid4().hex[:8]}"
    report_path = tmp_path / "r.json"
    proc = tracer("minimize", str(profile), "--output", f"docker-daemon:{output}",
                  "--report", str(report_path))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "smoke[0].command" in proc.stderr
    assert "HELPER SMOKE" in proc.stderr  # the evidence: what the step printed
    report = json.loads(report_path.read_text())
    assert report["verified"] is False and "smoke[0].command" in report["failure"]
    failed = [s for s in report["original_steps"] if not s["passed"]]
    assert failed and "HELPER SMOKE" in failed[0]["output"]
    assert not (tmp_path / "r.keeplist").exists()
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(output)


def test_invalid_profile_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nimage: x:1\nsmoke:\n  - http: {url: 'http://127.0.0.1/', "
                   "status: ok}\n")
    proc = tracer("minimize", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:5: smoke[0].http.status: expected an integer" in proc.stderr


def test_interrupted_run_leaves_nothing_behind(engine, host_strace, tmp_path: Path) -> None:
    image = engine.image("nginx")
    docker_client = engine.client
    work = tmp_path / "work"
    work.mkdir()
    # A long last step keeps the traced container up, so the interrupt lands mid-run.
    base = yaml.safe_load((PROFILES / "nginx.yaml").read_text())
    name = f"nginx-{uuid.uuid4().hex[:8]}"  # its temp tags are tracer-tmp/NAME:...
    profile = write_profile(tmp_path, "nginx", name=name,
                            smoke=[*base["smoke"], {"sleep": "120s"}])
    output = f"tracer-test/nginx:interrupted-{uuid.uuid4().hex[:8]}"
    env = engine.env(TRACER_WORKDIR=str(work))
    image_id = engine.image_id(image)
    proc = interrupt_when_running(
        ["minimize", str(profile), "--output", f"docker-daemon:{output}"], docker_client,
        lambda new: any(c.attrs.get("Image") == image_id for c in new),
        cwd=REPO, env=env)
    err = proc.stderr
    assert proc.returncode == 130, err
    assert proc.containers() == [], "containers left behind"
    assert list(work.iterdir()) == [], "temp dirs left behind"
    local = FLAVOURS[engine.name].local_name
    leftovers = [local(t) for i in docker_client.images.list() for t in i.tags
                 if local(t).startswith(f"tracer-tmp/{name}:") or local(t) == output]
    assert leftovers == []


def test_republishing_removes_the_image_the_tag_named_before(
        fixture_image, host_strace, docker_client, tmp_path: Path) -> None:
    """Nightly runs re-tag their output; the previous image must not linger, dangling."""

    fixture_image("hardcases")
    output = f"tracer-test/hardcases:again-{uuid.uuid4().hex[:8]}"
    base = yaml.safe_load((PROFILES / "hardcases.yaml").read_text())
    # outputs are reproducible: a first image no other test makes, so nothing else tags it
    once = write_profile(tmp_path, "hardcases", keep={
        **base["keep"], "paths": [*base["keep"]["paths"], "/etc/debian_version"]})
    first = tracer("minimize", str(once), "--quiet", "--output", f"docker-daemon:{output}")
    assert first.returncode == 0, first.stderr
    old_id = docker_client.images.get(output).id
    more = write_profile(tmp_path, "hardcases", keep={
        **base["keep"], "paths": [*base["keep"]["paths"], "/usr/bin/apt-get"]})
    try:
        second = tracer("minimize", str(more), "--quiet", "--output", f"docker-daemon:{output}")
        assert second.returncode == 0, second.stderr
        assert docker_client.images.get(output).id != old_id
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(old_id)
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(output, force=True)


def test_archive_input_and_oci_output(fixture_image, host_strace, docker_client,
                                      tmp_path: Path) -> None:
    """Inputs outside the engine are run through a private temp tag, removed afterwards."""
    image = fixture_image("hardcases")
    archive = tmp_path / "hardcases.tar"
    with open(archive, "wb") as f:
        for chunk in docker_client.images.get(image).save(named=True):
            f.write(chunk)
    layout = tmp_path / "out-oci"
    name = f"hardcases-{uuid.uuid4().hex[:8]}"  # its temp tags are tracer-tmp/NAME:...
    profile = write_profile(tmp_path, "hardcases", name=name,
                            image=f"docker-archive:{archive}", output=f"oci:{layout}:min")
    proc = tracer("minimize", str(profile), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = json.loads((layout / "index.json").read_text())
    tags = [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            for m in index["manifests"]]
    assert tags == ["min"]
    leftovers = [t for i in docker_client.images.list() for t in i.tags
                 if t.startswith(f"tracer-tmp/{name}:")]
    assert leftovers == []


def test_output_naming_the_input_differently_is_refused(fixture_image, host_strace,
                                                        docker_client, tmp_path: Path) -> None:
    image = fixture_image("layers")
    before = docker_client.images.get(image).id
    profile = write_profile(tmp_path, "layers", output="docker-daemon:docker.io/" + image)
    proc = tracer("minimize", str(profile))
    assert proc.returncode == 2 and "never overwrites its input" in proc.stderr
    assert docker_client.images.get(image).id == before


def test_profile_names_that_are_no_repository_names_still_run(
        fixture_image, host_strace, docker_client, tmp_path: Path) -> None:
    """`layers-` is a valid profile name but not a valid image name: temp tags sanitize it."""
    fixture_image("layers")
    out = tmp_path / "out.tar"
    archive_in = tmp_path / "in.tar"
    with open(archive_in, "wb") as f:
        for chunk in docker_client.images.get("tracer-fixture/layers:test").save(named=True):
            f.write(chunk)
    profile = write_profile(tmp_path, "layers", name="layers-",
                            image=f"docker-archive:{archive_in}",
                            output=f"docker-archive:{out}")
    proc = tracer("minimize", str(profile), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.exists()
