"""A full disk while reading or writing an image is an environment problem: exit 4 with
"no space left in DIR (needed about N MB)", never 70 (a cleanup's own ENOSPC hiding the
first one) nor 2 ("corrupt gzip: No space left"), and nothing is left on the full disk.

Each test mounts its own small tmpfs (root only) and points TMPDIR/TRACER_WORKDIR at it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile_inputs import MiB, gzipped_docker_archive, oci_layout_of, one_file_tar
from image_builders import M, docker_archive, flat_from_layers, layer, run_tracer
from prereq import missing

from tracer.errors import EnvironmentProblem
from tracer.image import flatten, open_image, parse_reference
from tracer.image.layerwrite import closed_paths, write_layer


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("32m")`: a fresh tmpfs of that size, unmounted after the test."""
    mounts: list[Path] = []

    def make(size: str) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if done.returncode:
            missing(f"cannot mount a tmpfs ({done.stderr.strip()}); these tests need root")
        mounts.append(where)
        return where

    try:
        yield make
    finally:
        for where in mounts:
            if subprocess.run(["umount", str(where)]).returncode:
                subprocess.run(["umount", "-l", str(where)])


def _needed_mb(message: str) -> int:
    return int(message.split("(needed about ")[1].split(" MB)")[0])


def test_disk_full_while_spooling_a_layer_is_exit_4(tmp_path: Path, small_disk) -> None:
    # 60 MiB of zeros: under the 64 MiB expansion floor, over the 32 MiB disk
    layout = oci_layout_of(tmp_path / "oci",
                           [(one_file_tar("big", 60 * MiB, bytes(MiB)), "gzip")])
    disk = small_disk("32m")
    done = run_tracer(["ldd", f"oci:{layout}"],
                      env={"TMPDIR": str(disk), "TRACER_WORKDIR": str(disk)})
    assert done.returncode == 4, done.stderr
    assert f"no space left in {disk}/" in done.stderr
    assert 50 <= _needed_mb(done.stderr) <= 70, done.stderr
    assert "corrupt" not in done.stderr and "internal error" not in done.stderr
    assert os.listdir(disk) == []


def test_disk_full_at_the_spools_last_flush_is_reported_once(tmp_path: Path,
                                                             small_disk) -> None:
    """The whole layer fits the spool's write buffer, so the disk fills at the final flush:
    the close that used to sit in a `finally` and turn it into an internal error."""
    layout = oci_layout_of(tmp_path / "oci",
                           [(one_file_tar("f", 600 * 1024, bytes(MiB)), "gzip")])
    disk = small_disk("512k")
    with pytest.raises(EnvironmentProblem, match=r"no space left in .*\(needed about 1 MB\)"), \
            open_image(parse_reference(f"oci:{layout}"), tmp_path / "work") as src:
        flatten(src, disk / "root")
    assert os.listdir(disk) == []


def test_disk_full_while_extracting_is_exit_4(tmp_path: Path, small_disk) -> None:
    archive = docker_archive(tmp_path / "in.tar", [layer(M("big", data=os.urandom(700_000)))])
    disk = small_disk("512k")
    with pytest.raises(EnvironmentProblem, match=r"no space left in .*needed about 1 MB") \
            as caught, open_image(parse_reference(f"docker-archive:{archive}"),
                                  tmp_path / "work") as src:
        flatten(src, disk / "root", extract=True)
    assert caught.value.exit_code == 4
    assert os.listdir(disk) == []


def test_disk_full_while_writing_a_layer_is_exit_4(tmp_path: Path, small_disk) -> None:
    flat = flat_from_layers(tmp_path, layer(M("a", data=os.urandom(400_000)),
                                            M("b", data=os.urandom(400_000))))
    disk = small_disk("512k")
    with open(disk / "out.tar", "wb", buffering=0) as out, \
            pytest.raises(EnvironmentProblem, match=rf"no space left in {disk} \(needed "
                          r"about 1 MB\)"):
        write_layer(flat, closed_paths(flat, flat.entries), out)  # type: ignore[arg-type]


def test_gzipped_archive_bomb_stops_at_the_expansion_budget(tmp_path: Path, small_disk) -> None:
    """`docker save | gzip` of a 1 GiB layer of zeros is a 1 MB file. Its outer gzip is
    bounded like a layer's: refused (exit 2, naming `expansion`) after about 100 times the
    file's size, not inflated whole into TMPDIR (a 256 MiB disk used to fill: exit 4)."""
    gz = gzipped_docker_archive(tmp_path / "bomb.tar.gz",
                                lambda: one_file_tar("big", 1 << 30, bytes(MiB)))
    assert gz.stat().st_size < 2 * MiB
    disk = small_disk("256m")
    done = run_tracer(["ldd", f"docker-archive:{gz}", "/big"],
                      env={"TMPDIR": str(disk), "TRACER_WORKDIR": str(disk)}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "gzip-compressed archive" in done.stderr and "--budget expansion=" in done.stderr
    assert done.seconds < 30, f"{done.seconds:.0f}s"
    assert done.max_rss_mb < 200, f"{done.max_rss_mb:.0f} MiB"
    assert os.listdir(disk) == []


def test_disk_full_while_gunzipping_an_archive_names_its_real_size(tmp_path: Path,
                                                                   small_disk) -> None:
    """The estimate comes from gzip's trailer: a 30 MiB archive needs about 30 MB, not four
    times its compressed size (which is what the message used to say)."""
    noise = os.urandom(MiB)  # deflate's window is 32 KiB: repeating it does not compress
    gz = gzipped_docker_archive(tmp_path / "app.tar.gz",
                                lambda: one_file_tar("big", 30 * MiB, noise))
    disk = small_disk("8m")
    done = run_tracer(["ldd", f"docker-archive:{gz}", "/big"],
                      env={"TMPDIR": str(disk), "TRACER_WORKDIR": str(disk)}, timeout=120)
    assert done.returncode == 4, done.stderr
    assert f"no space left in {disk}/" in done.stderr
    assert 30 <= _needed_mb(done.stderr) <= 32, done.stderr
    assert os.listdir(disk) == []
