"""RootFS: an image's symlinks are interpreted inside the image root, never on the host."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tracer.rootfs import MAX_SYMLINKS, RootFS, SymlinkLoop


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    """A small merged-/usr tree with the link shapes real images contain."""
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1.2.13").write_bytes(b"image libz")
    os.symlink("libz.so.1.2.13", root / "usr/lib/x86_64-linux-gnu/libz.so.1")
    os.symlink("usr/lib", root / "lib")  # relative, merged /usr
    os.symlink("/usr/bin", root / "bin")  # absolute: must mean the image's /usr/bin
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "etc/passwd").write_text("image passwd\n")
    # escape attempts: absolute target and a pile of ".."
    os.symlink("/etc/passwd", root / "etc/abs")
    os.symlink("../../../../../../../../etc/passwd", root / "etc/dotdot")
    os.symlink("loop-b", root / "etc/loop-a")
    os.symlink("loop-a", root / "etc/loop-b")
    os.symlink("/nonexistent/file", root / "etc/dangling")
    return root


def test_relative_and_absolute_links_resolve_in_image_and_are_recorded(image: Path) -> None:
    fs = RootFS(image)
    res = fs.resolve("/lib/x86_64-linux-gnu/libz.so.1")
    assert res.exists
    assert res.path == "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
    assert res.links == ("/lib", "/usr/lib/x86_64-linux-gnu/libz.so.1")
    assert fs.resolve("/bin/tool").path == "/usr/bin/tool"
    assert fs.resolve("/bin/tool").links == ("/bin",)


def test_absolute_and_dotdot_targets_stay_inside_the_root(image: Path) -> None:
    fs = RootFS(image)
    for link in ("/etc/abs", "/etc/dotdot"):
        res = fs.resolve(link)
        assert res.path == "/etc/passwd"
        with fs.open(link) as fh:
            assert fh.read() == b"image passwd\n"  # never the host's /etc/passwd
    assert fs.resolve("/../../etc/./passwd").path == "/etc/passwd"
    assert fs.host_path("/../../etc/passwd") == image.resolve() / "etc/passwd"


def test_follow_last_false_keeps_the_final_link(image: Path) -> None:
    fs = RootFS(image)
    res = fs.resolve("/lib/x86_64-linux-gnu/libz.so.1", follow_last=False)
    assert res.path == "/usr/lib/x86_64-linux-gnu/libz.so.1"
    assert res.links == ("/lib",)
    assert fs.readlink("/lib/x86_64-linux-gnu/libz.so.1") == "libz.so.1.2.13"
    assert fs.lstat("/lib").st_mode & 0o170000 == 0o120000


def test_symlink_loop_raises_eloop(image: Path) -> None:
    fs = RootFS(image)
    with pytest.raises(SymlinkLoop) as err:
        fs.resolve("/etc/loop-a")
    assert "/etc/loop-a" in str(err.value)
    assert not fs.exists("/etc/loop-a")
    # a long but finite chain is fine up to the kernel's limit
    chain = image / "chain"
    chain.mkdir()
    (chain / "l0").write_text("end")
    for i in range(1, MAX_SYMLINKS + 1):
        os.symlink(f"l{i - 1}", chain / f"l{i}")
    assert fs.resolve(f"/chain/l{MAX_SYMLINKS}").exists
    os.symlink(f"l{MAX_SYMLINKS}", chain / "one-too-many")
    with pytest.raises(SymlinkLoop):
        fs.resolve("/chain/one-too-many")


def test_missing_and_dangling_paths(image: Path) -> None:
    fs = RootFS(image)
    res = fs.resolve("/etc/dangling")
    assert not res.exists
    assert res.path == "/nonexistent/file"
    assert res.links == ("/etc/dangling",)
    assert not fs.resolve("/etc/passwd/child").exists  # ENOTDIR
    assert fs.resolve("rel/x", cwd="/usr").path == "/usr/rel/x"
    with pytest.raises(FileNotFoundError):
        fs.open("/etc/dangling")


def test_accessors_follow_links_in_image(image: Path) -> None:
    fs = RootFS(image)
    assert fs.is_dir("/lib") and not fs.is_file("/lib")
    assert fs.is_file("/bin/tool")
    assert "libz.so.1" in fs.listdir("/lib/x86_64-linux-gnu")
    assert fs.listdir("/etc/passwd") == []


def test_open_refuses_a_host_symlink_swapped_in_after_resolution(image: Path) -> None:
    """O_NOFOLLOW per component: a link appearing later is not followed onto the host."""
    fs = RootFS(image)
    assert fs.resolve("/usr/bin/tool").exists  # cached as a plain file
    (image / "usr/bin/tool").unlink()
    os.symlink("/etc/hostname", image / "usr/bin/tool")
    with pytest.raises(OSError) as refused:
        fs.open("/usr/bin/tool")
    # ELOOP is O_NOFOLLOW refusing the link; any other error (ENOENT after following it
    # onto a host without the file, EACCES) would mean the link was followed
    assert refused.value.errno == errno.ELOOP, refused.value


def test_a_name_too_long_for_the_host_is_simply_absent(tmp_path: Path) -> None:
    """An image link or lookup with a 300-byte component must not crash the directory
    backend (ENAMETOOLONG from the host's lstat): such a name cannot exist in the tree."""
    (tmp_path / "etc").mkdir()
    os.symlink("/" + "a" * 300 + "/x", tmp_path / "etc" / "long")
    fs = RootFS(tmp_path)
    assert not fs.exists("/" + "b" * 300)
    assert fs.resolve("/etc/long").exists is False
