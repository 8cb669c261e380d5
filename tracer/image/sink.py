"""Write a flattened subset as an image that keeps the original config.

The subset is closed over its parents, turned into an `OutputImage` (output.py:
reproducible layers and config) and handed to the output's transport (transports.py),
which writes it atomically: a failure leaves any previous output as it was, and an output
that already holds exactly this image is not touched at all (`WrittenImage.unchanged`).
The image is one layer, or, on a fleet's shared base (sharedbase.py), that base and a
layer of its own above it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tracer.errors import BadInput
from tracer.image.daemon import EngineImages
from tracer.image.layerwrite import closed_paths
from tracer.image.model import FlatImage
from tracer.image.output import (
    LowerLayer,
    OneLayer,
    OutputImage,
    WrittenImage,
    output_created,
    provenance,
)
from tracer.image.reference import ImageRef
from tracer.image.sharedbase import SharedBase
from tracer.image.transports import transport


def one_layer(flat: FlatImage, keep: Iterable[str], *, comment: str,
              profile_hash: str | None = None, config: dict | None = None,
              base: SharedBase | None = None) -> OneLayer:
    """The image to write: the kept paths (plus parents) of `flat`, with `config` (default:
    the source's) dated like the input (or SOURCE_DATE_EPOCH), and a history entry whose
    created_by is `comment` and whose comment names tracer, the input and the profile.
    On `base`, the kept paths the base holds are left to it (SharedBase.place)."""
    config_base = config if config is not None else flat.config
    paths = closed_paths(flat, keep)
    lower: list[LowerLayer] = []
    whiteouts: list[str] = []
    if base is not None:
        placed = base.place(flat, paths)
        paths, whiteouts = placed.own, placed.whiteouts
        lower = [LowerLayer(base.plan(), base.created_by, base.comment)]
    return OutputImage(flat=flat, paths=paths, base_config=config_base, created_by=comment,
                       comment=provenance(flat.source_digest, profile_hash),
                       created=output_created(config_base), lower=lower, whiteouts=whiteouts)


def write_image(flat: FlatImage, keep: Iterable[str], out: ImageRef, *, workdir: Path,
                comment: str, config: dict | None = None, profile_hash: str | None = None,
                expect_id: str | None = None, base: SharedBase | None = None
                ) -> WrittenImage:
    """Write the kept paths (plus parents) of `flat` as a one-layer image at `out`.

    Hardlinks are written as hardlinks to the first kept name of their inode, so a group
    whose original target was not kept still gets its content once. `config` overrides
    the image config to carry (default: the source's). `expect_id`: refuse to write an
    image whose id differs (publishing must write exactly what was verified).
    """
    src = flat.source_ref
    if src is not None and out.same_place(src):
        raise BadInput(f"output {out} would overwrite the input image {src}")
    sink = transport(out)
    sink.check_output(out)
    image = one_layer(flat, keep, comment=comment, profile_hash=profile_hash, config=config,
                      base=base)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return sink.write(image, out, workdir, expect_id)


def publish(engine: EngineImages, candidate: ImageRef, out: ImageRef, flat: FlatImage,
            keep: list[str], work: Path, *, comment: str,
            profile_hash: str | None = None, base: SharedBase | None = None) -> WrittenImage:
    """Put the verified `candidate` (a temp image in the engine) under the output reference.

    The output is written from the same kept paths and config as the candidate, so it is
    the same image (same id): in the engine that is a tag move, no load; a file output is
    written anew and refused if its id differs from the candidate's. An output that
    already holds it is left as it was (`unchanged`).
    """
    return write_image(flat, keep, out, workdir=work / "output", comment=comment,
                       profile_hash=profile_hash, expect_id=engine.image_id(candidate),
                       base=base)
