"""Flattening hand-made layers: every OCI changeset rule, on real tar archives."""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path

from image_builders import (
    M,
    content,
    docker_archive,
    flat_from_layers,
    flatten_ref,
    layer,
    oci_layout,
)

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def test_whiteout_hides_lower_file_and_directory(tmp_path: Path) -> None:
    flat = flat_from_layers(
        tmp_path,
        layer(M("etc", "dir", mode=0o755), M("etc/keep", data=b"k"), M("etc/gone", data=b"g"),
              M("var", "dir"), M("var/cache", "dir"), M("var/cache/x", data=b"x")),
        layer(M("etc/.wh.gone"), M("var/.wh.cache")),
        extract=True,
    )
    assert "/etc/keep" in flat.entries
    assert "/etc/gone" not in flat.entries and "/var/cache" not in flat.entries
    assert "/var/cache/x" not in flat.entries
    assert not any(".wh." in p for p in flat.entries)
    assert not flat.host_path("/etc/gone").exists()
    assert not flat.host_path("/var/cache").exists()
    assert flat.host_path("/etc/keep").read_bytes() == b"k"
    assert content(flat, "/etc/keep") == b"k"
    assert flat.rootfs().listdir("/etc") == ["keep"] and not flat.rootfs().exists("/var/cache")


def test_opaque_directory_hides_only_lower_children(tmp_path: Path) -> None:
    flat = flat_from_layers(
        tmp_path,
        layer(M("d", "dir"), M("d/old", data=b"o"), M("d/sub", "dir"), M("d/sub/deep", data=b"")),
        # the new child is listed before the opaque marker: it must survive all the same
        layer(M("d", "dir", mode=0o750), M("d/new", data=b"n"), M("d/.wh..wh..opq")),
    )
    assert {p for p in flat.entries if p.startswith("/d")} == {"/d", "/d/new"}
    assert flat.entries["/d"].mode == 0o750
    assert flat.rootfs().listdir("/d") == ["new"]


def test_whiteout_does_not_hide_same_layer_file(tmp_path: Path) -> None:
    flat = flat_from_layers(tmp_path, layer(M("a", data=b"1")),
                            layer(M("a", data=b"2"), M(".wh.a")))
    assert content(flat, "/a") == b"2"


def test_file_replaced_by_directory_and_back(tmp_path: Path) -> None:
    flat = flat_from_layers(
        tmp_path,
        layer(M("x", data=b"file"), M("y", "dir"), M("y/child", data=b"c"),
              M("z", "symlink", linkname="/etc")),
        layer(M("x", "dir", mode=0o700), M("x/in", data=b"i"), M("y", data=b"now a file"),
              M("z", "dir")),
    )
    assert flat.entries["/x"].kind == "dir" and flat.entries["/x/in"].kind == "file"
    assert flat.entries["/y"].kind == "file" and "/y/child" not in flat.entries
    assert content(flat, "/y") == b"now a file"
    assert content(flat, "/x/in") == b"i"
    fs = flat.rootfs()
    assert flat.entries["/z"].kind == "dir" and fs.is_dir("/z")
    assert fs.resolve("/z").links == ()


