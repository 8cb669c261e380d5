"""The one table of image transports: each reads and writes images of its kind.

A transport is one module (docker-daemon: daemon.py, docker-archive: archive.py, oci:
layout.py) behind the small interface below, the way go-containerregistry's `pkg/v1` has
`daemon/`, `tarball/` and `layout/` behind one `v1.Image`. Adding a format is one module
and one line here; nothing else branches on the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tracer.budgets import Budgets
from tracer.errors import BadInput
from tracer.image.archive import ArchiveTransport
from tracer.image.daemon import DaemonTransport
from tracer.image.layout import LayoutTransport
from tracer.image.model import FlatImage
from tracer.image.output import OneLayer, WrittenImage
from tracer.image.reference import ImageRef
from tracer.image.source import ImageSource


class Transport(Protocol):
    """Reading, writing and identifying images of one transport."""

    name: str

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> ImageSource:
        """The image at `ref` as config + layers; temp files go to `workdir`."""
        ...

    def read(self, ref: ImageRef, work: Path, budgets: Budgets,
             progress: Callable[[str], None] | None = None) -> tuple[FlatImage, str]:
        """The image at `ref` flattened (work files under `work`), and how it was read."""
        ...

    def check_output(self, ref: ImageRef) -> Any:
        """BadInput when `ref` cannot be written (before any work is done)."""
        ...

    def write(self, image: OneLayer, ref: ImageRef, workdir: Path,
              expect_id: str | None = None) -> WrittenImage:
        """Write `image` at `ref` atomically; leave `ref` as it is when it already holds
        exactly this image (`unchanged`); refuse an image whose id is not `expect_id`."""
        ...

    def engine_name(self, ref: ImageRef) -> str | None:
        """The name the Docker engine runs this image by, if it is an engine image."""
        ...

    def identity(self, ref: ImageRef) -> str:
        """A cheap identity of the image at `ref` ("missing" when there is none)."""
        ...

    def exists(self, ref: ImageRef) -> bool:
        ...


TRANSPORTS: dict[str, Transport] = {t.name: t for t in (
    DaemonTransport(), ArchiveTransport(), LayoutTransport())}


def transport(ref: ImageRef) -> Transport:
    found = TRANSPORTS.get(ref.transport)
    if found is None:
        raise BadInput(f"unsupported transport {ref.transport!r}")
    return found
