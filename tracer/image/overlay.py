"""An engine image read in place, from its overlay2 layer directories: an `Image`
(interface.py) whose layers are directories rather than tars.

`docker save` streams the whole image (5-11 s for a few hundred MB) only for tracer to
index it; the engine already holds every layer unpacked, one directory per layer, and it
keeps the headers of each layer's tar: its layer store records every layer it unpacks as
a tar-split file (`layerdb/sha256/<chain id>/tar-split.json.gz`), the tar's header bytes in
order with each file's data left out, from which `docker save` puts the very same tar
back together. As root next to a local engine with the overlay2 driver, this module
serves those headers as each layer's tar stream (`TarSplitStream`, placed `InDirectory`)
and the flattener applies them by the rules and budgets it applies to every image: the
index is the archive reader's by construction, entry for entry, and a file's bytes are
read later, when needed, from the file of that path in its layer's directory
(`GraphDriver.Data` of `docker image inspect`: LowerDir top-first, then UpperDir).
Nothing is copied and no file of the image is looked at while indexing.

The storage is the engine's, but checked before it is trusted: the image's config is read
from the engine's image database and must hash to the image id, and every layer directory
and tar-split file must be the ones the layer database names for that layer's chain id. A
file's bytes are opened below its layer directory without following any symlink and must
be a regular file of the size its header gave. Anything else, and any engine this cannot
see (another driver, the containerd image store, a remote engine, user namespace
remapping, not root), is a reason to fall back to `docker save`. Podman's store
(containers-storage) keeps the same directories and tar-split files under other
bookkeeping: containers_storage.py checks them and hands back the same OverlayStorage.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tracer.budgets import BudgetExceeded, Budgets, human
from tracer.errors import ImageFormatError
from tracer.image import documents as doc
from tracer.image.interface import InDirectory
from tracer.image.reference import ImageRef


class NotReadable(Exception):
    """This engine's storage cannot be read in place; the message says why."""


@dataclass(frozen=True)
class OverlayStorage:
    """Where the engine keeps an image: its layer directories and tar-split files (bottom
    first), and its config, verified against the image id."""

    image_id: str
    config: dict
    config_bytes: bytes
    diff_ids: list[str]
    layer_dirs: list[Path]
    tar_splits: list[Path]


def layer_dirs(driver: str, expected: str, driver_data: dict[str, str],
               reader: str) -> list[Path]:
    """An engine image's layer directories, bottom first, from its GraphDriver data (the
    engine's `driver` must be the `expected` overlay driver `reader` knows); NotReadable
    when tracer cannot read them in place."""
    if driver != expected:
        raise NotReadable(f"the image is stored by the {driver or 'unknown'!r} driver; "
                          f"{reader} knows {expected} only")
    if os.geteuid() != 0:
        raise NotReadable("not root: the engine's storage is readable by root only")
    upper = driver_data.get("UpperDir")
    if not upper:
        raise NotReadable("the engine names no layer directory for this image")
    lower = driver_data.get("LowerDir")
    dirs = [Path(p) for p in reversed(lower.split(":"))] if lower else []
    dirs.append(Path(upper))
    return dirs


