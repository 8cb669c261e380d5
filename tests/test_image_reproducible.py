"""Reproducible outputs: the same input and keep-list give the same digests for every
transport, wherever and whenever they are written; SOURCE_DATE_EPOCH is honoured; an
output that already holds the image is left untouched and said to be unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from image_builders import M, docker_archive, flatten_ref, layer

from tracer import __version__
from tracer.errors import BadInput
from tracer.image import WrittenImage, parse_reference, write_image

CREATED = "2021-02-03T04:05:06.789012345Z"
LAYERS = [layer(M("etc", "dir", mtime=1_600_000_001), M("etc/a", data=b"a", mtime=1_600_000_002),
                M("etc/b", data=b"bb", mode=0o4755, uid=7, mtime=1_600_000_003.5),
                M("etc/l", "symlink", linkname="a"), M("dev", "dir"),
                M("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
                M("etc/h", "hardlink", linkname="etc/a", mtime=1_600_000_002))]
KEEP = ["/etc/a", "/etc/l", "/dev/null", "/etc/h"]
PROFILE_HASH = "ab" * 32


def _input(where: Path) -> Path:
    where.mkdir(parents=True)
    return docker_archive(where / "in.tar", LAYERS, config_extra={"created": CREATED})


def _write(tmp: Path, out: str, keep: list[str] = KEEP, src: Path | None = None
           ) -> WrittenImage:
    """Flatten the input from its own copy at `src` and write it: nothing is shared
    between two calls but the input's bytes."""
    tmp.mkdir(parents=True, exist_ok=True)
    archive = src or _input(tmp / "input")
    flat = flatten_ref(f"docker-archive:{archive}", tmp / f"work-{uuid.uuid4().hex[:6]}")
    return write_image(flat, keep, parse_reference(out), workdir=tmp / "w",
                       comment="tracer test", profile_hash=PROFILE_HASH)


def _config_of_layout(layout: Path, written: WrittenImage) -> dict:
    return json.loads((layout / "blobs" / "sha256" / written.image_id[7:]).read_text())


@pytest.mark.parametrize("kind", ["docker-archive", "oci"])
def test_two_writes_on_two_places_give_the_same_digest(kind: str, tmp_path: Path) -> None:
    outs = []
    for run in ("one", "two"):
        base = tmp_path / run
        out = (f"docker-archive:{base}/out.tar:app:1" if kind == "docker-archive"
               else f"oci:{base}/layout:v1")
        outs.append(_write(base, out))
    first, second = outs
    assert first.digest == second.digest and first.digest == first.manifest_digest
    assert first.image_id == second.image_id and first.layer_digest == second.layer_digest
    if kind == "docker-archive":
        assert (tmp_path / "one/out.tar").read_bytes() == (tmp_path / "two/out.tar").read_bytes()
    else:
        for name in ("index.json", f"blobs/sha256/{first.digest[7:]}"):
            assert (tmp_path / "one/layout" / name).read_bytes() == \
                (tmp_path / "two/layout" / name).read_bytes()
    # one more kept file: another image
    third = _write(tmp_path / "three", f"oci:{tmp_path}/three-layout:v1",
                   keep=[*KEEP, "/etc/b"])
    assert third.digest != first.digest
    assert third.image_id != first.image_id


def test_created_is_the_inputs_and_the_history_names_tracer_and_profile(
        tmp_path: Path) -> None:
    w = _write(tmp_path, f"oci:{tmp_path}/layout:v1")
    cfg = _config_of_layout(tmp_path / "layout", w)
    assert cfg["created"] == CREATED
    last = cfg["history"][-1]
    assert last["created"] == CREATED and last["created_by"] == "tracer test"
    assert f"tracer {__version__}" in last["comment"]
    assert f"profile sha256:{PROFILE_HASH}" in last["comment"]
    assert "sha256:" in last["comment"].split("minimized from ")[1]
    assert str(tmp_path) not in json.dumps(cfg)  # nothing of this host's paths


def test_source_date_epoch_is_honoured(tmp_path: Path, monkeypatch) -> None:
    plain = _write(tmp_path / "a", f"oci:{tmp_path}/a-layout:v1")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = _write(tmp_path / "b", f"oci:{tmp_path}/b-layout:v1")
    cfg = _config_of_layout(tmp_path / "b-layout", dated)
    assert cfg["created"] == cfg["history"][-1]["created"] == "2023-11-14T22:13:20Z"
    assert dated.digest != plain.digest
    assert dated.layer_digest == plain.layer_digest  # only the date differs
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BadInput, match="SOURCE_DATE_EPOCH='yesterday'"):
        _write(tmp_path / "c", f"oci:{tmp_path}/c-layout:v1")


