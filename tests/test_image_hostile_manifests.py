"""Manifests, indexes and configs as an attacker writes them: each is refused with exit 2
and a message naming the document (or the budget and how to raise it), quickly and in
bounded memory; a wrong type anywhere is bad input, never a crash (exit 70)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from image_builders import (
    BASE_CONFIG,
    M,
    docker_archive,
    layer,
    oci_layout,
    run_tracer,
    sha,
)

from tracer.budgets import BudgetExceeded, Budgets
from tracer.errors import ImageFormatError
from tracer.image import open_image, parse_reference

LAYER = layer(M("bin", "dir"), M("bin/app", data=b"x"))


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tf.addfile(ti)
    return path


def _archive(tmp_path: Path, config: object, layer_names: list[str],
             links: dict[str, str] | None = None) -> Path:
    cfg = json.dumps(config).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": None,
                            "Layers": layer_names}]).encode()
    return _tar(tmp_path / "in.tar", {"l/layer.tar": LAYER, "config.json": cfg,
                                      "manifest.json": manifest}, links)


def _config(**changes: object) -> dict:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["rootfs"] = {"type": "layers", "diff_ids": [sha(LAYER)]}
    cfg.update(changes)
    return cfg


def test_one_layer_listed_200000_times_is_refused_at_once(tmp_path: Path) -> None:
    """A 2 MB archive that named its layer 200,000 times used to cost about 25 minutes."""
    archive = _archive(tmp_path, _config(), ["a"] * 200_000, links={"a": "l/layer.tar"})
    res = run_tracer(["ldd", f"docker-archive:{archive}", "/bin/app"], timeout=120)
    assert res.returncode == 2, res.stderr
    assert "manifest.json lists 200000 layers: over the layers budget of 500" in res.stderr
    assert "--budget layers=N" in res.stderr
    assert res.max_rss_mb < 300


def test_layer_budget_applies_to_oci_manifests_and_configs(tmp_path: Path) -> None:
    oci = oci_layout(tmp_path / "oci", [LAYER] * 3)
    with pytest.raises(BudgetExceeded, match=r"lists 3 layers: over the layers budget of 2"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "w", Budgets(layers=2))
    archive = docker_archive(tmp_path / "in.tar", [LAYER] * 3)
    with pytest.raises(BudgetExceeded, match="over the layers budget of 2"):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "w",
                   Budgets(layers=2))
    with open_image(parse_reference(f"oci:{oci}"), tmp_path / "w", Budgets(layers=3)) as src:
        assert len(src.layers) == 3


def test_a_45_mb_index_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """Parsing it used to take 1.18 GB."""
    oci = oci_layout(tmp_path / "oci", [LAYER])
    index = json.loads((oci / "index.json").read_text())
    filler = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "digest": "sha256:" + "0" * 64, "size": 1, "annotations": {"x": "y" * 40}}
    index["manifests"] += [filler] * 300_000
    (oci / "index.json").write_text(json.dumps(index))
    assert (oci / "index.json").stat().st_size > 45 << 20
    res = run_tracer(["ldd", f"oci:{oci}", "/bin/app"], timeout=120)
    assert res.returncode == 2, res.stderr
    assert "index.json is" in res.stderr and "over the json_bytes budget of 4MiB" in res.stderr
    assert res.max_rss_mb < 200


def test_json_budget_covers_every_document(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "in.tar", [LAYER])
    small = Budgets(json_bytes=100)
    with pytest.raises(BudgetExceeded, match=r"manifest.json is \d+ bytes: over the json_bytes"):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "w", small)
    oci = oci_layout(tmp_path / "oci", [LAYER])
    with pytest.raises(BudgetExceeded, match="over the json_bytes budget of 100"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "w", small)


@pytest.mark.parametrize("changes,message", [
    ({"config": "a string"}, "`config` is str, expected an object"),
    ({"config": ["a", "list"]}, "`config` is list, expected an object"),
    ({"config": {"Env": ["A=1", 2]}}, "config.Env must be a list of strings"),
    ({"config": {"Cmd": {"a": 1}}}, "config.Cmd must be a list of strings"),
    ({"history": 7}, "history: expected a JSON list"),
    ({"history": ["x"]}, r"history\[0\]: expected a JSON object"),
    ({"history": [{"created_by": 1}]}, "created_by must be a string"),
    ({"created": 12}, "created must be a string"),
    ({"os": ["linux"]}, "os must be a string"),
    ({"rootfs": {"diff_ids": "sha256:x"}}, "rootfs.diff_ids missing or not a list"),
    ({"rootfs": {"diff_ids": [5]}}, "invalid digest"),
])
def test_configs_of_the_wrong_shape_exit_2(tmp_path: Path, changes: dict,
                                           message: str) -> None:
    archive = _archive(tmp_path, _config(**changes), ["l/layer.tar"])
    with pytest.raises(ImageFormatError, match=message):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "w")


def test_wrong_shapes_exit_2_through_the_command_line(tmp_path: Path) -> None:
    """The exit code scripts see: 2, not the 70 of a crash."""
    archive = _archive(tmp_path, _config(config={"Env": ["PATH=/bin", 7]}), ["l/layer.tar"])
    res = run_tracer(["ldd", f"docker-archive:{archive}", "/bin/app"], timeout=120)
    assert res.returncode == 2, res.stderr
    assert "config.Env must be a list of strings" in res.stderr


@pytest.mark.parametrize("manifest,message", [
    ({"a": 1}, "manifest.json: expected a JSON list, got an object"),
    ([], "manifest.json lists no image"),
    (["x"], "manifest.json entry: expected a JSON object"),
    ([{"Config": 1, "Layers": []}], "entry lacks Config/Layers"),
    ([{"Config": "config.json", "Layers": [1]}], "Layers must be strings"),
    ([{"Config": "config.json", "Layers": ["l/layer.tar"], "RepoTags": 5}], None),
])
def test_archive_manifests_of_the_wrong_shape(tmp_path: Path, manifest: object,
                                              message: str | None) -> None:
    cfg = json.dumps(_config()).encode()
    archive = _tar(tmp_path / "in.tar", {"l/layer.tar": LAYER, "config.json": cfg,
                                         "manifest.json": json.dumps(manifest).encode()})
    ref = parse_reference(f"docker-archive:{archive}")
    if message is None:  # RepoTags of the wrong type is ignored: nothing reads it unnamed
        with open_image(ref, tmp_path / "w") as src:
            assert len(src.layers) == 1
        return
    with pytest.raises(ImageFormatError, match=message):
        open_image(ref, tmp_path / "w")


def _oci_with(tmp_path: Path, edit_index=None, edit_manifest=None) -> Path:
    oci = oci_layout(tmp_path / "oci", [LAYER])
    index = json.loads((oci / "index.json").read_text())
    if edit_manifest is not None:
        blobs = oci / "blobs" / "sha256"
        manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
        edit_manifest(manifest)
        data = json.dumps(manifest).encode()
        (blobs / sha(data)[7:]).write_bytes(data)
        index["manifests"][0].update(digest=sha(data), size=len(data))
    if edit_index is not None:
        edit_index(index)
    (oci / "index.json").write_text(json.dumps(index))
    return oci


@pytest.mark.parametrize("edit_index,edit_manifest,message", [
    (lambda i: i.update(manifests="x"), None, "index.json has no manifests"),
    (lambda i: i.update(manifests=[7]), None, "manifests entry: expected a JSON object"),
    (lambda i: i["manifests"][0].update(annotations=[1]), None,
     "annotations: expected a JSON object"),
    (lambda i: i["manifests"][0].update(size="12"), None, "size must be a non-negative"),
    (lambda i: i["manifests"][0].update(digest=5), None, "invalid digest"),
    (None, lambda m: m.update(layers={"a": 1}), "not an image manifest"),
    (None, lambda m: m.update(config="x"), "config: descriptor: expected a JSON object"),
    (None, lambda m: m["layers"].__setitem__(0, "x"),
     "layer 0: descriptor: expected a JSON object"),
    (None, lambda m: m["layers"][0].update(size=-1), "size must be a non-negative"),
    (None, lambda m: m["layers"][0].update(mediaType=3), "mediaType must be a string"),
])
def test_oci_documents_of_the_wrong_shape(tmp_path: Path, edit_index, edit_manifest,
                                          message: str) -> None:
    oci = _oci_with(tmp_path, edit_index, edit_manifest)
    with pytest.raises(ImageFormatError, match=message):
        open_image(parse_reference(f"oci:{oci}:t1"), tmp_path / "w")
