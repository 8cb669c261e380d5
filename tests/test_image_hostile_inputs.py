"""Hostile OCI layouts and docker-archives: nothing in an input leads outside it.

An OCI layout's files are opened relative to the layout without following links and
must be regular files; a docker-archive's link members resolve inside the archive only.
Each attack is built here, aimed at a canary file of the host whose bytes are a valid
layer with the digest the manifest claims (so only the link itself can stop it)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
from image_builders import M, docker_archive, flatten_ref, layer, oci_layout, sha

from tracer.errors import ImageFormatError
from tracer.image import open_image, parse_reference

SECRET = layer(M("etc", "dir"), M("etc/shadow", data=b"root:HOST-SECRET:19000::::::\n"))


def _manifest_of(oci: Path) -> tuple[Path, dict]:
    index = json.loads((oci / "index.json").read_text())
    path = oci / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    return path, json.loads(path.read_text())


def _canary(tmp_path: Path) -> Path:
    """A host file outside the layout whose bytes are the layer the manifest names."""
    canary = tmp_path / "host" / "canary.tar"
    canary.parent.mkdir()
    canary.write_bytes(SECRET)
    return canary


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    oci = oci_layout(tmp_path / "oci", [SECRET], compress=False)
    _, manifest = _manifest_of(oci)
    blob = oci / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]
    assert blob.read_bytes() == SECRET
    return oci, blob


def test_oci_blob_symlink_out_of_the_layout_is_refused(tmp_path: Path) -> None:
    oci, blob = _layout(tmp_path)
    blob.unlink()
    blob.symlink_to(_canary(tmp_path))
    with pytest.raises(ImageFormatError, match=r"layer 0: blob sha256:\w+: a symlink"):
        flatten_ref(f"oci:{oci}", tmp_path / "work")
    # a relative link that stays inside the layout is refused all the same
    blob.unlink()
    (oci / "copy").write_bytes(SECRET)
    blob.symlink_to("../../copy")
    with pytest.raises(ImageFormatError, match="links in an image input are never followed"):
        flatten_ref(f"oci:{oci}", tmp_path / "work2")


@pytest.mark.parametrize("linked", ["blobs", "blobs/sha256"])
def test_oci_blob_directory_symlink_is_refused(tmp_path: Path, linked: str) -> None:
    oci, _ = _layout(tmp_path)
    outside = tmp_path / "outside"
    os.rename(oci / linked, outside)
    (oci / linked).symlink_to(outside)
    with pytest.raises(ImageFormatError, match="a symlink or not a directory"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")


def test_oci_index_and_manifest_symlinks_are_refused(tmp_path: Path) -> None:
    oci, _ = _layout(tmp_path)
    index = oci / "index.json"
    moved = tmp_path / "index.json"
    os.rename(index, moved)
    index.symlink_to(moved)
    with pytest.raises(ImageFormatError, match="index.json: a symlink"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")
    index.unlink()
    os.rename(moved, index)
    manifest_path, _ = _manifest_of(oci)
    data = manifest_path.read_bytes()
    manifest_path.unlink()
    (tmp_path / "m.json").write_bytes(data)
    manifest_path.symlink_to(tmp_path / "m.json")
    with pytest.raises(ImageFormatError, match=r"blob sha256:\w+: a symlink"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")


def test_oci_blob_that_is_a_fifo_or_directory_is_refused_without_blocking(
        tmp_path: Path) -> None:
    oci, blob = _layout(tmp_path)
    blob.unlink()
    os.mkfifo(blob)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)  # a blocking open of the FIFO would never return
    if reader.is_alive():
        os.close(os.open(blob, os.O_WRONLY | os.O_NONBLOCK))  # unblock it, then fail
        pytest.fail("opening a FIFO blob blocked")
    assert len(errors) == 1 and isinstance(errors[0], ImageFormatError)
    assert "not a regular file" in str(errors[0])
    blob.unlink()
    blob.mkdir()
    with pytest.raises(ImageFormatError, match="not a regular file"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")


def test_oci_layout_given_as_a_symlink_by_the_operator_is_read(tmp_path: Path) -> None:
    """The name the operator gives is trusted; only links inside the layout are not."""
    oci, _ = _layout(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(oci)
    flat = flatten_ref(f"oci:{link}", tmp_path / "work")
    assert "/etc/shadow" in flat.entries


def _archive_with(tmp_path: Path, extra: list[tarfile.TarInfo], layers_named: str) -> Path:
    """A docker-archive whose manifest names `layers_named` for its one layer, with
    `extra` members (links) appended."""
    archive = docker_archive(tmp_path / "in.tar", [SECRET], layer_names=[layers_named])
    with tarfile.open(archive, "a") as tf:
        for ti in extra:
            tf.addfile(ti)
    return archive


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti


@pytest.mark.parametrize("target", ["../../host/canary.tar", "../../outside.tar"])
def test_archive_link_member_climbing_out_is_refused(tmp_path: Path, target: str) -> None:
    _canary(tmp_path)
    archive = _archive_with(tmp_path, [_link("evil/layer.tar", target)], "evil/layer.tar")
    with pytest.raises(ImageFormatError, match="points outside the archive"):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "work")


def test_archive_absolute_link_resolves_inside_the_archive_only(tmp_path: Path) -> None:
    canary = _canary(tmp_path)
    archive = _archive_with(tmp_path, [_link("evil/layer.tar", str(canary))],
                            "evil/layer.tar")
    with pytest.raises(ImageFormatError, match="missing blob"):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "work")


def test_archive_links_to_a_real_member_are_followed_inside(tmp_path: Path) -> None:
    """docker save links duplicate layers to one copy: that must keep working."""
    real = f"00{sha(SECRET)[7:69]}/layer.tar"  # where image_builders puts layer 0
    archive = docker_archive(tmp_path / "in.tar", [SECRET])
    with tarfile.open(archive, "a") as tf:
        tf.addfile(_link("dup/layer.tar", f"../{real}"))
        tf.addfile(_link("dup2/layer.tar", "dup/layer.tar", tarfile.LNKTYPE))
    data = json.loads(_member(archive, "manifest.json"))
    data[0]["Layers"] = ["dup2/layer.tar"]
    rewritten = tmp_path / "in2.tar"
    with tarfile.open(archive) as src, tarfile.open(rewritten, "w") as dst:
        for ti in src:
            if ti.name == "manifest.json":
                raw = json.dumps(data).encode()
                ti.size = len(raw)
                dst.addfile(ti, io.BytesIO(raw))
            else:
                dst.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
    flat = flatten_ref(f"docker-archive:{rewritten}", tmp_path / "work")
    assert "/etc/shadow" in flat.entries


def test_archive_link_loops_end(tmp_path: Path) -> None:
    archive = _archive_with(tmp_path, [_link("a/layer.tar", "../b/layer.tar"),
                                       _link("b/layer.tar", "../a/layer.tar")], "a/layer.tar")
    with pytest.raises(ImageFormatError, match="too many links"):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "work")


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


# ---------------------------------------------------------------- reading content later


def test_uncompressed_blob_swapped_after_reading_is_not_read(tmp_path: Path) -> None:
    """A flattened image reads file bytes from the input later: a blob replaced by a
    symlink to a host file, or by another file, is refused, never read."""
    oci, blob = _layout(tmp_path)
    flat = flatten_ref(f"oci:{oci}", tmp_path / "work")
    assert flat.open_content("/etc/shadow").read().startswith(b"root:HOST-SECRET")
    canary = _canary(tmp_path)
    kept = tmp_path / "kept"
    os.rename(blob, kept)
    blob.symlink_to(canary)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        flat.open_content("/etc/shadow")
    blob.unlink()
    blob.write_bytes(SECRET)  # the same bytes even, but another file
    with pytest.raises(OSError, match="not the file the image was read from"):
        flat.open_content("/etc/shadow")
    os.replace(kept, blob)
    assert flat.open_content("/etc/shadow").read().startswith(b"root:HOST-SECRET")


def test_archive_given_as_a_symlink_is_read_later_through_its_real_name(tmp_path: Path
                                                                       ) -> None:
    """The operator's name may be a symlink: content is read by the name the kernel has
    for the checked file (so later reads neither follow nor need the operator's link)."""
    archive = docker_archive(tmp_path / "in.tar", [SECRET])
    link = tmp_path / "link.tar"
    link.symlink_to(archive)
    flat = flatten_ref(f"docker-archive:{link}", tmp_path / "work")
    assert flat.content_ref("/etc/shadow").blob == str(archive)
    link.unlink()
    assert flat.open_content("/etc/shadow").read().startswith(b"root:HOST-SECRET")
