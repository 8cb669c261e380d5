"""The in-place reader (the engine's overlay2 layer directories and tar-split records, or
Podman's containers-storage ones) against the archive reader (`docker save`): the same
flattened index on every fixture and on both engines, entry by entry with nothing
normalized away, both what `docker export` shows, and a stated fallback to `docker save`
wherever in-place reading cannot be trusted."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import FIXTURE_IMAGES
from image_builders import (
    ENGINE_INIT_PATHS,
    M,
    docker_archive,
    engine_tree,
    flat_from_layers,
    flatten_ref,
    layer,
    set_size,
)
from overlay_storage import (
    CAP,
    LOWER,
    UPPER,
    assert_same_index,
    index_in_place,
    make_containers_storage,
    make_storage,
    read_in_place,
    storage_config,
    unpack_layer,
)
from prereq import missing

from tracer.budgets import DEFAULT, BudgetExceeded, Budgets
from tracer.engine import Engine, connect
from tracer.errors import ImageFormatError
from tracer.image import containers_storage as cstore
from tracer.image.daemon import choose_reader, inspect, open_saved
from tracer.image.flatten import flatten
from tracer.image.model import FlatImage
from tracer.image.overlay import NotReadable, locate
from tracer.image.reference import parse_reference


def _both(name: str, tmp_path: Path, budgets: Budgets = DEFAULT
          ) -> tuple[FlatImage, FlatImage]:
    ref = parse_reference(name)
    engine = connect()
    image = inspect(engine, str(ref.repo_tag))
    assert image is not None
    storage, reason = choose_reader(engine, image, budgets)
    if storage is None:
        missing(f"in-place reading is not possible here: {reason}")
    in_place = index_in_place(ref, storage, tmp_path / "in-place", budgets)
    with open_saved(engine, ref, image, tmp_path / "source", budgets) as saved_image:
        saved = flatten(saved_image, tmp_path / "saved", budgets=budgets)
    return in_place, saved


# On Podman: the fixtures whose layers differ in kind (one big base layer, setuid and
# file capabilities, a 350 MB top layer); `layers` is read on both engines below.
ON_PODMAN = ("base", "privhelper", "prodapps")


@pytest.mark.integration
@pytest.mark.parametrize("name,engine", [
    *[(name, "docker") for name in sorted(FIXTURE_IMAGES)],
    *[(name, "podman") for name in ON_PODMAN]], indirect=["engine"])
def test_in_place_index_is_the_archive_readers(name: str, engine, tmp_path: Path) -> None:
    in_place, saved = _both(engine.image(name), tmp_path)
    assert_same_index(in_place, saved)
    # nothing was copied: the work dir of the in-place index is empty
    assert in_place.workdir is not None and list(in_place.workdir.iterdir()) == []


@pytest.mark.integration
def test_both_engines_give_one_index_of_one_image(podman, fixture_image,
                                                  tmp_path: Path, monkeypatch) -> None:
    """The layers fixture (whiteouts, opaque directories, hardlinks, capabilities over 13
    layers) read in place from Podman's containers-storage is what Podman's `save` gives,
    and what Docker's overlay2 gives: one image id, one index."""
    ref = fixture_image("layers")
    in_place = {}
    for name in ("docker", "podman"):
        monkeypatch.setenv("TRACER_ENGINE", name)
        in_place[name], saved = _both(ref, tmp_path / name)
        if name == "podman":
            assert_same_index(in_place[name], saved)
    assert_same_index(in_place["podman"], in_place["docker"])


