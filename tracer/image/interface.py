"""The image interface every transport implements and everything after reading consumes.

Modelled on go-containerregistry's `pkg/v1`: one `Image` (config, identity, ordered
layers) and one `Layer` (digests, size, media type, opened as a stream), whatever the
image came from. A transport (transports.py) turns a reference into an `Image`; the
flattener (flatten.py) reads nothing else, so a new source of images is one adapter
around these two protocols and no change anywhere after it:

- docker-archive (archive.py) and oci (layout.py): layers are blob files, read in place
  (`source.ImageSource` with `streams.Layer`);
- docker-daemon (daemon.py): the engine's overlay2 layer directories read in place
  (overlay.py: each `Layer` is a directory plus the tar headers the engine kept), else a
  `docker save` read as a docker-archive;
- a registry (`docker://`, issue 24) plugs in as one more module whose layers stream blob
  bodies (capped at the descriptor's size, digest-checked by `streams.LayerStream`);
- a Podman engine (issue 25) is the docker-daemon transport over another engine client
  (tracer.engine), or containers-storage's overlay layers as another in-place `Image`.

A layer's bytes reach the flattener as a `TarStream`. Where a regular file's bytes can be
read again later (after the stream is closed) is the stream's `placement`: inside a file
on disk at a known offset (`InFile`: an uncompressed blob read in place), in a layer
directory the engine unpacked (`InDirectory`: the stream then serves the tar's headers
only), or nowhere (None: a compressed stream, which the flattener spools to its work dir).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from tracer.budgets import Budgets
from tracer.image.output import OneLayer, WrittenImage
from tracer.image.reference import ImageRef


@dataclass(frozen=True)
class InFile:
    """The tar's bytes lie uncompressed in file `path` from offset `base` on: a member's
    data is at `base` + its offset in the stream. `path` may name a descriptor the image
    holds (/proc/self/fd/N): `Image.keep_file` gives the name that outlives the image."""

    path: str
    base: int


@dataclass(frozen=True)
class InDirectory:
    """The layer lies unpacked in directory `root` (the engine's own copy): a regular
    file's bytes are the file of its path there, and the stream carries headers only."""

    root: str


Placement = InFile | InDirectory | None


class TarStream(Protocol):
    """One layer's uncompressed tar, read once from start to end.

    `read` hands out the tar; a stream placed `InDirectory` leaves the members' data out
    and has `skip(n)` to pass over it (tarstream.TarReader calls it). Every stream counts
    what it hands out against the run's Budgets and refuses (BudgetExceeded) the moment it
    is over; `finish` drains what the tar reader left and verifies digests; `close` frees
    what it holds (a decompressor process, descriptors) and may be called after an error.
    """

    placement: Placement

    def read(self, n: int = -1) -> bytes: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...

    @property
    def uncompressed(self) -> int:
        """Bytes of the layer's tar handed out (or passed over) so far."""
        ...

    @property
    def expanded(self) -> int:
        """What the layer came to: its tar's bytes and the holes of its sparse files."""
        ...

    def add_holes(self, n: int, name: str) -> None:
        """Count the `n` bytes of holes of sparse member `name` (tarstream.TarReader calls
        it): they are part of what the layer expands to, within the same budgets."""
        ...

    def estimated_size(self) -> int:
        """About how big the whole uncompressed tar is (for "needed about N MB")."""
        ...


class Layer(Protocol):
    """One layer of an Image, bottom first (go-containerregistry's `v1.Layer`)."""

    index: int  # position in the image, 0 = bottom
    where: str  # how messages name it: "docker-archive x.tar: layer 2 (blobs/sha256/...)"
    diff_id: str | None  # sha256 of the uncompressed tar (the config's rootfs.diff_ids)
    blob_digest: str | None  # sha256 of the blob as stored (None: no blob, e.g. a directory)
    blob_size: int | None  # bytes of the blob as stored, when known
    media_type: str | None  # as the manifest says (compression is sniffed, not believed)

    def open(self, budgets: Budgets, image_used: int = 0) -> TarStream:
        """A fresh stream of the layer's tar. `image_used`: bytes the image's lower layers
        came to, so the stream can keep all of them within `budgets.image_bytes`."""
        ...


class Image(Protocol):
    """An opened image: config, identity and layers (go-containerregistry's `v1.Image`).

    It owns what it opened (descriptors of input files, temp files in the work dir) and
    releases them on `close` (also as a context manager); `keep_file` gives the file a
    flattened index reads content from after that.
    """

    ref: ImageRef
    config: dict  # the image config, validated (documents.image_config)
    config_bytes: bytes
    digest: str  # the config's digest: the image id
    manifest_digest: str | None  # the manifest's digest, where the transport has one
    reader: str  # how it is read, said in the run's log ("the in-place reader (...)")

    @property
    def layers(self) -> Sequence[Layer]:
        """The layers, bottom first."""
        ...

    def keep_file(self, path: str, dest_dir: Path) -> tuple[str, tuple[int, int]]:
        """A name for `path` (an `InFile.path` of a layer) that outlives this image, and
        the (st_dev, st_ino) the bytes were checked through."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Image: ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Transport(Protocol):
    """Opening, writing and identifying the images of one skopeo transport name.

    Reading is always `open` then flatten (transports.read_image): a transport never
    builds a FlatImage itself, so every reader is held to the same rules and budgets.
    Registered in transports.TRANSPORTS under `name`.
    """

    name: str  # the skopeo transport name: "docker-daemon", "docker-archive", "oci", ...

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> Image:
        """The image at `ref`; temp files (a saved archive, a decompressed one) go to
        `workdir`. BadInput / ImageFormatError (exit 2), EnvironmentProblem (exit 4)."""
        ...

    def check_output(self, ref: ImageRef) -> Any:
        """BadInput when `ref` cannot be written (said before any work is done)."""
        ...

    def write(self, image: OneLayer, ref: ImageRef, workdir: Path,
              expect_id: str | None = None) -> WrittenImage:
        """Write `image` at `ref` atomically; leave `ref` as it is when it already holds
        exactly this image (`unchanged`); refuse an image whose id is not `expect_id`."""
        ...

    def engine_name(self, ref: ImageRef) -> str | None:
        """The name the engine runs this image by, if the engine holds it (else the run
        loads a one-layer copy under a temporary tag)."""
        ...

    def identity(self, ref: ImageRef) -> str:
        """A cheap identity of the image at `ref` ("missing" when there is none): what
        `tracer batch` compares to skip unchanged inputs."""
        ...

    def exists(self, ref: ImageRef) -> bool: ...


Progress = Callable[[str], None]
