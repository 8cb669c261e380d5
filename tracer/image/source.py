"""The `Image` (interface.py) of images whose layers are blob files: a docker-archive, an
OCI layout, an engine image saved with `docker save`.

`ImageSource` is config plus `streams.Layer` handles; it owns what it opened (descriptors
of the input's files, temp files in the work dir) and releases them on close.
`FileTransport` is what the transports of image files (docker-archive:, oci:) share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tracer.budgets import Budgets
from tracer.image.reference import ImageRef
from tracer.image.streams import Layer


@dataclass
class ImageSource:
    """An opened image of blob layers (interface.Image): its config, its layers
    bottom-first, and its config digest (the image id). `config` has been validated
    (documents.image_config)."""

    ref: ImageRef
    config: dict
    config_bytes: bytes
    digest: str
    layers: list[Layer]
    _cleanup: list[Path] = field(default_factory=list, repr=False)
    # descriptors of input files, named by /proc/self/fd/N in `layers`, and their names
    _held: dict[str, tuple[int, str]] = field(default_factory=dict, repr=False)
    reader: str = ""  # how it is read (default: "the <transport> reader")
    manifest_digest: str | None = None
    # a remote image copied into the work dir first: how (registry.Pulled), for the report
    pulled: Any = None

    def __post_init__(self) -> None:
        if not self.reader:
            self.reader = f"the {self.ref.transport} reader"

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def own(self, path: Path) -> None:
        """Remove `path` (a temp file or directory of this source's) on close."""
        self._cleanup.append(path)

    def hold(self, fd: int, name: str) -> str:
        """Keep `fd` (an input file opened without following links) open until close;
        return the path that names exactly it."""
        path = f"/proc/self/fd/{fd}"
        self._held[path] = (fd, name)
        return path

    def keep_file(self, path: str, dest_dir: Path) -> tuple[str, tuple[int, int]]:
        """A name for `path` in `dest_dir` that outlives this source, and the identity
        (st_dev, st_ino) the file has: a flattened image reads file content from layer data
        in place, after the source is closed, and checks it opens that very file.

        A temp file of this source (or a file in a temp directory of it) is hardlinked
        (copied across filesystems). An input file held open (/proc/self/fd/N) is named by
        the path the kernel has for it (no symlink on the way: the operator's name for an
        input may be one), with the identity of the descriptor its bytes were checked
        through. Nothing is copied, so the input must not
        change while the flattened image is in use (an input read in place always has that
        condition). Other paths (spooled layers in `dest_dir`) are returned as they are."""
        held = self._held.get(path)
        identity: tuple[int, int] | None = None
        if held is not None:
            st = os.fstat(held[0])
            identity = (st.st_dev, st.st_ino)
            name = held[1]
            path = os.readlink(path)
        else:
            name = path
        for p in self._cleanup:
            # a temp file of this source, or a file in a temp directory of it (a layout
            # pulled from a registry into the work dir)
            if str(p) == name or Path(name).is_relative_to(p):
                new = Path(dest_dir) / Path(name).name
                try:
                    os.link(name, new)
                except OSError:  # another filesystem: copy (slow, but correct)
                    shutil.copyfile(name, new)
                path, identity = str(new), None
                break
        if identity is None:
            st = os.stat(path, follow_symlinks=False)  # a file of tracer's own work dir
            identity = (st.st_dev, st.st_ino)
        return path, identity

    def close(self) -> None:
        """Close held input files and remove temp files this source made (never the
        input); never raises, so it cannot hide the error that made a caller close."""
        for fd, _ in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()
        for p in self._cleanup:
            with contextlib.suppress(OSError):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        self._cleanup.clear()


class FileTransport:
    """What the transports of image files (docker-archive:, oci:) share: no engine runs
    their images by name, and an image exists when its file does."""

    name = ""

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> ImageSource:
        raise NotImplementedError

    def engine_name(self, ref: ImageRef) -> str | None:
        return None

    def exists(self, ref: ImageRef) -> bool:
        return Path(ref.path or "").exists()
