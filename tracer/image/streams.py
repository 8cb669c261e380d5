"""Layers stored as blobs (the `Layer` of interface.py for archives and layouts): a window
into an archive file, digest-checking readers and transparent decompression (gzip here,
zstd through the reference command: zstd.py). Every layer byte passes through exactly one
chunked pipeline, so digests are verified while the layer is applied, never by a second
pass.

The pipeline is also where decompression is bounded: a few kilobytes of gzip or zstd can
inflate to the size of the disk, so every layer stream counts what it hands out against
the run's Budgets (`expansion` times the blob's size on disk, at least `expansion_floor`;
`image_bytes` for all layers together) and refuses, naming the layer, the moment it is over.

A transport whose blobs are not files (a registry's HTTP bodies) builds `LayerStream`
over its own reader: one with a `size` attribute (the bytes it will hand out at most,
as `Region` has) gets the expansion budget of that size.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Callable
from typing import BinaryIO

from tracer.budgets import DEFAULT, BudgetExceeded, Budgets, human
from tracer.errors import ImageFormatError
from tracer.image.interface import InFile, Placement
from tracer.image.tarstream import STREAM_ERRORS
from tracer.image.zstd import ZstdReader

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


class Region:
    """Read-only window [offset, offset+size) of a file: a layer inside a docker-archive,
    read in place instead of extracting the outer tar first."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._f.seek(offset)
        self._left = size
        self.offset = offset
        self.size = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()


class HashingReader:
    """Pass-through reader that hashes and counts what it hands out."""

    def __init__(self, inner: BinaryIO | Region) -> None:
        self._inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()

    def close(self) -> None:
        self._inner.close()


