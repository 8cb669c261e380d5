"""Where containers-storage (Podman's, Buildah's and CRI-O's image store) keeps an image,
checked, for the in-place reader (overlay.py).

Podman's `overlay` driver is Docker's overlay2 under another name: one directory per
layer (`ROOT/overlay/<layer id>/diff`), and a tar-split file per layer recording the
headers of the tar it was unpacked from (`ROOT/overlay-layers/<layer id>.tar-split.gz`,
the same vbatts/tar-split format Docker keeps). Only the bookkeeping differs: instead of
Docker's imagedb and layerdb directories, two JSON databases,

- `overlay-images/images.json`: per image its id, its top layer, and the names of its
  "big data" files; the config is the one named `sha256:<image id>`, stored as
  `overlay-images/<id>/=<base64 of that name>`;
- `overlay-layers/layers.json`: per layer its id, its parent and its `diff-digest` (the
  config's diff_id for it).

So `locate` walks from the image's top layer down its parents and checks each layer
against the config's diff_ids, bottom first, and each directory against what the engine
said in `GraphDriver.Data`, before anything is read in place. The config must hash to the
image id. Anything it cannot check (another driver, an image in an additional read-only
store, an ID-mapped layer whose owners are shifted, a layer still being written, a
database past its size cap) is NotReadable: `docker save` is used instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from tracer.budgets import Budgets
from tracer.image import documents as doc
from tracer.image.overlay import NotReadable, OverlayStorage, layer_dirs

DRIVER = "overlay"  # what GraphDriver.Name says of containers-storage's overlay driver
_MAX_DATABASE = 64 << 20  # bytes of images.json or layers.json read (the engine's own files)
_LAYER_ID = re.compile(r"^[0-9a-f]{64}$")  # every layer id names a directory


def _database(path: Path) -> list[Any]:
    """One of the store's JSON databases (a list of records), within _MAX_DATABASE."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > _MAX_DATABASE:
                raise NotReadable(f"{path} is over {_MAX_DATABASE >> 20} MiB")
            data = f.read(_MAX_DATABASE + 1)
    except OSError as exc:
        raise NotReadable(f"the engine's storage is not visible here ({exc.strerror}: "
                          f"{path}); is the engine remote or in another mount "
                          "namespace?") from None
    try:
        records = json.loads(data)
    except (ValueError, RecursionError):
        raise NotReadable(f"{path} is not the JSON list containers-storage writes") from None
    if not isinstance(records, list):
        raise NotReadable(f"{path} is not the JSON list containers-storage writes")
    return records


def _by_id(records: list[Any], what: str, ident: str, where: Path) -> dict[str, Any]:
    for record in records:
        if isinstance(record, dict) and record.get("id") == ident:
            return record
    raise NotReadable(f"{where} has no {what} {ident[:12]} (an additional image store?)")


def _config(root: Path, image_id: str, budgets: Budgets) -> bytes:
    key = image_id  # the config's big-data name is its digest
    name = "=" + base64.b64encode(key.encode()).decode()
    path = root / "overlay-images" / image_id[7:] / name
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            doc.check_size(size, f"image config {image_id}", budgets)
            return f.read(size + 1)
    except OSError as exc:
        raise NotReadable(f"the engine keeps no config file for the image "
                          f"({exc.strerror}: {path})") from None


def locate(image_id: str, driver: str, driver_data: dict[str, str], root_dir: str,
           budgets: Budgets) -> OverlayStorage:
    """The layer directories and tar-split files of `image_id` in the containers-storage
    store at `root_dir`, checked against its databases; NotReadable when they cannot be
    used."""
    dirs = layer_dirs(driver, DRIVER, driver_data, "in-place reading of containers-storage")
    root = Path(root_dir)
    images_db = root / "overlay-images" / "images.json"
    image = _by_id(_database(images_db), "image", image_id[7:], images_db)
    config_bytes = _config(root, image_id, budgets)
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != image_id:
        raise NotReadable(f"the config the store keeps for {image_id[:19]} does not hash "
                          "to it: not this engine's storage")
    where = f"image config {image_id}"
    config = doc.parse(config_bytes, where)
    diff_ids = doc.image_config(config, where, len(dirs), budgets)
    layers_db = root / "overlay-layers" / "layers.json"
    layers = _database(layers_db)
    chain: list[dict[str, Any]] = []
    layer_id = image.get("layer")
    while isinstance(layer_id, str) and layer_id and len(chain) <= len(diff_ids):
        layer = _by_id(layers, "layer", layer_id, layers_db)
        chain.append(layer)
        layer_id = layer.get("parent")
    chain.reverse()
    if len(chain) != len(diff_ids):
        raise NotReadable(f"the store's layers of the image are not its config's "
                          f"{len(diff_ids)} layers")
    splits = []
    for i, (layer, diff_id) in enumerate(zip(chain, diff_ids, strict=True)):
        ident = str(layer["id"])
        if not _LAYER_ID.match(ident):
            raise NotReadable(f"layer {i}: unexpected layer id {ident[:80]!r}")
        if layer.get("diff-digest") != diff_id:
            raise NotReadable(f"layer {i}: the store says {layer.get('diff-digest')}, the "
                              f"config {diff_id}")
        if layer.get("uidmap") or layer.get("gidmap"):
            raise NotReadable(f"layer {i}: stored with shifted owners (an ID-mapped layer)")
        if (layer.get("flags") or {}).get("incomplete"):
            raise NotReadable(f"layer {i}: the engine is still writing it")
        want = root / "overlay" / ident / "diff"
        if want != dirs[i] or not want.is_dir():
            raise NotReadable(f"layer {i}: the store names {want}, the image inspect "
                              f"{dirs[i]}")
        split = root / "overlay-layers" / f"{ident}.tar-split.gz"
        if not split.is_file():
            raise NotReadable(f"layer {i}: the engine keeps no record of its tar ({split})")
        splits.append(split)
    assert isinstance(config, dict)
    return OverlayStorage(image_id, config, config_bytes, diff_ids, dirs, splits)