# Layers whose meaning the OCI spec leaves open, as the engine's overlay2 storage shows
# them (tracer/image/flatten.py): parents a later layer does not list, a later member below
# a lower layer's symlink, a whiteout below one, a layer's `./`, symlink modes, hardlinks.
ENGINE_CASES = [
    layer(M("./", "dir", mode=0o700, mtime=1_500_000_000),
          M("a", "dir", mode=0o750, uid=3, gid=4, mtime=1_600_000_010), M("a/x", data=b"x"),
          M("lib", "dir", mode=0o711, mtime=1_600_000_011), M("lib/old", data=b"old"),
          M("home", "dir", mode=0o755, mtime=1_600_000_012),
          M("home/app", "dir", mode=0o700, uid=1000, gid=1000, mtime=1_600_000_013),
          M("usr", "dir", mode=0o755, mtime=1_600_000_014),
          M("usr/x", "dir", mode=0o750, mtime=1_600_000_015), M("usr/x/kept", data=b"k"),
          M("bl", "symlink", linkname="usr/x"), M("lnk", "symlink", linkname="lib"),
          M("s", "symlink", linkname="a/x", mode=0o644),
          M("h2", data=b"shared"), M("h1", "hardlink", linkname="h2")),
    layer(M("./", "dir", mode=0o711, mtime=1_500_000_001),
          M("a/new", data=b"new"), M("home/app/f", data=b"f"), M("deep/er/z", data=b"z"),
          M("lnk/y", data=b"y"), M("bl/.wh.kept"),
          M("tgt", "dir", mode=0o701, mtime=1_600_000_020),
          M("sl", "symlink", linkname="tgt", mode=0o600), M("sl/f", data=b"f"),
          M("z1", data=b"zz"), M("z0", "hardlink", linkname="z1")),
]


@pytest.mark.integration
def test_both_readers_give_what_the_engine_shows(docker_client, tmp_path: Path) -> None:
    tag = f"tracer-test/exact-engine-cases:{uuid.uuid4().hex[:8]}"
    archive = docker_archive(tmp_path / "in.tar", ENGINE_CASES, repo_tag=tag)
    subprocess.run(["docker", "load", "-i", str(archive)], check=True, capture_output=True)
    try:
        in_place, saved = _both(tag, tmp_path / "engine")
        assert_same_index(in_place, saved)
        from_file = flatten_ref(f"docker-archive:{archive}", tmp_path / "file")
        assert from_file.entries == saved.entries
        tree = engine_tree(tag)
    finally:
        docker_client.images.remove(tag, force=True)
    made = ENGINE_INIT_PATHS | {"/srv", "/data"}  # docker create makes WorkingDir, Volumes
    shown = {p: n for p, n in tree.items() if p not in made
             and not p.startswith(("/dev/", "/proc/", "/sys/"))}
    entries = {p: e for p, e in saved.entries.items() if p != "/"}  # export has no "/"
    assert sorted(shown) == sorted(entries)
    implied = {"/a", "/home", "/home/app", "/deep", "/deep/er", "/lnk", "/bl"}
    for path, e in entries.items():
        n = shown[path]
        kind = "file" if e.kind == "hardlink" else e.kind
        assert (n.kind, n.mode, n.uid, n.gid, n.linkname) == \
            (kind, e.mode, e.uid, e.gid, e.linkname if e.kind == "symlink" else ""), path
        # an implied directory's time is when the engine unpacked the layer: in no image data
        assert n.mtime == (int(e.mtime) if path not in implied else n.mtime), path
        if path in implied:
            assert (e.kind, e.mode, e.uid, e.gid, e.mtime) == ("dir", 0o755, 0, 0, 0.0), path
    assert saved.entries["/"].mode == 0o755 and saved.entries["/"].mtime == 0.0
    assert saved.entries["/s"].mode == 0o777 and saved.entries["/sl"].mode == 0o777
    assert saved.entries["/lnk/y"].kind == "file" and "/lib/y" not in saved.entries
    assert "/usr/x/kept" in saved.entries  # the whiteout below /bl hid nothing of /usr/x
    assert saved.entries["/tgt/f"].kind == "file"  # below a symlink of the same layer
    assert saved.entries["/h1"].kind == "file" and saved.entries["/h2"].linkname == "/h1"
    assert saved.entries["/z0"].kind == "file" and saved.entries["/z1"].linkname == "/z0"