_WRITE_IN_ZONE = """
import json, sys
from tracer.image import parse_reference, read_image, write_image
archive, work, out, keep = sys.argv[1:]
flat, _ = read_image(parse_reference(f"docker-archive:{archive}"), work + "/read")
w = write_image(flat, json.loads(keep), parse_reference(out), workdir=work + "/w",
                comment="tracer test")
cfg = json.loads(open(f"{out.split(':')[1]}/blobs/sha256/{w.image_id[7:]}").read()) \
    if out.startswith("oci:") else None
print(json.dumps({"digest": w.digest, "created": cfg and cfg.get("created"),
                  "history": cfg and cfg["history"][-1].get("created")}))
"""
ZONES = ["UTC", "Pacific/Chatham", "America/St_Johns"]  # +12:45/+13:45, -03:30/-02:30


@pytest.mark.parametrize("epoch", [None, "1700000000"])
def test_the_digest_does_not_depend_on_the_hosts_time_zone(tmp_path: Path,
                                                            epoch: str | None) -> None:
    """Every timestamp tracer writes (`created`, the history entry, tar mtimes, fractional
    ones included) is the same instant spelled the same way in any zone: one converted as
    local time would move the digest by the zone's offset."""
    for zone in ZONES:
        assert Path("/usr/share/zoneinfo", zone).is_file(), f"tzdata lacks {zone}"
    archive = _input(tmp_path / "input")
    results = {}
    for kind in ("oci", "docker-archive"):
        for zone in ZONES:
            base = tmp_path / f"{kind}-{zone.replace('/', '-')}"
            base.mkdir()
            out = f"oci:{base}/layout:v1" if kind == "oci" else f"docker-archive:{base}/o.tar"
            env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent),
                   "PATH": "/usr/bin:/bin", "TZ": zone}
            if epoch is not None:
                env["SOURCE_DATE_EPOCH"] = epoch
            done = subprocess.run([sys.executable, "-c", _WRITE_IN_ZONE, str(archive),
                                   str(base), out, json.dumps([*KEEP, "/etc/b"])],
                                  capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 0, done.stderr
            results[(kind, zone)] = json.loads(done.stdout)
    for kind in ("oci", "docker-archive"):
        assert len({json.dumps(results[(kind, z)]) for z in ZONES}) == 1, results
    created = "2023-11-14T22:13:20Z" if epoch else CREATED
    assert results[("oci", "Pacific/Chatham")]["created"] == created
    assert results[("oci", "Pacific/Chatham")]["history"] == created


def test_layer_headers_carry_no_host_dependent_fields(tmp_path: Path) -> None:
    w = _write(tmp_path, f"oci:{tmp_path}/layout:v1", keep=[*KEEP, "/etc/b"])
    blob = tmp_path / "layout" / "blobs" / "sha256" / w.layer_digest[7:]
    data = blob.read_bytes()
    names = []
    with tarfile.open(blob) as tf:
        for ti in tf:
            names.append(ti.name.rstrip("/"))
            assert (ti.uname, ti.gname) == ("", ""), ti.name
            if ti.type not in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                assert (ti.devmajor, ti.devminor) == (0, 0), ti.name
            assert data[ti.offset + 257:ti.offset + 265] == b"ustar\x0000", ti.name
    assert names == sorted(names) == ["dev", "dev/null", "etc", "etc/a", "etc/b", "etc/h",
                                      "etc/l"]
    with tarfile.open(blob) as tf:
        mtimes = {ti.name.rstrip("/"): ti.mtime for ti in tf}
    assert mtimes["etc"] == 1_600_000_001 and mtimes["etc/a"] == 1_600_000_002
    assert mtimes["etc/b"] == 1_600_000_003.5  # the original's, fraction included


@pytest.mark.parametrize("kind", ["docker-archive", "oci"])
def test_an_output_that_holds_the_image_is_left_untouched(kind: str, tmp_path: Path) -> None:
    out = (f"docker-archive:{tmp_path}/out.tar" if kind == "docker-archive"
           else f"oci:{tmp_path}/layout:v1")
    target = tmp_path / ("out.tar" if kind == "docker-archive" else "layout")
    src = _input(tmp_path / "input")
    first = _write(tmp_path, out, src=src)
    assert not first.unchanged
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in [target, *target.rglob("*")]}
    again = _write(tmp_path, out, src=src)
    assert again.unchanged and again.digest == first.digest
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in [target, *target.rglob("*")]} == stamp
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    changed = _write(tmp_path, out, keep=[*KEEP, "/etc/b"], src=src)
    assert not changed.unchanged and changed.digest != first.digest


