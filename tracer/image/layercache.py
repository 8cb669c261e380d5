"""Layers indexed once for a whole batch: the flattened lowest layers of a fleet.

Twenty images built on one base share its layers byte for byte (same diff_ids). `tracer
batch --share-base` flattens those shared layers once (sharedbase.index_prefix) and leaves the
index in its private work dir as a `Seed`; every job on that base then indexes only its
own layers on top of it (flatten.py starts from the seed), and the fleet's shared base
layer is written from the same index. A seed is keyed by the layers' OCI chain id, so it
only ever stands for exactly those layers, bottom first, and the jobs find it through
the TRACER_LAYER_CACHE directory the batch hands them (`find_seed`). Seeds are made by
sharedbase.index_prefix.

What a seed's index reads file content from must outlive the jobs: the engine's own
layer directories (read in place), or a hardlink to the saved or input archive kept in
the seed's own directory, which the batch removes at its end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer import statefile
from tracer.errors import BadInput
from tracer.image.documents import chain_ids
from tracer.image.interface import Layer
from tracer.image.model import FlatImage

CACHE_ENV = "TRACER_LAYER_CACHE"  # a batch's private directory of seeds
SEED_FILE = "seed.pickle"


@dataclass
class Seed:
    """The flattened index of an image's lowest layers (`diff_ids`, bottom first), and how
    many bytes those layers came to (counted against the image_bytes budget of every image
    that starts from it)."""

    diff_ids: list[str]
    flat: FlatImage
    expanded: int

    @property
    def chain_id(self) -> str:
        return chain_ids(self.diff_ids)[-1]

    def matches(self, layers: Sequence[Layer]) -> bool:
        """Do `layers` start with exactly this seed's layers?"""
        return len(layers) >= len(self.diff_ids) and all(
            layer.diff_id == d for layer, d in zip(layers, self.diff_ids, strict=False))


def seed_dir(cache: Path, diff_ids: Sequence[str]) -> Path:
    """Where the seed of exactly these layers lives in `cache`."""
    return cache / chain_ids(diff_ids)[-1].replace(":", "-")


_LOADED: dict[tuple[str, int, int], Seed] = {}  # a process reads each seed file once


def load_seed(path: Path) -> Seed:
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_mtime_ns)
    seed = _LOADED.get(key)
    if seed is None:
        seed = statefile.load(path)
        if not isinstance(seed, Seed):
            raise BadInput(f"{path}: not a seed of flattened layers")
        _LOADED[key] = seed
    return seed


def find_seed(layers: Sequence[Layer], environ: Any = os.environ) -> Seed | None:
    """The seed of the longest run of `layers`' lowest layers the batch's cache holds
    (TRACER_LAYER_CACHE), or None: without a cache, or when none of it matches."""
    return find_seed_ids([x.diff_id for x in layers], environ)


def find_seed_ids(diff_ids: Sequence[str | None], environ: Any = os.environ) -> Seed | None:
    """`find_seed` for an image whose layers' digests are `diff_ids`, bottom first."""
    cache = environ.get(CACHE_ENV, "").strip()
    if not cache:
        return None
    known: list[str] = []
    for d in diff_ids:
        if d is None:
            break
        known.append(d)
    for n in range(len(known), 0, -1):
        path = seed_dir(Path(cache), known[:n]) / SEED_FILE
        if path.is_file():
            seed = load_seed(path)
            if seed.diff_ids == known[:n]:
                return seed
    return None
