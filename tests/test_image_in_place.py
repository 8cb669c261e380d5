"""The in-place reader (the engine's overlay2 layer directories) against the archive
reader (`docker save`): the same flattened index on every fixture, entry by entry, and a
stated fallback to `docker save` wherever in-place reading cannot be trusted."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import FIXTURE_IMAGES
from image_builders import M, flat_from_layers, layer
from prereq import missing

from tracer.budgets import DEFAULT
from tracer.engine import connect
from tracer.image.daemon import InPlaceBackend, SaveBackend, choose_backend, inspect
from tracer.image.model import FlatImage
from tracer.image.overlay import NotReadable, OverlayImage, index_in_place, locate
from tracer.image.reference import parse_reference

FIELDS = ("kind", "mode", "uid", "gid", "mtime", "size", "linkname", "xattrs", "layer",
          "devmajor", "devminor")


def _sha(flat: FlatImage, path: str) -> str:
    h = hashlib.sha256()
    with flat.open_content(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _normalized(flat: FlatImage, path: str) -> dict:
    """An entry's fields; a hardlink group is compared as a group (below), so which of
    its names is "the file" is left out here: an overlay layer keeps no order of names,
    the archive reader takes the tar's. The root's mtime too: a layer directory's root
    carries the time the engine unpacked it, not the tar's `./` (the root is never
    written to an output)."""
    e = flat.entries[path]
    fields = {f: getattr(e, f) for f in FIELDS}
    if e.kind in ("file", "hardlink") and len(flat.hardlink_group(path)) > 1:
        canonical = next(p for p in flat.hardlink_group(path)
                         if flat.entries[p].kind == "file")
        fields.update(kind="file", linkname="", size=flat.entries[canonical].size)
    if path == "/":
        fields["mtime"] = None
    return fields


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(FIXTURE_IMAGES))
def test_in_place_index_is_the_archive_readers(name: str, fixture_image,
                                               tmp_path: Path) -> None:
    ref = parse_reference(fixture_image(name))
    engine = connect()
    image = inspect(engine, str(ref.repo_tag))
    assert image is not None
    backend, reason = choose_backend(engine, image, DEFAULT)
    if not isinstance(backend, InPlaceBackend):
        missing(f"in-place reading is not possible here: {reason}")
    in_place = backend.read(engine, ref, image, tmp_path / "in-place", DEFAULT, None)
    saved = SaveBackend().read(engine, ref, image, tmp_path / "saved", DEFAULT, None)
    assert sorted(in_place.entries) == sorted(saved.entries)
    differences = [(p, _normalized(in_place, p), _normalized(saved, p)) for p in saved.entries
                   if _normalized(in_place, p) != _normalized(saved, p)]
    assert differences == []
    assert {frozenset(in_place.hardlink_group(p)) for p in in_place.entries} == \
        {frozenset(saved.hardlink_group(p)) for p in saved.entries}
    files = [p for p, e in saved.entries.items() if e.kind == "file"]
    assert files and all(_sha(in_place, p) == _sha(saved, p) for p in files)
    assert in_place.config == saved.config and in_place.source_digest == saved.source_digest
    # nothing was copied: the work dir of the in-place index is empty
    assert in_place.workdir is not None and list(in_place.workdir.iterdir()) == []


@pytest.mark.integration
def test_fallback_to_docker_save_says_why(fixture_image, monkeypatch) -> None:
    ref = fixture_image("base")
    engine = connect()
    image = inspect(engine, ref)
    assert image is not None
    monkeypatch.setenv("TRACER_IMAGE_READER", "save")
    backend, reason = choose_backend(engine, image, DEFAULT)
    assert isinstance(backend, SaveBackend) and "TRACER_IMAGE_READER=save" in reason
    monkeypatch.setenv("TRACER_IMAGE_READER", "auto")
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2376")  # never contacted
    backend, reason = choose_backend(engine, image, DEFAULT)
    assert isinstance(backend, SaveBackend) and "is not local" in reason


def _storage(tmp_path: Path, config: bytes, diff_ids: list[str]) -> tuple[str, dict, str]:
    """A hand-made engine storage directory: image db, layer db and layer dirs."""
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    root = tmp_path / "docker"
    imagedb = root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    imagedb.mkdir(parents=True)
    (imagedb / image_id[7:]).write_bytes(config)
    dirs = []
    chain = ""
    for i, diff_id in enumerate(diff_ids):
        chain = diff_id if i == 0 else \
            "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        layerdb = root / "image" / "overlay2" / "layerdb" / "sha256" / chain[7:]
        layerdb.mkdir(parents=True)
        (layerdb / "cache-id").write_text(f"cache{i}")
        (root / "overlay2" / f"cache{i}" / "diff").mkdir(parents=True)
        dirs.append(str(root / "overlay2" / f"cache{i}" / "diff"))
    data = {"UpperDir": dirs[-1]}
    if len(dirs) > 1:
        data["LowerDir"] = ":".join(reversed(dirs[:-1]))
    return image_id, data, str(root)


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def test_storage_is_checked_before_it_is_trusted(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    diff_ids = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    image_id, data, root = _storage(tmp_path, _config(diff_ids), diff_ids)
    located = locate(image_id, "overlay2", data, root, DEFAULT)
    assert [str(p) for p in located.layer_dirs] == [data["LowerDir"], data["UpperDir"]]
    with pytest.raises(NotReadable, match="'overlayfs' driver"):
        locate(image_id, "overlayfs", data, root, DEFAULT)  # the containerd image store
    other = "sha256:" + "f" * 64
    imagedb = Path(root) / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    (imagedb / other[7:]).write_bytes(_config(diff_ids))  # not the config of `other`
    with pytest.raises(NotReadable, match="does not hash to"):
        locate(other, "overlay2", data, root, DEFAULT)
    with pytest.raises(NotReadable, match="image database is not visible here"):
        locate(image_id, "overlay2", data, str(tmp_path / "elsewhere"), DEFAULT)
    swapped = {"UpperDir": data["LowerDir"], "LowerDir": data["UpperDir"]}
    with pytest.raises(NotReadable, match="layer 0: the layer database names"):
        locate(image_id, "overlay2", swapped, root, DEFAULT)


CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
LOWER = [M("a", "dir", mode=0o750, uid=3, gid=4, mtime=1_600_000_010),
         M("a/x", data=b"x", mtime=1_600_000_011.25),
         M("a/y", data=b"yy", mode=0o4755, mtime=1_600_000_012),
         M("b", "dir", mtime=1_600_000_013), M("b/old", data=b"old"),
         M("c", data=b"c was a file"), M("d", "dir"), M("d/g", data=b"g"),
         M("h1", data=b"shared", uid=5, mtime=1_600_000_014),
         M("h2", "hardlink", linkname="h1", uid=5, mtime=1_600_000_014),
         M("ping", data=b"p", mode=0o755, xattrs={"security.capability": CAP}),
         M("fifo", "fifo", mode=0o600), M("null", "char", mode=0o666, devmajor=1, devminor=3),
         M("s", "symlink", linkname="a/y", mode=0o777)]  # as Docker writes symlinks
UPPER = [M("a", "dir", mode=0o750, uid=3, gid=4, mtime=1_600_000_020), M("a/.wh.x"),
         M("b", "dir", mtime=1_600_000_021), M("b/.wh..wh..opq"), M("b/new", data=b"new"),
         M("c", "dir", mode=0o700, mtime=1_600_000_022), M("c/inner", data=b"i"),
         M("d", data=b"d is a file now"), M("user", data=b"u", xattrs={"user.k": b"v"})]


def _materialize(members: list[M], diff: Path) -> None:
    """A layer directory as the engine's overlay2 driver unpacks `members`: whiteouts are
    character devices 0/0, an opaque directory carries trusted.overlay.opaque=y."""
    diff.mkdir(parents=True)
    os.chmod(diff, 0o755)
    for m in members:
        path = diff / m.name
        base = path.name
        if base == ".wh..wh..opq":
            os.setxattr(path.parent, "trusted.overlay.opaque", b"y")
            continue
        if base.startswith(".wh."):
            os.mknod(path.parent / base[4:], stat.S_IFCHR, os.makedev(0, 0))
            continue
        if m.kind == "dir":
            path.mkdir()
        elif m.kind == "file":
            path.write_bytes(m.data)
        elif m.kind == "symlink":
            path.symlink_to(m.linkname)
        elif m.kind == "hardlink":
            os.link(diff / m.linkname, path)
        elif m.kind == "fifo":
            os.mkfifo(path)
        else:
            os.mknod(path, stat.S_IFCHR, os.makedev(m.devmajor, m.devminor))
        os.chown(path, m.uid, m.gid, follow_symlinks=False)  # first: it clears setuid
        if m.kind != "symlink":
            os.chmod(path, m.mode)
        for key, value in m.xattrs.items():
            os.setxattr(path, key, value, follow_symlinks=False)
    for m in sorted(members, key=lambda m: m.name.count("/"), reverse=True):
        path = diff / m.name
        if not path.name.startswith(".wh."):
            t = int(round(m.mtime * 1e9))
            os.utime(path, ns=(t, t), follow_symlinks=False)


def test_overlay_merge_rules_match_the_tar_rules(tmp_path: Path) -> None:
    """Whiteouts, opaque directories, a file becoming a directory and back, hardlinks,
    setuid, devices, FIFOs, capabilities and other xattrs: the layer directories index
    to what the same layers' tars flatten to."""
    if os.geteuid() != 0:
        missing("device nodes and trusted.* xattrs need root")
    _materialize(LOWER, tmp_path / "l0" / "diff")
    _materialize(UPPER, tmp_path / "l1" / "diff")
    saved = flat_from_layers(tmp_path, layer(*LOWER), layer(*UPPER))
    overlay = OverlayImage(saved.source_digest, saved.config, b"",
                           [tmp_path / "l0" / "diff", tmp_path / "l1" / "diff"])
    in_place = index_in_place(saved.source_ref, overlay, tmp_path / "idx", DEFAULT)
    assert sorted(in_place.entries) == sorted(saved.entries)
    for path in saved.entries:
        assert _normalized(in_place, path) == _normalized(saved, path), path
    assert "/a/x" not in in_place.entries and "/b/old" not in in_place.entries
    assert in_place.entries["/c"].kind == "dir" and in_place.entries["/d"].kind == "file"
    assert in_place.hardlink_group("/h1") == ("/h1", "/h2")
    assert in_place.entries["/ping"].xattrs == {"security.capability": CAP}
    assert in_place.entries["/user"].xattrs == {"user.k": b"v"}
    assert all(_sha(in_place, p) == _sha(saved, p) for p, e in saved.entries.items()
               if e.kind == "file")
