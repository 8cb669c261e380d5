"""A Docker engine's overlay2 storage made by hand (a helper module for the tests, not a
test module): the image database, the layer database with each layer's tar-split record,
and the layer directories, as the engine lays them out; and the in-place reader over it.
Also Podman's (containers-storage): the same directories and tar-split records under its
images.json and layers.json.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from image_builders import M, layer

from tracer.budgets import DEFAULT, Budgets
from tracer.image.flatten import flatten
from tracer.image.model import FlatImage
from tracer.image.overlay import OverlayStorage, in_place_image, locate
from tracer.image.reference import ImageRef, parse_reference


def sha_of(flat: FlatImage, path: str) -> str:
    h = hashlib.sha256()
    with flat.open_content(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_same_index(in_place: FlatImage, saved: FlatImage) -> None:
    """Entry for entry, every field; the same hardlink groups; the same bytes."""
    assert list(in_place.entries) == list(saved.entries)
    differences = [(p, in_place.entries[p], e) for p, e in saved.entries.items()
                   if in_place.entries[p] != e]
    assert differences == []
    assert {p: in_place.hardlink_group(p) for p in in_place.entries} == \
        {p: saved.hardlink_group(p) for p in saved.entries}
    files = [p for p, e in saved.entries.items() if e.kind == "file"]
    assert files and all(sha_of(in_place, p) == sha_of(saved, p) for p in files)
    assert in_place.config == saved.config and in_place.source_digest == saved.source_digest


def index_in_place(ref: ImageRef, storage: OverlayStorage, dest: Path,
                   budgets: Budgets = DEFAULT) -> FlatImage:
    """The in-place Image of `storage`, flattened as every Image is."""
    with in_place_image(ref, storage) as image:
        return flatten(image, dest, budgets=budgets)


def tar_split(tar: bytes) -> bytes:
    """The tar-split record of `tar`, as the engine's layer store writes it (gzipped JSON
    lines: raw bytes as type 2, each member's data as a type 1 entry of its size)."""
    lines = []
    pos = 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for ti in tf:
            lines.append({"type": 2, "payload": base64.b64encode(
                tar[pos:ti.offset_data]).decode()})
            entry: dict = {"type": 1, "name": ti.name}
            if ti.size:  # the header's claim, also for a type without data
                entry["size"] = ti.size
            lines.append(entry)
            pos = ti.offset_data + (ti.size if ti.isreg() else 0)
    lines.append({"type": 2, "payload": base64.b64encode(tar[pos:]).decode()})
    for i, line in enumerate(lines):
        line["position"] = i
    return gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in lines))


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
         M("s", "symlink", linkname="a/y", mode=0o644), M("big", data=bytes(70_000))]
UPPER = [M("a", "dir", mode=0o750, uid=3, gid=4, mtime=1_600_000_020), M("a/.wh.x"),
         M("b/.wh..wh..opq"), M("b/new", data=b"new"),
         M("c", "dir", mode=0o700, mtime=1_600_000_022), M("c/inner", data=b"i"),
         M("d", data=b"d is a file now"), M("user", data=b"u", xattrs={"user.k": b"v"}),
         M("e/implied/f", data=b"f"), M("n" * 120, data=b"long name"),
         M("k2", data=b"K"), M("k1", "hardlink", linkname="k2"), M("k2", data=b"new k2")]


def make_storage(tmp_path: Path, config: bytes, layers: list[bytes]) -> tuple[str, dict, str]:
    """A hand-made engine storage directory: image db, layer db and layer dirs."""
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    root = tmp_path / "docker"
    imagedb = root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    imagedb.mkdir(parents=True)
    (imagedb / image_id[7:]).write_bytes(config)
    dirs = []
    chain = ""
    for i, data in enumerate(layers):
        diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        chain = diff_id if i == 0 else \
            "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        layerdb = root / "image" / "overlay2" / "layerdb" / "sha256" / chain[7:]
        layerdb.mkdir(parents=True)
        (layerdb / "cache-id").write_text(f"cache{i}")
        (layerdb / "tar-split.json.gz").write_bytes(tar_split(data))
        (root / "overlay2" / f"cache{i}" / "diff").mkdir(parents=True)
        dirs.append(str(root / "overlay2" / f"cache{i}" / "diff"))
    data = {"UpperDir": dirs[-1]}
    if len(dirs) > 1:
        data["LowerDir"] = ":".join(reversed(dirs[:-1]))
    return image_id, data, str(root)


def make_containers_storage(tmp_path: Path, config: bytes, layers: list[bytes]
                            ) -> tuple[str, dict, str]:
    """A hand-made containers-storage root as Podman lays it out: overlay-images/images.json
    and the config as a big-data file, overlay-layers/layers.json with a tar-split file per
    layer, overlay/<layer id>/diff."""
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    root = tmp_path / "containers"
    images = root / "overlay-images"
    (images / image_id[7:]).mkdir(parents=True)
    name = "=" + base64.b64encode(image_id.encode()).decode()
    (images / image_id[7:] / name).write_bytes(config)
    (root / "overlay-layers").mkdir(parents=True)
    records, dirs, parent = [], [], ""
    for data in layers:
        diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        ident = hashlib.sha256(f"{parent}+{diff_id}".encode()).hexdigest()
        record = {"id": ident, "diff-digest": diff_id, "diff-size": len(data)}
        if parent:
            record["parent"] = parent
        records.append(record)
        (root / "overlay-layers" / f"{ident}.tar-split.gz").write_bytes(tar_split(data))
        (root / "overlay" / ident / "diff").mkdir(parents=True)
        dirs.append(str(root / "overlay" / ident / "diff"))
        parent = ident
    (root / "overlay-layers" / "layers.json").write_text(json.dumps(records))
    (images / "images.json").write_text(json.dumps(
        [{"id": "0" * 64, "layer": "f" * 64},  # another image, whose layer is not here
         {"id": image_id[7:], "layer": parent, "names": ["localhost/hand/made:1"]}]))
    data = {"UpperDir": dirs[-1]}
    if len(dirs) > 1:
        data["LowerDir"] = ":".join(reversed(dirs[:-1]))
    return image_id, data, str(root)


def storage_config(layers: list[bytes], extra: dict | None = None) -> bytes:
    """A minimal image config for `layers`, with `extra` top-level fields."""
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids},
                       **(extra or {})}).encode()


def unpack_layer(members: list[M], diff: Path) -> None:
    """The files of a layer directory, where the engine unpacks them (the index says the
    rest: owners, modes, devices are not read from here)."""
    diff.mkdir(parents=True, exist_ok=True)
    for m in members:
        path = diff / m.name
        if m.kind == "file":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_bytes(m.data)
        elif m.kind == "hardlink":
            os.link(diff / m.linkname, path)


def read_in_place(tmp_path: Path, layers: list[list[M]], budgets: Budgets = DEFAULT,
                  config_extra: dict | None = None) -> FlatImage:
    """`layers` as the engine would store them, read by the in-place reader."""
    tars = [layer(*ms) for ms in layers]
    image_id, data, root = make_storage(tmp_path, storage_config(tars, config_extra), tars)
    located = locate(image_id, "overlay2", data, root, budgets)
    for ms, diff in zip(layers, located.layer_dirs, strict=True):
        unpack_layer(ms, diff)
    return index_in_place(parse_reference("docker-daemon:hand/made:1"), located,
                          tmp_path / "idx", budgets)