def test_hardlinks_share_content_and_survive_target_replacement(tmp_path: Path) -> None:
    flat = flat_from_layers(
        tmp_path,
        layer(M("bin", "dir"), M("bin/a", data=b"A", mode=0o755),
              M("bin/a2", "hardlink", linkname="bin/a", mode=0o755),
              M("bin/b", data=b"B"), M("bin/b2", "hardlink", linkname="/bin/b"),
              M("bin/c", data=b"C"), M("bin/c2", "hardlink", linkname="bin/c")),
        # a: untouched group; b: target replaced; c: target whited out
        layer(M("bin/b", data=b"new B"), M("bin/.wh.c")),
    )
    e = flat.entries
    assert e["/bin/a"].kind == "file" and e["/bin/a2"].kind == "hardlink"
    assert e["/bin/a2"].linkname == "/bin/a"
    assert flat.hardlink_group("/bin/a2") == ("/bin/a", "/bin/a2")
    fs = flat.rootfs()
    assert fs.stat("/bin/a").st_ino == fs.stat("/bin/a2").st_ino != fs.stat("/bin/b").st_ino
    assert fs.stat("/bin/a2").st_nlink == 2 and fs.stat("/bin/a2").st_size == 1
    assert content(flat, "/bin/a2") == b"A" and fs.open("/bin/a2").read() == b"A"
    # replacing the target breaks the link: the old name keeps the old bytes
    assert e["/bin/b"].kind == "file" and e["/bin/b2"].kind == "file"
    assert content(flat, "/bin/b2") == b"B"
    assert content(flat, "/bin/b") == b"new B"
    # whiting out the target leaves the other name as a plain file with the content
    assert "/bin/c" not in e and e["/bin/c2"].kind == "file" and e["/bin/c2"].size == 1
    assert content(flat, "/bin/c2") == b"C"
    # each inode once
    assert flat.content_size() == len(b"A") + len(b"B") + len(b"new B") + len(b"C")


def test_hardlink_to_lower_layer_file(tmp_path: Path) -> None:
    flat = flat_from_layers(tmp_path, layer(M("f", data=b"lower", mode=0o600)),
                            layer(M("g", "hardlink", linkname="f", mode=0o640, uid=7)))
    assert flat.hardlink_group("/f") == ("/f", "/g")
    # Docker applies the link header's owner and mode to the shared inode
    assert flat.entries["/f"].mode == 0o640 and flat.entries["/f"].uid == 7


