"""An opened image: config plus layer handles, the way go-containerregistry's `v1.Image`
is one interface whatever the image came from.

Each transport (docker-daemon, docker-archive, oci: see transports.py) turns a reference
into an ImageSource; flattening and everything after it only ever sees this. The source
owns what it opened (descriptors of the input's files, temp files in the work dir) and
releases them on close.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tracer.budgets import DEFAULT, Budgets
from tracer.image.reference import ImageRef
from tracer.image.streams import Layer

if TYPE_CHECKING:
    from tracer.image.model import FlatImage


@dataclass
class ImageSource:
    """An opened image: its config, its layers bottom-first, and its config digest (the
    image id). `config` has been validated (documents.image_config)."""

    ref: ImageRef
    config: dict
    config_bytes: bytes
    digest: str
    layers: list[Layer]
    _cleanup: list[Path] = field(default_factory=list, repr=False)
    # descriptors of input files, named by /proc/self/fd/N in `layers`, and their names
    _held: dict[str, tuple[int, str]] = field(default_factory=dict, repr=False)

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

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

        A temp file of this source is hardlinked (copied across filesystems). An input file
        held open (/proc/self/fd/N) is named by the path the kernel has for it (no symlink
        on the way: the operator's name for an input may be one), with the identity of the
        descriptor its bytes were checked through. Nothing is copied, so the input must not
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
            if str(p) == name:
                new = Path(dest_dir) / p.name
                try:
                    os.link(p, new)
                except OSError:  # another filesystem: copy (slow, but correct)
                    shutil.copyfile(p, new)
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


def open_image(ref: ImageRef, workdir: Path, budgets: Budgets = DEFAULT) -> ImageSource:
    """Open `ref` for reading through its transport (see transports.py); raises BadInput,
    ImageFormatError (exit 2) or EnvironmentProblem (exit 4)."""
    from tracer.image.transports import transport

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return transport(ref).open(ref, workdir, budgets)


class FileTransport:
    """What the transports of image files (docker-archive:, oci:) share: they read by
    opening the file and flattening its layers, and no engine runs them by name."""

    name = ""

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> ImageSource:
        raise NotImplementedError

    def read(self, ref: ImageRef, work: Path, budgets: Budgets,
             progress: Callable[[str], None] | None = None) -> tuple[FlatImage, str]:
        """Open `ref` (temp files in `work/source`) and flatten its layers into `work/root`."""
        from tracer.image.flatten import flatten

        work = Path(work)
        (work / "source").mkdir(parents=True, exist_ok=True)
        with self.open(ref, work / "source", budgets) as source:
            return flatten(source, work / "root", progress=progress), f"the {ref.transport} reader"

    def engine_name(self, ref: ImageRef) -> str | None:
        return None

    def exists(self, ref: ImageRef) -> bool:
        return Path(ref.path or "").exists()