@pytest.mark.integration
def test_fallback_to_docker_save_says_why(fixture_image, monkeypatch) -> None:
    ref = fixture_image("base")
    engine = connect()
    image = inspect(engine, ref)
    assert image is not None
    monkeypatch.setenv("TRACER_IMAGE_READER", "save")
    storage, reason = choose_reader(engine, image, DEFAULT)
    assert storage is None and "TRACER_IMAGE_READER=save" in reason
    monkeypatch.setenv("TRACER_IMAGE_READER", "auto")
    remote = Engine(engine.sdk, engine.timeout, "tcp://192.0.2.1:2376")  # never contacted
    storage, reason = choose_reader(remote, image, DEFAULT)
    assert storage is None and "is not local" in reason


# ---------------------------------------------------------------- hand-made storage


def test_storage_is_checked_before_it_is_trusted(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    layers = [layer(M("a", data=b"1")), layer(M("b", data=b"2"))]
    image_id, data, root = make_storage(tmp_path, storage_config(layers), layers)
    located = locate(image_id, "overlay2", data, root, DEFAULT)
    assert [str(p) for p in located.layer_dirs] == [data["LowerDir"], data["UpperDir"]]
    with pytest.raises(NotReadable, match="'overlayfs' driver"):
        locate(image_id, "overlayfs", data, root, DEFAULT)  # the containerd image store
    other = "sha256:" + "f" * 64
    imagedb = Path(root) / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    (imagedb / other[7:]).write_bytes(storage_config(layers))  # not the config of `other`
    with pytest.raises(NotReadable, match="does not hash to"):
        locate(other, "overlay2", data, root, DEFAULT)
    with pytest.raises(NotReadable, match="image database is not visible here"):
        locate(image_id, "overlay2", data, str(tmp_path / "elsewhere"), DEFAULT)
    swapped = {"UpperDir": data["LowerDir"], "LowerDir": data["UpperDir"]}
    with pytest.raises(NotReadable, match="layer 0: the layer database names"):
        locate(image_id, "overlay2", swapped, root, DEFAULT)
    for split in located.tar_splits[1:]:
        split.unlink()
    with pytest.raises(NotReadable, match="layer 1: the engine keeps no record of its tar"):
        locate(image_id, "overlay2", data, root, DEFAULT)


def test_containers_storage_is_checked_before_it_is_trusted(tmp_path: Path) -> None:
    """Podman's store: its databases must name, for the image, layers whose diff digests
    are the config's diff_ids in order and whose directories are the ones the engine's
    inspect named, each with its tar-split file; else `docker save` is used."""
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    layers = [layer(M("a", data=b"1")), layer(M("b", data=b"2"))]
    image_id, data, root = make_containers_storage(tmp_path, storage_config(layers), layers)
    located = cstore.locate(image_id, "overlay", data, root, DEFAULT)
    assert [str(p) for p in located.layer_dirs] == [data["LowerDir"], data["UpperDir"]]
    assert [p.name for p in located.tar_splits] == \
        [Path(d).parent.name + ".tar-split.gz" for d in (data["LowerDir"], data["UpperDir"])]
    with pytest.raises(NotReadable, match="'vfs' driver"):
        cstore.locate(image_id, "vfs", data, root, DEFAULT)
    with pytest.raises(NotReadable, match="storage is not visible here"):
        cstore.locate(image_id, "overlay", data, str(tmp_path / "elsewhere"), DEFAULT)
    with pytest.raises(NotReadable, match="has no image"):  # an additional image store
        cstore.locate("sha256:" + "e" * 64, "overlay", data, root, DEFAULT)
    swapped = {"UpperDir": data["LowerDir"], "LowerDir": data["UpperDir"]}
    with pytest.raises(NotReadable, match="layer 0: the store names"):
        cstore.locate(image_id, "overlay", swapped, root, DEFAULT)
    db = Path(root) / "overlay-layers" / "layers.json"
    records = json.loads(db.read_text())
    db.write_text(json.dumps([{**records[0], "uidmap": [{"container_id": 0,
                                                          "host_id": 100000, "size": 65536}]},
                              records[1]]))
    with pytest.raises(NotReadable, match="layer 0: stored with shifted owners"):
        cstore.locate(image_id, "overlay", data, root, DEFAULT)
    db.write_text(json.dumps([{**records[0], "diff-digest": "sha256:" + "1" * 64},
                              records[1]]))
    with pytest.raises(NotReadable, match="layer 0: the store says sha256:1111"):
        cstore.locate(image_id, "overlay", data, root, DEFAULT)
    db.write_text(json.dumps(records))
    located.tar_splits[1].unlink()
    with pytest.raises(NotReadable, match="layer 1: the engine keeps no record of its tar"):
        cstore.locate(image_id, "overlay", data, root, DEFAULT)
    config = next((Path(root) / "overlay-images" / image_id[7:]).iterdir())
    config.write_bytes(storage_config(layers, {"author": "not this image"}))
    with pytest.raises(NotReadable, match="does not hash to it"):
        cstore.locate(image_id, "overlay", data, root, DEFAULT)


def test_in_place_index_of_hand_made_containers_storage_is_the_tar_readers(
        tmp_path: Path) -> None:
    """The same hard cases from Podman's store as from Docker's (the records are the same
    tar-split format; only the bookkeeping around them differs)."""
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    tars = [layer(*LOWER), layer(*UPPER)]
    image_id, data, root = make_containers_storage(tmp_path / "storage",
                                                   storage_config(tars), tars)
    located = cstore.locate(image_id, "overlay", data, root, DEFAULT)
    for ms, diff in zip([LOWER, UPPER], located.layer_dirs, strict=True):
        unpack_layer(ms, diff)
    in_place = index_in_place(parse_reference("docker-daemon:hand/made:1"), located,
                              tmp_path / "idx")
    saved = flat_from_layers(tmp_path, *tars)
    assert in_place.source_digest != saved.source_digest  # hand-made config: not compared
    in_place.source_digest, in_place.config = saved.source_digest, saved.config
    assert_same_index(in_place, saved)
    assert in_place.entries["/ping"].xattrs == {"security.capability": CAP}


def test_in_place_index_of_hand_made_storage_is_the_tar_readers(tmp_path: Path) -> None:
    """Whiteouts, opaque directories, a file becoming a directory and back, hardlinks (one
    whose first name is replaced later in its layer), setuid, devices, FIFOs, capabilities
    and other xattrs, implied parents, long names: the same index from the tar-split
    records as from the tars, and the bytes from the layer directories."""
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    in_place = read_in_place(tmp_path / "storage", [LOWER, UPPER])
    saved = flat_from_layers(tmp_path, layer(*LOWER), layer(*UPPER))
    assert in_place.source_digest != saved.source_digest  # hand-made config: not compared
    in_place.source_digest, in_place.config = saved.source_digest, saved.config
    assert_same_index(in_place, saved)
    assert "/a/x" not in in_place.entries and "/b/old" not in in_place.entries
    assert in_place.entries["/c"].kind == "dir" and in_place.entries["/d"].kind == "file"
    assert in_place.hardlink_group("/h1") == ("/h1", "/h2")
    assert in_place.entries["/ping"].xattrs == {"security.capability": CAP}
    # k2's first inode lives on as k1 only: its bytes are read from that name
    assert in_place.open_content("/k1").read() == b"K"
    assert in_place.open_content("/k2").read() == b"new k2"


@pytest.mark.parametrize("records, error", [
    ([{"type": 3}], "malformed tar-split record"),
    ([{"type": 2, "payload": "not base64!"}], "malformed tar-split payload"),
    ([{"type": 1, "size": -1}], "malformed tar-split file size"),
])
def test_malformed_tar_split_records_are_refused(tmp_path: Path, records: list[dict],
                                                 error: str) -> None:
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    tars = [layer(M("f", data=b"data"))]
    image_id, data, root = make_storage(tmp_path, storage_config(tars), tars)
    next(Path(root).rglob("tar-split.json.gz")).write_bytes(
        gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records)))
    located = locate(image_id, "overlay2", data, root, DEFAULT)
    with pytest.raises(ImageFormatError, match=error):
        index_in_place(parse_reference("docker-daemon:hand/made:1"), located,
                       tmp_path / "idx", DEFAULT)
    assert not (tmp_path / "idx").exists()  # nothing left behind


