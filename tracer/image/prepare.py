"""An input image read, flattened and runnable: what every later stage of a run starts from.

The traced run needs the image in the engine; analysis needs the flattened index. An
engine image is both at once; any other input is flattened and then loaded into the
engine as a one-layer copy under a temporary tag (EngineImages removes it at the end).
A registry image is first copied by digest into the work dir (registry.py), so the time
it took is its own phase, `pull`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tracer.budgets import DEFAULT, Budgets
from tracer.image.config import ImageConfig
from tracer.image.daemon import EngineImages
from tracer.image.model import FlatImage
from tracer.image.platforms import of_config
from tracer.image.reference import ImageRef, parse_reference
from tracer.image.sink import write_image
from tracer.image.transports import flatten_image, open_image, transport
from tracer.progress import Progress
from tracer.rootfs import RootFS


@dataclass
class Prepared:
    """An image read and flattened, plus a reference the engine can run."""

    ref: ImageRef
    flat: FlatImage
    root: RootFS
    engine_ref: str
    config: ImageConfig  # the flattened image's run config, validated
    # the digest the input reference resolved to: a registry's index or manifest digest,
    # an archive's or layout's manifest digest, else the image id
    input_digest: str | None = None
    platform: str | None = None  # OS/ARCH[/VARIANT] of the image read (from its config)


def prepare(image: str | ImageRef, name: str, work: Path, engine: EngineImages,
            progress: Progress, seconds: dict[str, float], budgets: Budgets = DEFAULT
            ) -> Prepared:
    """Read and flatten `image`; make it runnable in the engine if it is not there.
    `seconds` gets the time spent copying it from a registry ("pull"), reading ("read")
    and loading ("load_input")."""
    ref = image if isinstance(image, ImageRef) else parse_reference(image)
    progress.phase(f"reading {ref}")
    t0 = time.monotonic()
    with open_image(ref, work / "source", budgets) as opened:
        pulled = getattr(opened, "pulled", None)  # only a registry's Image has it
        if pulled is not None:
            seconds["pull"] = seconds.get("pull", 0.0) + pulled.seconds
            progress.note(f"pulled {ref.name}@{pulled.manifest_digest}"
                          + (f" ({pulled.platform})" if pulled.platform else "")
                          + f": {pulled.layers} layers, {pulled.declared_bytes:,} bytes in "
                          f"{pulled.seconds:.1f}s")
        flat, how = flatten_image(opened, work / "root", budgets, progress)
        input_digest = pulled.input_digest if pulled is not None else \
            (opened.manifest_digest or opened.digest)
    seconds["read"] = seconds.get("read", 0.0) + time.monotonic() - t0 - \
        (pulled.seconds if pulled is not None else 0.0)
    progress.done(f"{len(flat.entries):,} paths, {flat.content_size():,} bytes; read by {how}")
    config = ImageConfig.from_image_json(flat.config, str(ref))
    engine_ref = transport(ref).engine_name(ref)
    if engine_ref is None:
        progress.phase(f"loading {ref} into the engine to run it")
        t0 = time.monotonic()
        tmp = engine.temp_ref(name, "input")
        write_image(flat, list(flat.entries), tmp, workdir=work / "load",
                    comment="tracer: one-layer copy of the input to run it")
        engine_ref = str(tmp.repo_tag)
        seconds["load_input"] = seconds.get("load_input", 0.0) + time.monotonic() - t0
        progress.done()
    platform = of_config(flat.config)
    return Prepared(ref=ref, flat=flat, root=flat.rootfs(budgets.path_walk),
                    engine_ref=engine_ref, config=config, input_digest=input_digest,
                    platform=str(platform) if platform else None)
