"""Untrusted input: every malformed or hostile image is a clear ImageFormatError naming the
layer and member, and nothing lands outside the work directory."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from image_builders import M, docker_archive, flatten_ref, layer, oci_layout, set_size

from tracer.budgets import BudgetExceeded
from tracer.errors import BadInput, ImageFormatError
from tracer.image import open_image, parse_reference


def _flatten_archive(tmp_path: Path, layers: list[bytes], **kw: object) -> None:
    archive = docker_archive(tmp_path / "in.tar", layers, **kw)  # type: ignore[arg-type]
    flatten_ref(f"docker-archive:{archive}", tmp_path / "work")


def _assert_contained(tmp_path: Path) -> None:
    """The failed run removed its extraction and wrote nothing beside the work dir."""
    assert not (tmp_path / "work" / "root").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (["in.tar", "work"], ["oci", "work"])


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../evil"])
def test_member_escaping_root_is_an_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ImageFormatError, match=r"layer 1 .*member '.*evil'.*escapes"):
        _flatten_archive(tmp_path, [layer(M("ok", data=b"")), layer(M(name, data=b"x"))])
    _assert_contained(tmp_path)


@pytest.mark.parametrize("target", ["../../etc/passwd", "/../etc/passwd"])
def test_hardlink_outside_root_is_an_error(tmp_path: Path, target: str) -> None:
    with pytest.raises(ImageFormatError, match=r"member 'h'.*outside the image root"):
        _flatten_archive(tmp_path, [layer(M("h", "hardlink", linkname=target))])
    _assert_contained(tmp_path)


def test_hardlink_to_missing_target_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match=r"member 'h'.*'nope' does not exist"):
        _flatten_archive(tmp_path, [layer(M("h", "hardlink", linkname="nope"))])


def test_hardlink_through_symlink_to_host_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host data")
    with pytest.raises(ImageFormatError, match="does not exist"):
        _flatten_archive(tmp_path, [layer(M("s", "symlink", linkname=str(tmp_path)),
                                          M("h", "hardlink", linkname="s/secret"))])
    assert secret.stat().st_nlink == 1


def test_bare_whiteout_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match=r"member 'd/\.wh\.'.*names no file"):
        _flatten_archive(tmp_path, [layer(M("d", "dir"), M("d/f", data=b"")),
                                    layer(M("d/.wh."))])


def test_file_as_parent_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match=r"member 'f/x'.*parent /f is a file"):
        _flatten_archive(tmp_path, [layer(M("f", data=b""), M("f/x", data=b""))])


def test_symlink_loop_as_parent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match="too many levels of symbolic links"):
        _flatten_archive(tmp_path, [layer(M("a", "symlink", linkname="b"),
                                          M("b", "symlink", linkname="a"),
                                          M("a/x", data=b""))])


def test_size_that_lies_larger_is_an_error(tmp_path: Path) -> None:
    tar = set_size(layer(M("big", data=b"x" * 100), M("after", data=b"y")), "big", 1 << 20)
    with pytest.raises(ImageFormatError, match=r"layer 0 .*member 'big'.*(truncated|lies)"):
        _flatten_archive(tmp_path, [tar])
    _assert_contained(tmp_path)


def test_size_that_lies_smaller_is_an_error(tmp_path: Path) -> None:
    tar = set_size(layer(M("big", data=b"x" * 2000), M("after", data=b"y")), "big", 10)
    with pytest.raises(ImageFormatError, match=r"invalid tar header after member 'big'"):
        _flatten_archive(tmp_path, [tar])


def test_truncated_tar_is_an_error(tmp_path: Path) -> None:
    tar = layer(M("a", data=b"a" * 3000), M("b", data=b"b" * 3000))
    with pytest.raises(ImageFormatError, match=r"member 'b'.*declares 3000 bytes"):
        _flatten_archive(tmp_path, [tar[:3000 + 512 * 4]],
                         diff_ids=["sha256:" + "0" * 64])


def test_truncated_and_corrupt_gzip_are_errors(tmp_path: Path) -> None:
    tar = layer(M("a", data=os.urandom(200_000)), M("b", data=b"b"))
    oci = oci_layout(tmp_path / "oci", [tar])
    manifest_blob = _manifest(oci)
    blob = oci / "blobs" / "sha256" / manifest_blob["layers"][0]["digest"][7:]
    good = blob.read_bytes()
    blob.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageFormatError, match=r"layer 0 .*corrupt or truncated stream"):
        flatten_ref(f"oci:{oci}", tmp_path / "work")
    _assert_contained(tmp_path)
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = bytes(64)
    blob.write_bytes(bytes(corrupt))
    with pytest.raises(ImageFormatError, match=r"layer 0 .*corrupt or truncated stream"):
        flatten_ref(f"oci:{oci}", tmp_path / "work")


def _manifest(oci: Path) -> dict:
    index = json.loads((oci / "index.json").read_text())
    return json.loads((oci / "blobs" / "sha256" / index["manifests"][0]["digest"][7:])
                      .read_text())


def test_oci_blob_digest_mismatch_is_an_error(tmp_path: Path) -> None:
    tar = layer(M("a", data=b"original"))
    oci = oci_layout(tmp_path / "oci", [tar])
    blob = oci / "blobs" / "sha256" / _manifest(oci)["layers"][0]["digest"][7:]
    blob.write_bytes(gzip.compress(layer(M("a", data=b"tampered"))))
    with pytest.raises(ImageFormatError, match=r"layer 0 .*digest mismatch"):
        flatten_ref(f"oci:{oci}", tmp_path / "work")


def test_diff_id_mismatch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match=r"layer 0 .*diff_id"):
        _flatten_archive(tmp_path, [layer(M("a", data=b""))], diff_ids=["sha256:" + "1" * 64])


def test_manifest_pointing_to_missing_blob(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "in.tar", [layer(M("a", data=b""))],
                             layer_names=["missing/layer.tar"])
    with pytest.raises(ImageFormatError, match=r"missing/layer.tar.*missing blob"):
        open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "work")
    oci = oci_layout(tmp_path / "oci", [layer(M("a", data=b""))])
    (oci / "blobs" / "sha256" / _manifest(oci)["layers"][0]["digest"][7:]).unlink()
    with pytest.raises(ImageFormatError, match=r"layer 0: blob sha256:\w+ is missing"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")


def test_oci_digest_used_as_path_is_validated(tmp_path: Path) -> None:
    oci = oci_layout(tmp_path / "oci", [layer(M("a", data=b""))])
    index = json.loads((oci / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (oci / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageFormatError, match="invalid digest"):
        open_image(parse_reference(f"oci:{oci}"), tmp_path / "work")


def test_not_an_archive_and_missing_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ImageFormatError, match="junk.tar"):
        open_image(parse_reference(f"docker-archive:{junk}"), tmp_path / "work")
    with pytest.raises(BadInput, match="no such file"):
        open_image(parse_reference(f"docker-archive:{tmp_path}/none.tar"), tmp_path / "work")
    with pytest.raises(BadInput, match="not an OCI image layout"):
        open_image(parse_reference(f"oci:{tmp_path}"), tmp_path / "work")


def _pax_layer(name: str, pax: dict[str, str], data: bytes = b"x") -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.pax_headers = pax
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("mtime", ["inf", "nan", "1e300"])
def test_pax_mtime_out_of_range_is_an_error(tmp_path: Path, mtime: str) -> None:
    with pytest.raises(ImageFormatError, match=r"layer 0 .*member .f.: mtime .* out of range"):
        _flatten_archive(tmp_path, [_pax_layer("f", {"mtime": mtime})])


def test_huge_member_name_is_refused_not_indexed(tmp_path: Path) -> None:
    """Every parent of a name is a path of the image: 20,000 components would cost ~400 MB."""
    with pytest.raises(BudgetExceeded, match=r"name is 40001 bytes long: over the "
                       r"path_length budget of 4KiB.*--budget path_length=N"):
        _flatten_archive(tmp_path, [_pax_layer("a/" * 20000 + "f", {})])


def test_oversized_xattr_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match=r"xattr value over 65536 bytes"):
        _flatten_archive(tmp_path, [_pax_layer("f", {"SCHILY.xattr.user.x": "v" * 70000})])


def test_deeply_nested_manifest_json_is_bad_input(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"[" * 200000
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    (tmp_path / "in.tar").write_bytes(buf.getvalue())
    with pytest.raises(ImageFormatError, match=r"manifest.json: not valid JSON \(nested too"):
        open_image(parse_reference(f"docker-archive:{tmp_path}/in.tar"), tmp_path / "work")
