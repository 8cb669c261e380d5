"""The index-backed RootFS: a flattened image answered from its index and layer data.

The pipeline no longer extracts images, so these tests hold the index-backed view to the
directory-backed one: same resolution (links inside the image, ".." clamped, loops), same
file bytes, and the same static-resolver answers on a whole real image.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest
from image_builders import M, docker_archive, flat_from_layers, flatten_ref, layer, oci_layout
from prereq import missing as prereq_missing

from tracer.image import flatten, open_image, parse_reference
from tracer.rootfs import MAX_SYMLINKS, IndexRootFS, RootFS, SymlinkLoop
from tracer.static import Resolver

BOOKWORM_ROOT = Path("/var/cache/tracer/rootfs-bookworm")

TRICKY = (
    layer(M("usr", "dir"), M("usr/lib", "dir"), M("usr/lib/libc.so.6", data=b"\x7fELF" + b"c" * 90),
          M("usr/lib/libm.so.6", "symlink", linkname="libc.so.6"),
          M("lib", "symlink", linkname="usr/lib"),
          M("etc", "dir"), M("etc/escape", "symlink", linkname="../../../../etc/passwd"),
          M("etc/abs", "symlink", linkname="/usr/lib/libm.so.6"),
          M("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
          M("etc/empty", data=b""),
          M("loop1", "symlink", linkname="loop2"), M("loop2", "symlink", linkname="loop1"),
          M("file", data=b"not a dir"), M("dangling", "symlink", linkname="/nowhere/x")),
    layer(M("usr/lib/big", data=bytes(range(256)) * 300),
          M("usr/lib/after", data=b"NEIGHBOUR"),
          M("hard", "hardlink", linkname="usr/lib/big")),
)
PATHS = ["/", "/lib", "/lib/libm.so.6", "/lib/../etc/passwd", "/etc/escape", "/etc/abs",
         "/../../usr/lib/libc.so.6", "/file/x", "/dangling", "/usr/lib", "/hard", "/nope",
         "/etc/empty", "/lib/big", "usr/lib/after"]


@pytest.fixture
def both(tmp_path: Path) -> tuple[IndexRootFS, RootFS]:
    """The same image as an index-backed RootFS and as a RootFS over an extracted tree."""
    flat = flat_from_layers(tmp_path, *TRICKY, extract=True)
    assert flat.root is not None
    index = flat.rootfs()
    assert isinstance(index, IndexRootFS)
    return index, RootFS(flat.root)


def test_resolution_and_metadata_match_the_directory_backend(both) -> None:
    index, tree = both
    for p in PATHS:
        for follow in (True, False):
            assert index.resolve(p, follow_last=follow) == tree.resolve(p, follow_last=follow), p
        assert index.exists(p) == tree.exists(p), p
        assert index.is_file(p) == tree.is_file(p), p
        assert index.is_dir(p) == tree.is_dir(p), p
        assert index.listdir(p) == tree.listdir(p), p
        a, b = index.stat(p), tree.stat(p)
        assert (a is None) == (b is None), p
        if a is not None and b is not None:
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), p
            assert a.st_size == b.st_size or stat.S_ISDIR(a.st_mode), p
        if tree.is_file(p):
            with index.open(p) as f, tree.open(p) as g:
                assert f.read() == g.read(), p
    assert index.readlink("/etc/abs") == tree.readlink("/etc/abs") == "/usr/lib/libm.so.6"
    # the escaping link lands on the image's /etc/passwd, never the host's
    with index.open("/etc/escape") as f:
        assert f.read() == b"root:x:0:0::/root:/bin/sh\n"


def test_loops_and_errors_like_the_kernel(both) -> None:
    index, _ = both
    with pytest.raises(SymlinkLoop):
        index.resolve("/loop1")
    assert index.stat("/loop1") is None
    assert index.lstat("/loop1") is not None and stat.S_ISLNK(index.lstat("/loop1").st_mode)
    with pytest.raises(FileNotFoundError):
        index.open("/nope")
    with pytest.raises(IsADirectoryError):
        index.open("/lib")
    with pytest.raises(OSError):
        index.readlink("/file")
    with pytest.raises(TypeError):
        index.host_path("/etc/passwd")


def test_symlink_chain_limit_is_the_kernels(tmp_path: Path) -> None:
    n = MAX_SYMLINKS
    chain = [M(f"l{i}", "symlink", linkname=f"l{i + 1}") for i in range(n + 1)]
    fs = flat_from_layers(tmp_path, layer(*chain, M(f"l{n + 1}", data=b"end"))).rootfs()
    with fs.open("/l1") as f:  # 40 links: allowed
        assert f.read() == b"end"
    with pytest.raises(SymlinkLoop):
        fs.resolve("/l0")  # 41 links: ELOOP


def test_content_reads_are_confined_to_the_member(tmp_path: Path) -> None:
    flat = flat_from_layers(tmp_path, *TRICKY)
    data = bytes(range(256)) * 300
    with flat.open_content("/usr/lib/big") as f:
        assert f.read() == data
        assert f.read() == b""
        f.seek(len(data) - 3)
        assert f.read(100) == data[-3:]  # never the next member's header or bytes
        f.seek(10 * len(data))
        assert f.read(10) == b""
        f.seek(-4, os.SEEK_END)
        assert f.read() == data[-4:]
        f.seek(100)
        assert f.tell() == 100 and f.read(2) == data[100:102]
    with flat.open_content("/hard") as f:  # a hardlink reads its inode's content
        assert f.read() == data
    with flat.open_content("/etc/empty") as f:
        assert f.read() == b""
    with pytest.raises(IsADirectoryError):
        flat.open_content("/usr")
    with pytest.raises(OSError, match="symlink"):
        flat.open_content("/lib")
    with pytest.raises(FileNotFoundError):
        flat.open_content("/nope")


def test_uncompressed_layers_are_read_in_place_and_compressed_ones_spooled(
        tmp_path: Path) -> None:
    layers = [layer(M("a", "dir"), M("a/f", data=b"1" * 5000)),
              layer(M("a/g", data=b"2" * 70000))]
    archive = docker_archive(tmp_path / "in.tar", layers)
    flat = flatten_ref(f"docker-archive:{archive}", tmp_path / "w1")
    # nothing written at all: the bytes are read from the input archive itself
    assert flat.workdir is not None and list(flat.workdir.iterdir()) == []
    assert flat.content_ref("/a/g").blob == str(archive)
    assert flat.root is None and not (tmp_path / "w1" / "root" / "a").exists()

    layout = oci_layout(tmp_path / "gz", layers)
    flat = flatten_ref(f"oci:{layout}", tmp_path / "w2")
    assert flat.workdir is not None
    assert sorted(p.name for p in flat.workdir.iterdir()) == ["layer-0.tar", "layer-1.tar"]
    with flat.open_content("/a/g") as f:
        assert f.read() == b"2" * 70000

    # a gzipped docker-archive is decompressed once by the source; flatten keeps that copy
    gz = tmp_path / "in.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes()))
    with open_image(parse_reference(f"docker-archive:{gz}"), tmp_path / "w3") as src:
        flat = flatten(src, tmp_path / "w3" / "root")
    # the source is closed and removed its temp copy; flatten linked it into its own dir
    assert flat.workdir is not None
    assert [p.name for p in (tmp_path / "w3").iterdir()] == ["root"]
    assert flat.content_ref("/a/f").blob.startswith(str(flat.workdir) + "/")
    with flat.open_content("/a/f") as f:
        assert f.read() == b"1" * 5000


@pytest.mark.integration
def test_static_resolver_agrees_on_every_elf_of_the_bookworm_image(
        fixture_image, tmp_path: Path) -> None:
    """Flatten the real base image and resolve each of its ELF files through both backends:
    the same closure, missing names and errors, file by file."""
    if not (BOOKWORM_ROOT / "usr/bin").is_dir():
        prereq_missing(f"{BOOKWORM_ROOT} missing; run scripts/setup")
    with open_image(parse_reference(f"docker-daemon:{fixture_image('base')}"),
                    tmp_path / "w") as src:
        flat = flatten(src, tmp_path / "w" / "root")
    index_fs, dir_fs = flat.rootfs(), RootFS(BOOKWORM_ROOT)
    elves = []
    for path, e in flat.entries.items():
        if e.kind == "file" and e.size >= 64:
            with flat.open_content(path) as f:
                if f.read(4) == b"\x7fELF":
                    elves.append(path)
    assert len(elves) > 100
    by_index, by_dir = Resolver(index_fs), Resolver(dir_fs)
    for path in elves:
        a, b = by_index.closure([path]), by_dir.closure([path])
        assert a.files == b.files, path
        assert a.missing == b.missing, path
        assert a.errors == b.errors, path