def locate(image_id: str, driver: str, driver_data: dict[str, str], root_dir: str,
           budgets: Budgets) -> OverlayStorage:
    """The layer directories of `image_id`, checked against the engine's own databases;
    NotReadable when they cannot be used."""
    dirs = layer_dirs(driver, "overlay2", driver_data, "in-place reading")
    root = Path(root_dir)
    cfg_path = root / "image" / "overlay2" / "imagedb" / "content" / "sha256" / image_id[7:]
    try:
        with open(cfg_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            doc.check_size(size, f"image config {image_id}", budgets)
            config_bytes = f.read()
    except OSError as exc:
        raise NotReadable(f"the engine's image database is not visible here ({exc.strerror}"
                          f": {cfg_path}); is the engine remote or in another mount "
                          "namespace?") from None
    if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != image_id:
        raise NotReadable(f"{cfg_path} does not hash to {image_id}: not this engine's storage")
    where = f"image config {image_id}"
    config = doc.parse(config_bytes, where)
    diff_ids = doc.image_config(config, where, len(dirs), budgets)
    splits = []
    for i, chain in enumerate(doc.chain_ids(diff_ids)):
        layerdb = root / "image" / "overlay2" / "layerdb" / "sha256" / chain[7:]
        cache = layerdb / "cache-id"
        try:
            cache_id = cache.read_text().strip()
        except OSError as exc:
            raise NotReadable(f"layer {i}: {cache}: {exc.strerror}") from None
        want = root / "overlay2" / cache_id / "diff"
        if want != dirs[i] or not want.is_dir():
            raise NotReadable(f"layer {i}: the layer database names {want}, the image "
                              f"inspect {dirs[i]}")
        split = layerdb / "tar-split.json.gz"
        if not split.is_file():
            raise NotReadable(f"layer {i}: the engine keeps no record of its tar ({split})")
        splits.append(split)
    assert isinstance(config, dict)
    return OverlayStorage(image_id, config, config_bytes, diff_ids, dirs, splits)


_MAX_LINE = 4 << 20  # one tar-split record: a header run (PAX records at most 1 MiB) in base64
_BATCH = 2048  # records parsed at once


class TarSplitStream:
    """One layer's tar as its tar-split file records it, files' data left out.

    The file is gzipped JSON, one record a line: `{"type": 2, "payload": BASE64}` holds raw
    tar bytes (headers, PAX records, padding, the end blocks), `{"type": 1, "size": N}`
    stands where a member's N bytes of data were (written for every member, N omitted when
    0, the header's size field otherwise, even for a type that has no data). `read`
    serves the raw bytes and passes over data records; the tar reader `skip`s the data of
    a regular file right after its header, and the next record must stand for exactly
    that many bytes. The bytes the layer's tar had, data included, count against the
    image_bytes budget as the archive reader counts them.
    """

    def __init__(self, path: Path, where: str, budgets: Budgets, image_used: int,
                 directory: str) -> None:
        self.where = where
        self.placement = InDirectory(directory)
        self._budgets = budgets
        self._left = budgets.image_bytes - image_used
        try:
            self._gz = gzip.open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ImageFormatError(f"{where}: cannot open {path}: {exc}") from None
        self._records: list = []  # parsed, not yet used, last first
        self._buf = b""
        self._pos = 0
        self.uncompressed = 0  # bytes of the layer's tar so far, data included
        self.holes = 0  # bytes of holes of its sparse files so far
        self._holes_of = ""  # the first sparse file, for the message

    def _record(self) -> dict | None:
        if not self._records:
            self._records = self._batch()
            self._records.reverse()
            if not self._records:
                return None
        rec = self._records.pop()
        if not isinstance(rec, dict) or rec.get("type") not in (1, 2):
            raise ImageFormatError(f"{self.where}: malformed tar-split record "
                                   f"{str(rec)[:80]!r}")
        return rec

    def _batch(self) -> list:
        """The next records, parsed as one JSON array (one parse per record cost more than
        all the rest of indexing); at most _BATCH lines of at most _MAX_LINE bytes each."""
        lines = []
        size = 0
        try:
            while len(lines) < _BATCH and size < _MAX_LINE:
                line = self._gz.readline(_MAX_LINE)
                if not line:
                    break
                if not line.endswith(b"\n") and len(line) >= _MAX_LINE:
                    raise ImageFormatError(f"{self.where}: a tar-split record over "
                                           f"{human(_MAX_LINE)}")
                lines.append(line)
                size += len(line)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageFormatError(f"{self.where}: corrupt tar-split record: {exc}") from None
        if not lines:
            return []
        try:
            records = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError as exc:
            raise ImageFormatError(f"{self.where}: malformed tar-split record: {exc}") from None
        assert isinstance(records, list)
        return records

    def _count(self, n: int) -> None:
        self.uncompressed += n
        if self.uncompressed > self._left:
            raise BudgetExceeded("image_bytes", self._budgets.image_bytes,
                                 f"{self.where}: the image's layers hold more than "
                                 f"{human(self._budgets.image_bytes)} together")

    def _fill(self) -> bool:
        """Load the next raw bytes; False at the end. A data record met here is a member
        without data for the tar reader (a directory, link or device, whose header may
        still claim a size: the engine's tar reader read no data for it either)."""
        while True:
            rec = self._record()
            if rec is None:
                return False
            if rec["type"] == 1:
                self._size(rec)
                continue
            payload = rec.get("payload") or ""
            try:
                if not isinstance(payload, str):
                    raise binascii.Error("not a string")
                self._buf = base64.b64decode(payload, validate=True)
            except binascii.Error as exc:
                raise ImageFormatError(f"{self.where}: malformed tar-split payload: "
                                       f"{exc}") from None
            self._pos = 0
            self._count(len(self._buf))
            if self._buf:
                return True

    def _size(self, rec: dict) -> int:
        size = rec.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ImageFormatError(f"{self.where}: malformed tar-split file size {size!r}")
        return size

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        if 0 <= n <= len(self._buf) - pos:  # the common case: a header block at hand
            self._pos = pos + n
            return self._buf[pos:pos + n]
        out = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            if self._pos >= len(self._buf) and not self._fill():
                break
            chunk = self._buf[self._pos:self._pos + want]
            self._pos += len(chunk)
            want -= len(chunk)
            out.append(chunk)
        return b"".join(out)

    def skip(self, n: int) -> None:
        """Pass over the `n` bytes of data of the member whose header was just read: the
        next record must stand for exactly that."""
        rec = self._record() if self._pos >= len(self._buf) else None
        got = self._size(rec) if rec is not None and rec["type"] == 1 else None
        if got != n:
            raise ImageFormatError(f"{self.where}: tar-split does not match the tar: a header "
                                   f"says {n} bytes of data, the record "
                                   f"{'none' if got is None else got}")
        self._count(n)

    @property
    def expanded(self) -> int:
        return self.uncompressed + self.holes

    def add_holes(self, n: int, name: str) -> None:
        """Holes count as the archive reader counts them, where its blob is the layer's
        uncompressed tar (`docker save`): against expansion x the tar's size (at least
        expansion_floor) and image_bytes. Checked at `finish`, when the tar's size is
        known; nothing of them is materialized here meanwhile."""
        self.holes += n
        self._holes_of = self._holes_of or name

    def _check_holes(self) -> None:
        if not self.holes:
            return
        b = self._budgets
        expansion = max(b.expansion * self.uncompressed, b.expansion_floor)
        if self.expanded > self._left and self._left <= expansion:
            raise BudgetExceeded("image_bytes", b.image_bytes,
                                 f"{self.where}: the image's layers hold more than "
                                 f"{human(b.image_bytes)} together")
        if self.expanded > expansion:
            budget = "expansion" if expansion > b.expansion_floor else "expansion_floor"
            raise BudgetExceeded(
                budget, getattr(b, budget),
                f"{self.where}: with the holes of sparse file {self._holes_of[:200]!r} it "
                f"expands to more than {human(expansion)} from its {self.uncompressed:,}-byte "
                "tar (a sparse-file bomb?)")

    def estimated_size(self) -> int:
        return self.uncompressed  # never spooled: its files stay in the layer directory

    def finish(self) -> None:
        """What is left after the tar's end blocks may only be padding."""
        rest = self.read(1 << 20)
        while rest:
            if rest.strip(b"\0"):
                raise ImageFormatError(f"{self.where}: data after the end of the tar")
            rest = self.read(1 << 20)
        self._check_holes()

    def close(self) -> None:
        self._gz.close()


@dataclass(frozen=True)
class DirectoryLayer:
    """One layer as the engine holds it (interface.Layer): its directory, and its tar
    (headers only) from the tar-split file. The layer database tied both to the chain of
    diff_ids `locate` checked; there is no blob, so no blob digest or size."""

    index: int
    where: str
    directory: str
    tar_split: Path
    diff_id: str | None
    blob_digest: str | None = None
    blob_size: int | None = None
    media_type: str | None = None

    def open(self, budgets: Budgets, image_used: int = 0) -> TarSplitStream:
        return TarSplitStream(self.tar_split, self.where, budgets, image_used, self.directory)


@dataclass
class InPlaceImage:
    """An engine image read in place (interface.Image): nothing is opened until a layer
    is, so there is nothing to release; content stays in the engine's layer directories."""

    ref: ImageRef
    config: dict
    config_bytes: bytes
    digest: str
    layers: list[DirectoryLayer]
    reader: str = "the in-place reader (the engine's overlay2 layer directories)"
    manifest_digest: str | None = field(default=None)

    def __enter__(self) -> InPlaceImage:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def keep_file(self, path: str, dest_dir: Path) -> tuple[str, tuple[int, int]]:
        raise ValueError(f"{path}: an in-place image places its files in layer directories")

    def close(self) -> None:
        pass


def in_place_image(ref: ImageRef, storage: OverlayStorage, store: str = "overlay2"
                   ) -> InPlaceImage:
    """The Image of an engine image whose storage `locate` (or containers_storage.locate)
    found and checked; `store` names it in the run's log."""
    layers = [DirectoryLayer(i, f"{ref}: layer {i} (in place: {d})", os.fsdecode(d), split,
                             storage.diff_ids[i])
              for i, (d, split) in enumerate(zip(storage.layer_dirs, storage.tar_splits,
                                                  strict=True))]
    return InPlaceImage(ref, storage.config, storage.config_bytes, storage.image_id, layers,
                        f"the in-place reader (the engine's {store} layer directories)")