def test_a_size_on_a_member_without_data_is_ignored_as_the_tar_readers_do(
        tmp_path: Path) -> None:
    """A symlink whose header claims 100 bytes: no data follows it in the tar (Go's reader
    and tracer's agree), and its tar-split record still says 100."""
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    members = [M("s", "symlink", linkname="f"), M("f", data=b"after the link")]
    tar = set_size(layer(*members), "s", 100)
    image_id, data, root = make_storage(tmp_path / "storage", storage_config([tar]), [tar])
    located = locate(image_id, "overlay2", data, root, DEFAULT)
    unpack_layer(members, located.layer_dirs[0])
    in_place = index_in_place(parse_reference("docker-daemon:hand/made:1"), located,
                              tmp_path / "idx", DEFAULT)
    archive = docker_archive(tmp_path / "in.tar", [tar])
    saved = flatten_ref(f"docker-archive:{archive}", tmp_path / "work")
    assert in_place.entries == saved.entries
    assert in_place.open_content("/f").read() == b"after the link"


def test_tar_split_that_does_not_match_its_headers_is_refused(tmp_path: Path) -> None:
    """A record whose data size differs from the header's: the reader would read headers
    out of file data (or the reverse) if it trusted either."""
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    tar = layer(M("f", data=b"data"))
    image_id, data, root = make_storage(tmp_path, storage_config([tar]), [tar])
    split = next(Path(root).rglob("tar-split.json.gz"))
    lines = gzip.decompress(split.read_bytes()).replace(b'"size": 4', b'"size": 5')
    split.write_bytes(gzip.compress(lines))
    located = locate(image_id, "overlay2", data, root, DEFAULT)
    with pytest.raises(ImageFormatError, match="tar-split does not match the tar: a header "
                       "says 4 bytes of data, the record 5"):
        index_in_place(parse_reference("docker-daemon:hand/made:1"), located,
                       tmp_path / "idx", DEFAULT)


