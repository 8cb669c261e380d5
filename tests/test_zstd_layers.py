"""OCI layers compressed with zstd (as buildkit and podman can write them) read like gzip."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_builders import M, layer, oci_layout

from tracer.errors import ImageFormatError
from tracer.image import flatten, open_image, parse_reference


def test_zstd_layers_flatten_with_whiteouts(tmp_path: Path) -> None:
    base = layer(M("etc", "dir", mode=0o755), M("etc/a.conf", data=b"a" * 70000),
                 M("etc/b.conf", data=b"b"))
    top = layer(M("etc", "dir", mode=0o755), M("etc/.wh.b.conf"),
                M("etc/c.conf", data=b"c", mode=0o4755))
    layout = oci_layout(tmp_path / "oci", [base, top], compress="zstd", tag="z")
    with open_image(parse_reference(f"oci:{layout}:z"), tmp_path / "work") as src:
        flat = flatten(src, tmp_path / "work" / "root")
    assert "/etc/b.conf" not in flat.entries
    assert flat.entries["/etc/a.conf"].size == 70000
    assert flat.entries["/etc/c.conf"].mode == 0o4755
    with flat.rootfs().open("/etc/a.conf") as f:
        assert f.read() == b"a" * 70000


def test_corrupt_zstd_layer_is_a_clear_error(tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "oci", [layer(M("x", data=b"x"))], compress="zstd",
                        tag="z", blob_of=lambda data: b"\x28\xb5\x2f\xfdgarbage")
    ref = parse_reference(f"oci:{layout}:z")
    with pytest.raises(ImageFormatError, match="layer"), \
            open_image(ref, tmp_path / "work") as src:
        flatten(src, tmp_path / "work" / "root")
