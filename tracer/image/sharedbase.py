"""A fleet's shared base: one minimized layer under many minimized images.

Images built on one base share its layers (same diff_ids); minimizing each into one layer
of its own repeats libc, the loader and the CA bundle in every output. With `tracer batch
--share-base`, the outputs of a fleet (its jobs whose inputs start with the same layers)
stand on one base layer instead: the union of what every job keeps of those lowest
layers, written from one index of them (`index_prefix`), so it is byte for byte the same
layer (same digest) under every output, whatever the order of the jobs, the host or its
time zone. Above it, each image's own layer holds the rest of what it keeps.

How an image's kept paths lie on the base (`SharedBase.place`):
- a kept path goes into the base when the image has it exactly as the lowest layers
  alone give it (`needs`): written by one of those layers, with the same metadata (a
  later layer that rewrote it, or changed its inode through a hardlink, makes it the
  image's own);
- everything else it keeps is its own layer, closed over its parent directories;
- what the base holds and the image keeps not, it still shows: the price of sharing
  (`extra`, reported per image). Where the image's own original has no such path, or
  another one (a later layer deleted or replaced it), its own layer whites it out, so
  the image never shows a file its original did not have. Directories both have are
  never whited out (their contents are judged one by one); where a later layer changed
  one's owner or mode, its own layer carries the directory as its original has it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tracer import statefile
from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput
from tracer.image.flatten import flatten
from tracer.image.interface import Image, Layer
from tracer.image.layercache import SEED_FILE, Seed
from tracer.image.layerwrite import LayerPlan, closed_paths
from tracer.image.model import Entry, FlatImage
from tracer.image.reference import ImageRef


def same_entry(a: Entry, b: Entry) -> bool:
    """Would `a` and `b` be written alike (every field a layer header carries)?"""
    return (a.kind, a.mode, a.uid, a.gid, a.mtime, a.size, a.linkname, a.xattrs,
            a.devmajor, a.devminor) == (b.kind, b.mode, b.uid, b.gid, b.mtime, b.size,
                                        b.linkname, b.xattrs, b.devmajor, b.devminor)


def from_base(flat: FlatImage, base: FlatImage, depth: int, path: str) -> bool:
    """Does image `flat` have `path` exactly as its lowest `depth` layers (`base`) give
    it: written by one of them and unchanged since?"""
    mine, theirs = flat.entries.get(path), base.entries.get(path)
    return mine is not None and theirs is not None and mine.layer < depth \
        and same_entry(mine, theirs)


def needs(flat: FlatImage, keep: Iterable[str], base: FlatImage, depth: int) -> list[str]:
    """The kept paths (closed over their parents) the shared base can hold for `flat`."""
    return [p for p in closed_paths(flat, keep) if from_base(flat, base, depth, p)]


@dataclass
class OnBase:
    """How one image lies on a shared base: its own layer's paths and whiteouts, and what
    of the base it shows without keeping it (the price of sharing)."""

    own: list[str]
    whiteouts: list[str]
    extra: list[str]
    extra_bytes: int
    in_base: int  # of its kept paths, how many the base holds


@dataclass
class SharedBase:
    """The base layer of a fleet: `paths` (closed over parents) of the index `flat` of
    the lowest `depth` layers, which must come to `diff_id` when it is known."""

    flat: FlatImage
    depth: int
    paths: list[str]
    diff_id: str | None = None
    created_by: str = ""
    comment: str = ""
    fleet: str = ""  # the fleet's name, and its base descriptor (for reports)
    descriptor: str = ""
    _plan: LayerPlan | None = field(default=None, repr=False)

    def plan(self) -> LayerPlan:
        if self._plan is None:
            self._plan = LayerPlan(self.flat, self.paths, expect_diff_id=self.diff_id)
        return self._plan

    def place(self, flat: FlatImage, keep: Iterable[str]) -> OnBase:
        """Split `flat`'s kept paths into the base's and its own layer (module doc)."""
        kept = set(closed_paths(flat, keep))
        base_entries = self.flat.entries
        in_base = {p for p in kept if p in base_entries and
                   from_base(flat, self.flat, self.depth, p)}
        base_set = set(self.paths)
        missing = sorted(in_base - base_set)
        if missing:
            raise BadInput(f"the shared base lacks {len(missing)} path(s) this image keeps "
                           f"from it, e.g. {missing[0]!r}: it was made for other jobs")
        own = kept - in_base
        whiteouts: list[str] = []
        extra: list[str] = []
        covered: set[str] = set()  # base directories hidden whole (a whiteout, a non-dir)
        restored: set[str] = set()  # directories shown with the image's own metadata
        for p in self.paths:  # sorted: a directory comes before what is in it
            if covered and _under(p, covered):
                continue
            base_e = base_entries[p]
            mine = flat.entries.get(p)
            if p in in_base:
                continue
            if p in own:
                if base_e.kind == "dir" and mine is not None and mine.kind != "dir":
                    covered.add(p)  # its own non-directory hides the base's tree
                continue
            if mine is not None and mine.kind == "dir" and base_e.kind == "dir":
                # both directories: shown, with its own owner and mode where a later layer
                # changed them; what is in it is judged one by one
                extra.append(p)
                if not from_base(flat, self.flat, self.depth, p):
                    restored.add(p)
                continue
            if mine is not None and from_base(flat, self.flat, self.depth, p):
                extra.append(p)
                continue
            whiteouts.append(p)  # the original has none, or another: hide the base's
            if base_e.kind == "dir":
                covered.add(p)
        parents = {p.rsplit("/", 1)[0] for p in whiteouts} - {""}
        own_paths = closed_paths(flat, own | parents | restored)
        extra_bytes = sum(base_entries[p].size for p in extra
                          if base_entries[p].kind == "file")
        return OnBase(own_paths, whiteouts, extra, extra_bytes, len(in_base))


def _under(path: str, dirs: set[str]) -> bool:
    """Is `path` inside one of `dirs`?"""
    while True:
        path = path.rsplit("/", 1)[0]
        if not path:
            return False
        if path in dirs:
            return True


def index_prefix(image: Image, depth: int, dest: Path, budgets: Budgets = DEFAULT) -> Seed:
    """Flatten the lowest `depth` layers of `image` into the new directory `dest` (which
    then holds what the index reads from) and save them there as a seed
    (layercache.find_seed finds it)."""
    layers = image.layers
    if not 0 < depth <= len(layers) or any(x.diff_id is None for x in layers[:depth]):
        raise BadInput(f"{image.ref}: cannot index its lowest {depth} layers on their own")
    flat = flatten(_Prefix(image, depth), dest / "index", budgets=budgets)
    seed = Seed([str(x.diff_id) for x in layers[:depth]], flat, flat.expanded)
    statefile.save(seed, dest / SEED_FILE)
    return seed


class _Prefix:
    """The lowest `depth` layers of an open image, as an Image of their own (interface.py)."""

    def __init__(self, image: Image, depth: int) -> None:
        self._image = image
        self.depth = depth
        self.ref: ImageRef = image.ref
        self.config: dict = image.config
        self.config_bytes = image.config_bytes
        self.digest = image.digest
        self.manifest_digest = image.manifest_digest
        self.reader = image.reader

    @property
    def layers(self) -> list[Layer]:
        return list(self._image.layers[:self.depth])

    def keep_file(self, path: str, dest_dir: Path) -> tuple[str, tuple[int, int]]:
        return self._image.keep_file(path, dest_dir)

    def close(self) -> None:
        self._image.close()

    def __enter__(self) -> _Prefix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
