"""The one table of image transports, keyed by skopeo transport name, and the two ways in.

A transport is one module behind interface.Transport, the way go-containerregistry's
`pkg/v1` has `daemon/`, `tarball/`, `layout/` and `remote/` behind one `v1.Image`:

    docker-daemon   daemon.py    the engine's store (in place, else `docker save`)
    docker-archive  archive.py   a `docker save` tar
    oci             layout.py    an OCI image layout directory
    docker          registry.py  a registry, through skopeo (no daemon)

Adding one is a module implementing
interface.Transport, one entry in TRANSPORTS (or `register()` from that module) and its
reference syntax in reference.py; nothing else branches on the transport. A Podman
engine (issue 25) needs no entry of its own: it is the docker-daemon transport over the
engine client tracer.engine hands out.

Reading is `read_image`: the transport opens an Image, the flattener indexes it. No
transport flattens on its own, so every reader applies the same rules and the same
budgets (a budget applied by one reader and not its twin is a hole).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput
from tracer.image.archive import ArchiveTransport
from tracer.image.daemon import DaemonTransport
from tracer.image.flatten import flatten
from tracer.image.interface import Image, Transport
from tracer.image.layercache import find_seed
from tracer.image.layout import LayoutTransport
from tracer.image.model import FlatImage
from tracer.image.reference import ImageRef
from tracer.image.registry import RegistryTransport

TRANSPORTS: dict[str, Transport] = {t.name: t for t in (
    DaemonTransport(), ArchiveTransport(), LayoutTransport(), RegistryTransport())}


def register(t: Transport) -> None:
    """Add a transport under its skopeo name (one name, one transport)."""
    if t.name in TRANSPORTS and TRANSPORTS[t.name] is not t:
        raise ValueError(f"transport {t.name!r} is registered already")
    TRANSPORTS[t.name] = t


def transport(ref: ImageRef) -> Transport:
    found = TRANSPORTS.get(ref.transport)
    if found is None:
        raise BadInput(f"unsupported transport {ref.transport!r}")
    return found


def open_image(ref: ImageRef, workdir: Path, budgets: Budgets = DEFAULT) -> Image:
    """Open `ref` through its transport (temp files in `workdir`); raises BadInput,
    ImageFormatError (exit 2) or EnvironmentProblem (exit 4). Close it when done (it is a
    context manager)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return transport(ref).open(ref, workdir, budgets)


def read_image(ref: ImageRef, work: Path, budgets: Budgets = DEFAULT,
               progress: Callable[[str], None] | None = None) -> tuple[FlatImage, str]:
    """`ref` flattened under `budgets` (the image's temp files in `work/source`, the
    index's in `work/root`), and how it was read (for the run's log). Its lowest layers
    come from a batch's index of them when there is one (layercache.find_seed)."""
    work = Path(work)
    with open_image(ref, work / "source", budgets) as image:
        return flatten_image(image, work / "root", budgets, progress)


def flatten_image(image: Image, dest: Path, budgets: Budgets = DEFAULT,
                  progress: Callable[[str], None] | None = None) -> tuple[FlatImage, str]:
    """An opened `image` flattened into `dest`, and how it was read. Its lowest layers come
    from a batch's index of them when there is one (layercache.find_seed): a fleet's jobs
    read only their own layers on top."""
    seed = find_seed(image.layers)
    how = image.reader if seed is None else \
        f"{image.reader}, its lowest {len(seed.diff_ids)} layer(s) indexed once for the batch"
    return flatten(image, dest, progress=progress, budgets=budgets, seed=seed), how
