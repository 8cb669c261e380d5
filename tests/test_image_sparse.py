"""Sparse tar members are read as Docker reads them: whole files, holes as zeros, bounded.

Docker's tar reader (Go's archive/tar) accepts sparse members; tracer refused them with
"unsupported tar member type b'0'" under a made-up `GNUSparseFile.N/` name. The layers
here are written by GNU tar itself from sparse files the test makes (`--sparse` in each
PAX format it writes: 1.0, 0.1, 0.0), and read back by every reader: the archive reader
(index and extraction), and, through a real engine, the in-place reader and `docker save`.
The old GNU form (type S), which Docker refuses, and hostile members (a 10 KB tar naming a
1 TiB file, maps that lie) are refused, naming the real path.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from image_builders import docker_archive, engine_tree, flatten_ref, run_tracer
from overlay_storage import index_in_place
from prereq import missing

from tracer.budgets import DEFAULT, Budgets
from tracer.engine import connect
from tracer.errors import ImageFormatError
from tracer.image import FlatImage, flatten, open_image, parse_reference
from tracer.image.daemon import choose_reader, inspect

MiB = 1 << 20
FORMATS = {  # GNU tar options for each sparse format it writes
    "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
    "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
}


def gnu_tar() -> str:
    tar = shutil.which("tar")
    if tar is None or b"GNU tar" not in subprocess.run([tar, "--version"],
                                                        capture_output=True).stdout:
        missing("GNU tar is needed to write sparse members")
    return tar


def sparse_files(top: Path) -> dict[str, bytes]:
    """Two sparse files under `top`: three segments in 4 MiB, and 60 segments (more than
    a GNU header holds, so its map needs extension blocks). Returns path -> content."""
    top.mkdir(parents=True)
    out = {}
    for name, pieces, size in (
            ("three.bin", [(0, b"A" * 5000), (MiB, b"B" * 100), (3 * MiB + 7, b"C" * 10)],
             4 * MiB),
            ("many.bin", [(i * 65536, bytes([65 + i % 26]) * 100) for i in range(60)],
             61 * 65536)):
        fd = os.open(top / name, os.O_CREAT | os.O_WRONLY, 0o640)
        for offset, data in pieces:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, size)
        os.close(fd)
        out[f"/{top.name}/{name}"] = (top / name).read_bytes()
    return out


def sparse_layer(tmp: Path, fmt: str, options: list[str] | None = None
                 ) -> tuple[bytes, dict[str, bytes]]:
    """A layer GNU tar writes with sparse members in format `fmt`, and the expected files."""
    src = tmp / f"src-{fmt}"
    files = sparse_files(src / fmt.replace(".", ""))
    out = tmp / f"{fmt}.tar"
    subprocess.run([gnu_tar(), "--sparse", *(options or FORMATS[fmt]), "--mtime=@1600000000",
                    "--owner=0", "--group=0", "--numeric-owner", "-C", str(src), "-cf",
                    str(out), "."], check=True)
    return out.read_bytes(), files


def flat_from_layers(tmp: Path, *layers: bytes, extract: bool = False,
                     budgets: Budgets = DEFAULT) -> FlatImage:
    """Flatten layers through a real docker-archive file, with `budgets`."""
    tmp.mkdir(parents=True, exist_ok=True)
    archive = docker_archive(tmp / "in.tar", list(layers))
    with open_image(parse_reference(f"docker-archive:{archive}"), tmp / "work",
                    budgets=budgets) as src:
        return flatten(src, tmp / "work" / "root", extract=extract, budgets=budgets)


def test_gnu_tar_writes_sparse_members_in_each_format(tmp_path: Path):
    """The premise: these layers really hold sparse members (Python's tarfile agrees)."""
    for fmt in FORMATS:
        data, _ = sparse_layer(tmp_path, fmt)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members = [m for m in tf.getmembers() if m.isfile()]
        assert members and all(m.sparse for m in members), fmt


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sparse_members_flatten_to_whole_files(tmp_path: Path, fmt: str):
    data, files = sparse_layer(tmp_path, fmt)
    flat = flat_from_layers(tmp_path / "index", data)
    extracted = flat_from_layers(tmp_path / "tree", data, extract=True)
    for path, content in files.items():
        assert flat.entries[path].size == len(content)
        with flat.open_content(path) as f:
            assert f.read() == content
            f.seek(MiB + 50)  # inside the second segment of three.bin, a hole of many.bin
            assert f.read(100) == content[MiB + 50:MiB + 150]
        assert Path(extracted.host_path(path)).read_bytes() == content
    assert not any("GNUSparseFile" in p for p in flat.entries)  # the real names only


def _pax_sparse(name: str, real: int, payload: bytes, extra: dict[str, str] | None = None
                ) -> bytes:
    """A hand-made PAX 1.0 sparse member: `payload` is its data (map text, then data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(f"GNUSparseFile.0/{name.rpartition('/')[2]}")
        ti.size = len(payload)
        ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                          "GNU.sparse.name": name, "GNU.sparse.realsize": str(real),
                          **(extra or {})}
        tf.addfile(ti, io.BytesIO(payload))
    return buf.getvalue()


def _map(*numbers: int) -> bytes:
    text = b"".join(b"%d\n" % n for n in numbers)
    return text + bytes(-len(text) % 512)


@pytest.mark.parametrize(("payload", "real", "problem"), [
    (_map(2, 0, 10, 5, 10) + b"x" * 20, 100, "overlap, are out of order or end past"),
    (_map(1, 90, 20) + b"x" * 20, 100, "overlap, are out of order or end past"),
    (_map(1, 0, 10) + b"x" * 30, 100, "the sparse map names 10 bytes of data, the member "
                                      "holds 30"),
    (b"1\n0\n" + b"7" * 1000, 100, "the sparse map does not end within"),
    (_map(10_000_000) + b"x" * 20, 100, "sparse map of 10000000 segments"),
    (b"1\nx\n5\n" + bytes(506) + b"x" * 5, 100, "malformed sparse map .not a number"),
])
def test_a_sparse_map_that_lies_is_refused_naming_the_real_path(tmp_path: Path, payload: bytes,
                                                                  real: int, problem: str):
    member = _pax_sparse("srv/data/real-name.bin", real, payload)
    with pytest.raises(ImageFormatError, match=problem) as info:
        flat_from_layers(tmp_path, member)
    assert "member 'srv/data/real-name.bin'" in str(info.value)
    assert "GNUSparseFile" not in str(info.value)


def test_an_old_gnu_sparse_member_is_refused_as_docker_refuses_it(tmp_path: Path):
    data, _ = sparse_layer(tmp_path, "gnu", ["--format=gnu"])
    with pytest.raises(ImageFormatError, match=r"member './gnu/\w+.bin': a sparse file in "
                                               r"the old GNU format \(tar type S\)"):
        flat_from_layers(tmp_path / "flat", data)


def test_a_sparse_member_without_a_real_size_is_refused(tmp_path: Path):
    member = _pax_sparse("x.bin", 0, _map(0), {"GNU.sparse.realsize": "lots"})
    with pytest.raises(ImageFormatError, match="member 'x.bin': sparse file without a valid "
                                               "GNU.sparse.realsize"):
        flat_from_layers(tmp_path, member)


def test_a_sparse_bomb_stops_at_the_expansion_budget(tmp_path: Path):
    """A 10 KB tar naming a 1 TiB file (GNU tar finds the holes with SEEK_DATA): its holes
    count as what the layer expands to, so the 64 MiB expansion floor refuses it at once,
    through the real command, in bounded time and memory."""
    src = tmp_path / "src"
    src.mkdir()
    huge = src / "huge"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)
        f.seek(1 << 39)
        f.write(b"x")
    layer_tar = tmp_path / "bomb.tar"
    subprocess.run([gnu_tar(), "--sparse", "--format=posix", "-C", str(src), "-cf",
                    str(layer_tar), "huge"], check=True)
    huge.unlink()
    assert layer_tar.stat().st_size < 64 * 1024
    archive = docker_archive(tmp_path / "bomb-image.tar", [layer_tar.read_bytes()])
    res = run_tracer(["ldd", f"docker-archive:{archive}", "/huge"], timeout=60)
    assert res.returncode == 2, res.stderr
    assert "with the holes of sparse file 'huge'" in res.stderr
    assert "--budget expansion_floor=" in res.stderr
    assert res.seconds < 20 and res.max_rss_mb < 150, (res.seconds, res.max_rss_mb)
    # budgets that allow it read it: the 1 TiB file is indexed, not written anywhere
    trusted = Budgets(expansion_floor=2 << 40, image_bytes=2 << 40)
    flat = flat_from_layers(tmp_path / "allowed", layer_tar.read_bytes(), budgets=trusted)
    assert flat.entries["/huge"].size == 1 << 40
    with flat.open_content("/huge") as f:
        f.seek(1 << 39)
        assert f.read(2) == b"x\0"


@pytest.mark.integration
def test_the_engine_and_every_reader_agree_on_sparse_layers(docker_client, tmp_path: Path):
    """Docker loads the same layers (Go's reader). The in-place reader (the engine's
    tar-split records, which stand for a sparse file's whole size and leave its map out)
    and the archive reader give the same entries, and the files' bytes are the sparse
    files' bytes. (`docker save` cannot export such an image: its tar-split cannot
    rebuild a sparse member, "could not verify layer data", so it is not compared.)"""
    layers, files = [], {}
    for fmt in FORMATS:
        data, made = sparse_layer(tmp_path, fmt)
        layers.append(data)
        files.update(made)
    tag = f"tracer-test/sparse-layers:{uuid.uuid4().hex[:8]}"
    archive = docker_archive(tmp_path / "in.tar", layers, repo_tag=tag)
    subprocess.run(["docker", "load", "-i", str(archive)], check=True, capture_output=True)
    try:
        engine = connect()
        image = inspect(engine, tag)
        assert image is not None
        storage, reason = choose_reader(engine, image, DEFAULT)
        if storage is None:
            missing(f"in-place reading is not possible here: {reason}")
        in_place = index_in_place(parse_reference(tag), storage, tmp_path / "in-place",
                                  DEFAULT)
        tree = engine_tree(tag)
        read_in_place = {p: _read(in_place, p) for p in files}  # while the layers exist
    finally:
        docker_client.images.remove(tag, force=True)
    from_file = flatten_ref(f"docker-archive:{archive}", tmp_path / "file")
    assert list(in_place.entries) == list(from_file.entries)
    assert {p: in_place.entries[p] for p in files} == {p: from_file.entries[p] for p in files}
    for path, content in files.items():
        assert tree[path].kind == "file"  # what a container of the image shows
        assert read_in_place[path] == content and _read(from_file, path) == content, path


def _read(flat: FlatImage, path: str) -> bytes:
    with flat.open_content(path) as f:
        return f.read()