def test_symlinks_stored_as_is_and_never_followed_on_host(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    flat = flat_from_layers(
        tmp_path,
        layer(M("usr", "dir"), M("usr/lib", "dir"), M("lib", "symlink", linkname="usr/lib"),
              M("escape", "symlink", linkname=str(outside)),
              M("up", "symlink", linkname="../../../../../../.."),
              M("etc", "dir"), M("etc/alt", "symlink", linkname="/usr/bin/y"),
              # members under a symlink of their own layer resolve inside the image, as in
              # Docker's unpack (chrooted into the layer's directory)
              M("lib/libx.so", data=b"elf"), M("escape/planted", data=b"p"),
              M("up/rootfile", data=b"r")),
        extract=True,
    )
    e = flat.entries
    assert e["/lib"].kind == "symlink" and e["/lib"].linkname == "usr/lib"
    assert e["/etc/alt"].linkname == "/usr/bin/y"
    assert os.readlink(flat.host_path("/etc/alt")) == "/usr/bin/y"
    assert flat.rootfs().readlink("/etc/alt") == "/usr/bin/y"
    assert flat.rootfs().open("/lib/libx.so").read() == b"elf"
    assert e["/usr/lib/libx.so"].kind == "file"
    assert e[f"{outside}/planted"].kind == "file"  # inside the image, not on the host
    assert e["/rootfile"].kind == "file"
    assert not outside.exists()
    assert not (Path("/") / "rootfile").exists()


def test_modes_owners_mtimes_setuid_and_capability_xattr(tmp_path: Path) -> None:
    flat = flat_from_layers(
        tmp_path,
        layer(M("usr", "dir", mode=0o755), M("usr/bin", "dir", mode=0o711, uid=3, gid=4),
              M("usr/bin/su", data=b"x", mode=0o4755, mtime=1_234_567_890),
              M("usr/bin/ping", data=b"p", mode=0o755, xattrs={"security.capability": CAP}),
              M("tmp", "dir", mode=0o1777), M("home", "dir"),
              M("home/u", data=b"u", mode=0o600, uid=1000, gid=2000)),
        extract=True,
    )
    e = flat.entries
    assert e["/usr/bin"].mode == 0o711 and (e["/usr/bin"].uid, e["/usr/bin"].gid) == (3, 4)
    assert e["/usr/bin/su"].mode == 0o4755 and e["/usr/bin/su"].mtime == 1_234_567_890
    assert e["/usr/bin/ping"].xattrs == {"security.capability": CAP}
    assert e["/tmp"].mode == 0o1777
    assert (e["/home/u"].uid, e["/home/u"].gid, e["/home/u"].mode) == (1000, 2000, 0o600)
    # the host copy never carries setuid: an untrusted image cannot plant one
    host_mode = os.stat(flat.host_path("/usr/bin/su")).st_mode
    assert not host_mode & (stat.S_ISUID | stat.S_ISGID)
    assert os.stat(flat.host_path("/usr/bin/su")).st_mtime == 1_234_567_890
    # the index-backed view reports the image's own metadata
    st = flat.rootfs().stat("/usr/bin/su")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4755
    assert st.st_mtime == 1_234_567_890 and st.st_size == 1
    assert flat.rootfs().stat("/home/u").st_uid == 1000


def test_long_names_pax_and_gnu(tmp_path: Path) -> None:
    deep = "/".join(["d" * 60] * 5)
    names = [f"{deep}/pax-{'n' * 120}", f"{deep}/gnu-{'m' * 120}"]
    dirs = [M("/".join(["d" * 60] * i), "dir") for i in range(1, 6)]
    flat = flat_from_layers(
        tmp_path,
        layer(*dirs, M(names[0], data=b"pax"),
              M(f"{deep}/lnk", "symlink", linkname="t" * 200)),
        layer(M(names[1], data=b"gnu"), M(f"{deep}/hl", "hardlink", linkname=names[1]),
              fmt=tarfile.GNU_FORMAT),
    )
    assert content(flat, "/" + names[0]) == b"pax"
    assert content(flat, f"/{deep}/hl") == b"gnu"
    assert flat.entries[f"/{deep}/lnk"].linkname == "t" * 200
    assert flat.entries[f"/{deep}/hl"].linkname == "/" + names[1]


def test_device_nodes_are_indexed_not_created(tmp_path: Path) -> None:
    flat = flat_from_layers(tmp_path, layer(M("dev", "dir"),
                                            M("dev/null", "char", mode=0o666, devmajor=1,
                                              devminor=3),
                                            M("dev/sda", "block", devmajor=8), M("dev/p", "fifo")),
                            extract=True)
    e = flat.entries
    assert (e["/dev/null"].kind, e["/dev/null"].devmajor, e["/dev/null"].devminor) == (
        "char", 1, 3)
    assert e["/dev/sda"].kind == "block" and e["/dev/p"].kind == "fifo"
    assert os.listdir(flat.host_path("/dev")) == []
    fs = flat.rootfs()
    assert fs.listdir("/dev") == ["null", "p", "sda"]
    assert stat.S_ISCHR(fs.stat("/dev/null").st_mode) and fs.stat("/dev/null").st_rdev == \
        os.makedev(1, 3)
    assert not fs.is_file("/dev/null")


def test_names_normalized_like_docker(tmp_path: Path) -> None:
    flat = flat_from_layers(tmp_path, layer(M("./", "dir", mode=0o700), M("./a", data=b"a"),
                                            M("/b", data=b"b"), M("/../c", data=b"c"),
                                            M("x/./y/../z", data=b"z")))
    assert {"/a", "/b", "/c", "/x", "/x/z"} <= set(flat.entries)
    assert flat.entries["/"].mode == 0o755  # Docker skips a layer's `./`
    assert flat.entries["/x"].kind == "dir"  # implicit parent, as Docker's MkdirAll


def test_all_input_formats_give_the_same_result(tmp_path: Path) -> None:
    layers = [layer(M("a", "dir"), M("a/f", data=b"1" * 5000), M("a/g", data=b"2")),
              layer(M("a/.wh.g"), M("a/h", "hardlink", linkname="a/f"))]
    results = []
    for i, ref in enumerate([
        f"docker-archive:{docker_archive(tmp_path / 'old.tar', layers)}",
        f"docker-archive:{docker_archive(tmp_path / 'new.tar', layers, blobs_layout=True)}",
        f"docker-archive:{tmp_path / 'old.tar'}:hand/made:1",
        f"oci:{oci_layout(tmp_path / 'gz', layers)}:t1",
        f"oci:{oci_layout(tmp_path / 'plain', layers, compress=False)}",
        f"docker-archive:{_gzipped(tmp_path / 'old.tar')}",
    ]):
        flat = flatten_ref(ref, tmp_path / f"w{i}")
        results.append({p: (e.kind, e.size, e.linkname) for p, e in flat.entries.items()})
        assert content(flat, "/a/h") == content(flat, "/a/f") == b"1" * 5000
    assert all(r == results[0] for r in results)
    assert results[0]["/a/h"] == ("hardlink", 0, "/a/f")
    assert "/a/g" not in results[0]


def _gzipped(path: Path) -> Path:
    out = path.with_suffix(".tar.gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    return out


def test_hardlink_to_symlink_keeps_the_link_text(tmp_path: Path) -> None:
    flat = flat_from_layers(tmp_path, layer(M("s", "symlink", linkname="/etc/passwd"),
                                            M("h", "hardlink", linkname="s")), extract=True)
    assert flat.hardlink_group("/h") == ("/h", "/s")
    canon = flat.entries["/s"] if flat.entries["/s"].kind == "symlink" else flat.entries["/h"]
    assert canon.linkname == "/etc/passwd"
    assert os.readlink(flat.host_path("/h")) == "/etc/passwd"  # a link, not the host file
    assert flat.rootfs().readlink("/h") == "/etc/passwd"


def test_parents_are_looked_up_in_their_own_layer_as_the_engine_does(tmp_path: Path) -> None:
    """What `docker export` shows for what the spec leaves open (the engine's overlay2
    storage unpacks each layer into a directory of its own): a parent a later layer does not
    list is 0755 root:root over the lower directory's metadata, a lower symlink or file on
    the way is hidden by a directory, never followed; `./` and symlink modes are ignored;
    a hardlink group's file is its smallest name, whatever the tar order."""
    flat = flat_from_layers(
        tmp_path,
        layer(M("./", "dir", mode=0o700, uid=9),
              M("home", "dir", mode=0o750, uid=7, gid=8, xattrs={"user.k": b"v"}),
              M("home/app", "dir", mode=0o700, uid=1000), M("home/app/old", data=b"o"),
              M("lib", "symlink", linkname="usr/lib"), M("usr", "dir"),
              M("usr/lib", "dir"), M("f", data=b"file"),
              M("s", "symlink", linkname="home", mode=0o640),
              M("z", data=b"z"), M("y", "hardlink", linkname="z")),
        layer(M("home/app/new", data=b"n"), M("lib/x.so", data=b"x"), M("f/g", data=b"g"),
              M("usr/lib/.wh.none")),
        extract=True,
    )
    e = flat.entries
    for path in ("/home", "/home/app", "/lib", "/f", "/usr", "/usr/lib"):
        assert (e[path].kind, e[path].mode, e[path].uid, e[path].gid, e[path].mtime,
                e[path].xattrs, e[path].layer) == ("dir", 0o755, 0, 0, 0.0, {}, 1), path
    assert "/home/app/old" in e and "/lib/x.so" in e and "/usr/lib/x.so" not in e
    assert (e["/"].mode, e["/"].uid, e["/"].mtime) == (0o755, 0, 0.0)
    assert e["/s"].mode == 0o777
    assert e["/y"].kind == "file" and e["/z"].kind == "hardlink" and e["/z"].linkname == "/y"
    assert content(flat, "/z") == b"z"
    # the host tree shows the same: a directory where the lower symlink was
    assert flat.host_path("/lib").is_dir() and not flat.host_path("/lib").is_symlink()