def test_in_place_reading_counts_the_layers_bytes_against_the_budget(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    with pytest.raises(BudgetExceeded, match="image_bytes"):
        read_in_place(tmp_path, [[M("big", data=bytes(200_000))]], Budgets(image_bytes=100_000))


def test_in_place_bytes_are_read_below_the_layer_directory_only(tmp_path: Path) -> None:
    """A layer directory changed behind the engine's back: a parent swapped for a symlink
    to the host, a file of another size. Neither is read."""
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    flat = read_in_place(tmp_path, [[M("d", "dir"), M("d/f", data=b"secret?"),
                                 M("g", data=b"gg")]])
    ref = flat.content_ref("/d/f")
    assert ref.root is not None and ref.blob == "d/f"
    host = tmp_path / "host"
    host.mkdir()
    (host / "f").write_bytes(b"host's!")
    diff = Path(ref.root)
    os.rename(diff / "d", diff / "d.real")
    (diff / "d").symlink_to(host)
    with pytest.raises(OSError, match="Too many levels of symbolic links|Not a directory"):
        flat.open_content("/d/f")
    (diff / "g").write_bytes(b"ggg")
    with pytest.raises(OSError, match="3 bytes, the layer's tar says 2"):
        flat.open_content("/g")
    (diff / "g").unlink()
    os.mkfifo(diff / "g")
    with pytest.raises(OSError, match="not a regular file"):
        flat.open_content("/g")
    assert stat.S_ISFIFO(os.lstat(diff / "g").st_mode)