def test_a_layout_edited_by_hand_is_not_taken_for_unchanged(tmp_path: Path) -> None:
    src = _input(tmp_path / "input")
    first = _write(tmp_path, f"oci:{tmp_path}/layout:v1", src=src)
    blob = tmp_path / "layout" / "blobs" / "sha256" / first.layer_digest[7:]
    blob.write_bytes(blob.read_bytes()[:-1024] + bytes(1024 - 1) + b"x")
    again = _write(tmp_path, f"oci:{tmp_path}/layout:v1", src=src)
    assert not again.unchanged and again.digest == first.digest
    repaired = (tmp_path / "layout" / "blobs" / "sha256" / again.layer_digest[7:]).read_bytes()
    assert "sha256:" + hashlib.sha256(repaired).hexdigest() == again.layer_digest


# ---------------------------------------------------------------- through the engine


@pytest.mark.integration
def test_the_engine_output_is_the_same_image_twice_and_left_alone(docker_client,
                                                                  tmp_path: Path) -> None:
    import docker

    tag = f"tracer-test/image-repro:{uuid.uuid4().hex[:8]}"
    src = _input(tmp_path / "input")
    try:
        first = _write(tmp_path / "a", f"docker-daemon:{tag}", src=src)
        assert docker_client.images.get(tag).id == first.image_id == first.digest
        again = _write(tmp_path / "b", f"docker-daemon:{tag}", src=src)
        assert again.unchanged and again.image_id == first.image_id
        bigger = _write(tmp_path / "c", f"docker-daemon:{tag}", keep=[*KEEP, "/etc/b"],
                        src=src)
        assert not bigger.unchanged and docker_client.images.get(tag).id == bigger.image_id
        # the image the tag named before is gone, not left dangling
        assert not docker_client.images.list(filters={"dangling": True, "reference": tag})
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(first.image_id)
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.integration
def test_batch_reports_unchanged_for_the_same_output_digest(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    """Two forced nightly runs of the same profiles: the second writes nothing new and
    says so; the reports carry the same output digest."""
    import subprocess
    import sys

    import yaml

    fixture_image("layers")
    repo = Path(__file__).resolve().parent.parent
    base = yaml.safe_load((repo / "profiles" / "layers.yaml").read_text())
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    tag = f"tracer-test/image-repro-batch:{uuid.uuid4().hex[:8]}"
    layout = tmp_path / "layout"
    for name, output in (("daemon", f"docker-daemon:{tag}"), ("oci", f"oci:{layout}:min")):
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(
            {**base, "name": f"repro-{name}", "output": output}, sort_keys=False))
    out = tmp_path / "out"

    def batch() -> dict[str, dict]:
        proc = subprocess.run([sys.executable, "-m", "tracer", "batch", str(profiles),
                               "--jobs", "2", "--force", "--out", str(out)],
                              capture_output=True, text=True, cwd=repo, timeout=1800)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        jobs = json.loads((out / "summary.json").read_text())["jobs"]
        return {j["name"]: {**j, "report_json": json.loads(Path(j["report"]).read_text())}
                for j in jobs}

    try:
        first = batch()
        assert {n: j["status"] for n, j in first.items()} == {
            "repro-daemon": "passed", "repro-oci": "passed"}
        image_id = docker_client.images.get(tag).id
        assert first["repro-daemon"]["report_json"]["output_digest"] == image_id
        index = layout / "index.json"
        stamp = (index.stat().st_ino, index.stat().st_mtime_ns)
        second = batch()
        assert {n: j["status"] for n, j in second.items()} == {
            "repro-daemon": "unchanged", "repro-oci": "unchanged"}
        for name in first:
            assert second[name]["report_json"]["output_digest"] == \
                first[name]["report_json"]["output_digest"]
            assert second[name]["report_json"]["output_unchanged"] is True
        assert docker_client.images.get(tag).id == image_id
        assert (index.stat().st_ino, index.stat().st_mtime_ns) == stamp
        digest = json.loads(index.read_text())["manifests"][0]["digest"]
        assert first["repro-oci"]["report_json"]["output_digest"] == digest
    finally:
        docker_client.images.remove(tag, force=True)
