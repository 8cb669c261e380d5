"""OCI layers compressed with zstd (as buildkit and podman can write them) read like gzip,
through the reference `zstd` command run as a bounded stream (tracer/image/zstd.py): its
exit status is checked, its stderr kept short, and it is killed and reaped when the
reading stops early; without the command the run is an environment problem (exit 4)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil
import pytest
from hostile_inputs import MiB, oci_layout_of, one_file_tar
from image_builders import M, layer, oci_layout, run_tracer, zstd_compress

from tracer.budgets import BudgetExceeded, Budgets
from tracer.errors import EnvironmentProblem, ImageFormatError
from tracer.image import flatten, open_image, parse_reference


def _flatten(layout: Path, work: Path, budgets: Budgets | None = None):
    with open_image(parse_reference(f"oci:{layout}:z"), work) as src:
        return flatten(src, work / "root", **({"budgets": budgets} if budgets else {}))


def _zstd_children() -> list[psutil.Process]:
    """zstd processes this test process started and has not reaped (zombies included)."""
    return [p for p in psutil.Process().children(recursive=True)
            if p.name() == "zstd"]


def test_zstd_layers_flatten_with_whiteouts(tmp_path: Path) -> None:
    base = layer(M("etc", "dir", mode=0o755), M("etc/a.conf", data=b"a" * 70000),
                 M("etc/b.conf", data=b"b"))
    top = layer(M("etc", "dir", mode=0o755), M("etc/.wh.b.conf"),
                M("etc/c.conf", data=b"c", mode=0o4755))
    layout = oci_layout(tmp_path / "oci", [base, top], compress="zstd", tag="z")
    flat = _flatten(layout, tmp_path / "work")
    assert "/etc/b.conf" not in flat.entries
    assert flat.entries["/etc/a.conf"].size == 70000
    assert flat.entries["/etc/c.conf"].mode == 0o4755
    with flat.rootfs().open("/etc/a.conf") as f:
        assert f.read() == b"a" * 70000
    assert _zstd_children() == []


def test_a_layer_of_several_zstd_frames_is_read_whole(tmp_path: Path) -> None:
    """A zstd stream may be several frames in a row (zstd -c a b, pzstd, some writers'
    chunking); every frame is the layer, not only the first."""
    tar = layer(M("one", data=os.urandom(40_000)), M("two", data=os.urandom(40_000)))
    cut = len(tar) // 2
    layout = oci_layout(tmp_path / "oci", [tar], tag="z",
                        blob_of=lambda data: zstd_compress(data[:cut]) +
                        zstd_compress(data[cut:]))
    flat = _flatten(layout, tmp_path / "work")
    assert flat.entries["/two"].size == 40_000


def test_corrupt_zstd_layer_is_a_clear_error(tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "oci", [layer(M("x", data=b"x"))], compress="zstd",
                        tag="z", blob_of=lambda data: b"\x28\xb5\x2f\xfdgarbage")
    with pytest.raises(ImageFormatError, match=r"layer 0 .*corrupt zstd stream: zstd exited "
                       r"with status 1: .*"):
        _flatten(layout, tmp_path / "work")
    assert _zstd_children() == []


def test_a_bad_checksum_at_the_end_is_caught_by_the_exit_status(tmp_path: Path) -> None:
    """Every byte of the tar comes out and the digests match what the (hostile) manifest
    says: only zstd's exit status tells that the frame's checksum is wrong."""
    def bad_checksum(data: bytes) -> bytes:
        blob = bytearray(zstd_compress(data))  # the CLI writes a content checksum
        blob[-1] ^= 0xFF
        return bytes(blob)

    layout = oci_layout(tmp_path / "oci", [layer(M("x", data=b"x" * 5000))], tag="z",
                        blob_of=bad_checksum)
    with pytest.raises(ImageFormatError, match="corrupt zstd stream.*(checksum|Checksum)"):
        _flatten(layout, tmp_path / "work")


def test_a_bomb_stops_the_decompressor_and_leaves_no_zombie(tmp_path: Path) -> None:
    layout = oci_layout_of(tmp_path / "oci",
                           [(one_file_tar("bomb", 256 * MiB, bytes(MiB)), "zstd")], tag="z")
    with pytest.raises(BudgetExceeded, match="expansion_floor"):
        _flatten(layout, tmp_path / "work", Budgets(expansion_floor=8 * MiB))
    assert _zstd_children() == []


def _fake_zstd(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir()
    script = bin_dir / "zstd"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_a_decompressor_that_floods_stderr_is_capped(tmp_path: Path, monkeypatch) -> None:
    """A `zstd` that writes megabytes to stderr (a stand-in: the real one cannot be made
    to) neither blocks the stream nor grows the message."""
    layout = oci_layout(tmp_path / "oci", [layer(M("x", data=b"x"))], compress="zstd", tag="z")
    _fake_zstd(tmp_path / "bin", "cat >/dev/null\nhead -c 4000000 /dev/zero | tr '\\0' e >&2\n"
               "exit 3\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with pytest.raises(ImageFormatError, match="exited with status 3") as err:
        _flatten(layout, tmp_path / "work")
    assert len(str(err.value)) < 1000


def test_without_the_zstd_command_it_is_exit_4(tmp_path: Path, monkeypatch) -> None:
    layout = oci_layout(tmp_path / "oci", [layer(M("x", data=b"x"))], compress="zstd", tag="z")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EnvironmentProblem, match="needs the `zstd` command"):
        _flatten(layout, tmp_path / "work")
    res = run_tracer(["ldd", f"oci:{layout}:z", "/x"],
                     env={"PATH": str(empty), "TRACER_WORKDIR": str(tmp_path)}, timeout=60)
    assert res.returncode == 4, res.stderr
    assert "apt-get install zstd" in res.stderr