def sniff_compression(head: bytes) -> str:
    """Name the compression from magic bytes; media types lie more often than magic does."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def stored_size(raw: BinaryIO | Region) -> int | None:
    """Bytes of the blob as stored: the window's size, or the open file's size on disk.

    Never the manifest's claim: a blob whose descriptor lies about its size would otherwise
    buy itself a larger decompression budget (the claim is checked, but only at the end).
    A reader that cannot hand out more than its `size` (a window, a capped body) has that.
    """
    size = getattr(raw, "size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    try:
        return os.fstat(raw.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return None


class LayerStream:
    """Decompressed tar stream of one layer that checks, once drained, the stored blob's
    digest/size and the uncompressed diff_id against what the manifest and config claim,
    and refuses (BudgetExceeded) as soon as it has handed out more than its budgets allow.

    `image_used` is what the image's earlier layers decompressed to: the `image_bytes`
    budget is for all of them together. `placement` is where the tar's bytes lie on disk,
    when they do uncompressed (interface.InFile), so the flattener can point into them.
    """

    def __init__(self, raw: BinaryIO | Region, where: str, *, compression: str,
                 blob_digest: str | None, blob_size: int | None, diff_id: str | None,
                 budgets: Budgets = DEFAULT, image_used: int = 0,
                 placement: Placement = None) -> None:
        self.where = where
        self.placement = placement if compression == "none" else None
        self._blob = raw
        self._stored = stored_size(raw)
        self._budgets = budgets
        self._image_left = budgets.image_bytes - image_used
        # what the blob may expand to: by decompression, and by the holes of sparse files
        self._expansion_limit = max(budgets.expansion * (self._stored or 0),
                                    budgets.expansion_floor)
        self._layer_limit: int | None = None
        if compression != "none":
            self._layer_limit = self._expansion_limit
        self._limit = min(self._image_left, self._layer_limit or self._image_left)
        self.holes = 0  # bytes the holes of sparse members add (no stream carries them)
        self._raw = HashingReader(raw)
        self._blob_digest = blob_digest
        self._blob_size = blob_size
        self._diff_id = diff_id
        inner: BinaryIO | HashingReader
        if compression == "gzip":
            inner = gzip.GzipFile(fileobj=self._raw, mode="rb")  # type: ignore[arg-type]
        elif compression == "zstd":
            inner = ZstdReader(self._raw, where)  # type: ignore[assignment]
        else:
            inner = self._raw
        self._inner = inner
        self._tar = HashingReader(inner) if compression != "none" else None
        self.compression = compression

    def read(self, n: int = -1) -> bytes:
        out = self._tar or self._raw
        data = out.read(n)
        if out.count + self.holes > self._limit:
            self._over_budget()
        return data

    @property
    def uncompressed(self) -> int:
        """Bytes of the layer's tar handed out so far."""
        return (self._tar or self._raw).count

    @property
    def expanded(self) -> int:
        """What the layer came to so far: its tar's bytes and its sparse files' holes."""
        return self.uncompressed + self.holes

    def add_holes(self, n: int, name: str) -> None:
        """Count the `n` bytes of holes of the sparse member `name`: they are part of what
        the layer expands to (an image, a keep-list's sizes and an output hold them), so
        the expansion budget covers them, compressed layer or not; a 10 KB tar naming a
        1 TB sparse file is a bomb like any other."""
        self.holes += n
        if self.expanded <= min(self._image_left, self._expansion_limit):
            return
        if self._image_left <= self._expansion_limit:
            self._over_budget()
        blob = f"its {self._stored:,}-byte blob" if self._stored is not None else "its blob"
        budget = "expansion" if self._expansion_limit > self._budgets.expansion_floor \
            else "expansion_floor"
        raise BudgetExceeded(
            budget, getattr(self._budgets, budget),
            f"{self.where}: with the holes of sparse file {name[:200]!r} it expands to more "
            f"than {human(self._expansion_limit)} from {blob} (a sparse-file bomb?)")

    def estimated_size(self) -> int:
        """What the whole uncompressed layer will probably come to (for "needed about N MB"
        when the disk fills up while it is spooled): gzip's trailer says it (modulo 4 GiB:
        the smallest size it allows that is not below what was already handed out; it is
        only a hint), else the compression ratio so far; never more than the budgets would
        let it reach."""
        done, raw = self.uncompressed, self._raw.count
        guess = done
        if self.compression == "gzip" and self._stored and self._stored >= 18:
            start = self._blob.offset if isinstance(self._blob, Region) else 0
            try:
                trailer = os.pread(self._blob.fileno(), 4, start + self._stored - 4)
                isize = int.from_bytes(trailer, "little")
                wraps = max(0, -(-(done - isize) // (1 << 32)))  # ceil, at least 0
                guess = isize + wraps * (1 << 32)
            except (OSError, AttributeError, ValueError):
                pass
        elif raw and self._stored and raw < self._stored:
            guess = max(guess, int(done * self._stored / raw))
        return min(guess, self._limit)

    def _over_budget(self) -> None:
        layer = self._layer_limit
        if layer is None or self._image_left <= layer:
            raise BudgetExceeded(
                "image_bytes", self._budgets.image_bytes,
                f"{self.where}: the image's layers decompress to more than "
                f"{human(self._budgets.image_bytes)} together")
        blob = f"its {self._stored:,}-byte blob" if self._stored is not None else "its blob"
        if self._stored is not None and layer > self._budgets.expansion_floor:
            raise BudgetExceeded(
                "expansion", self._budgets.expansion,
                f"{self.where}: decompresses to more than {self._budgets.expansion} times "
                f"{blob} (a compression bomb?)")
        raise BudgetExceeded(
            "expansion_floor", self._budgets.expansion_floor,
            f"{self.where}: decompresses to more than {human(layer)} from {blob} (a "
            "compression bomb?); a compressed layer may inflate to `expansion` times its "
            "size or to expansion_floor, whichever is larger")

    def finish(self) -> None:
        """Drain what the tar reader left (end padding, trailing bytes) and verify digests."""
        try:
            while self.read(_CHUNK):
                pass
            while self._raw.read(_CHUNK):
                pass
        except STREAM_ERRORS as exc:
            raise ImageFormatError(f"{self.where}: corrupt or truncated stream: {exc}") from exc
        if self._blob_size is not None and self._raw.count != self._blob_size:
            raise ImageFormatError(f"{self.where}: blob is {self._raw.count} bytes, the "
                                   f"manifest says {self._blob_size}")
        if self._blob_digest and self._raw.digest() != self._blob_digest:
            raise ImageFormatError(f"{self.where}: digest mismatch: blob hashes to "
                                   f"{self._raw.digest()}, the manifest says {self._blob_digest}")
        got = (self._tar or self._raw).digest()
        if self._diff_id and got != self._diff_id:
            raise ImageFormatError(f"{self.where}: digest mismatch: uncompressed layer hashes "
                                   f"to {got}, the config's diff_id is {self._diff_id}")

    def close(self) -> None:
        """Close the decompressor and the blob; the blob even when the decompressor fails."""
        try:
            if self._inner is not self._raw:
                self._inner.close()
        finally:
            self._raw.close()


class Layer:
    """A layer stored as a blob (interface.Layer): opens fresh streams of it, and holds
    what it must hash to."""

    def __init__(self, index: int, where: str, opener: Callable[[], BinaryIO | Region], *,
                 diff_id: str | None, blob_digest: str | None = None,
                 blob_size: int | None = None, media_type: str | None = None,
                 location: tuple[str, int] | None = None) -> None:
        self.index = index
        self.where = where
        self._opener = opener
        self.diff_id = diff_id
        self.blob_digest = blob_digest
        self.blob_size = blob_size
        self.media_type = media_type
        # (file, offset) where the blob's bytes lie on disk: an uncompressed blob's members
        # are then read in place, with no copy (see flatten).
        self.location = location

    def open_raw(self) -> BinaryIO | Region:
        """The blob exactly as stored (possibly compressed)."""
        try:
            return self._opener()
        except OSError as exc:
            raise ImageFormatError(f"{self.where}: cannot open blob: {exc}") from exc

    def open(self, budgets: Budgets = DEFAULT, image_used: int = 0) -> LayerStream:
        """A decompressed tar stream; call `finish()` after reading it to verify digests.

        The stream refuses to hand out more than `budgets` allow this layer, given that the
        image's earlier layers decompressed to `image_used` bytes.
        """
        head_f = self.open_raw()
        try:
            head = head_f.read(4)
        finally:
            head_f.close()
        raw = self.open_raw()
        try:
            return LayerStream(raw, self.where, compression=sniff_compression(head),
                               blob_digest=self.blob_digest, blob_size=self.blob_size,
                               diff_id=self.diff_id, budgets=budgets, image_used=image_used,
                               placement=InFile(*self.location) if self.location else None)
        except BaseException:
            raw.close()
            raise
