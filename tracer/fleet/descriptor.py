"""The base descriptor: one fleet's shared base layer, as a small JSON file.

`tracer batch --share-base` writes one per fleet under OUT/fleets/NAME.json and hands it
to each job's second step. It says everything the base layer is, without the layer
itself: the input layers it is made from (bottom first), the paths it holds (closed over
their parents), the digest and size those come to, and which job needs which path. From
the same layers and paths tracer writes the same bytes on any host (the layer is
reproducible), so the descriptor is all a later batch needs to keep a base unchanged
(`--pin-base`) or to say what a job added or removed did to it; `tracer why` reads it to
say for whom a path is in the base.

The file is the operator's (it lives under --out and may be handed back with
--pin-base): it is read as one, a regular file within the index_bytes budget, and every
field is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.budgets import DEFAULT
from tracer.errors import BadInput
from tracer.image.documents import DIGEST_RE
from tracer.operatorfiles import read_json

FORMAT = "tracer-shared-base/1"


@dataclass
class BaseDescriptor:
    """A fleet's shared base (module doc)."""

    fleet: str
    layers: list[str]  # the input layers (diff_ids) it is made from, bottom first
    diff_id: str  # the base layer's digest (its blob digest too: stored uncompressed)
    size: int  # bytes of the layer's tar
    content_bytes: int  # bytes of regular-file content in it
    paths: list[str]  # sorted, closed over parents
    needed_by: dict[str, list[str]] = field(default_factory=dict)  # job -> its paths
    tracer_version: str = ""
    # a pinned base kept for jobs that left the fleet: what it holds for each of them
    held_for: dict[str, list[str]] = field(default_factory=dict)

    def jobs_needing(self, path: str) -> list[str]:
        """The jobs that keep `path` of the base themselves, sorted."""
        return sorted(job for job, paths in self.needed_by.items() if path in set(paths))

    def to_json(self) -> dict[str, Any]:
        index = {p: i for i, p in enumerate(self.paths)}
        return {"format": FORMAT, "fleet": self.fleet, "layers": self.layers,
                "diff_id": self.diff_id, "size": self.size,
                "content_bytes": self.content_bytes, "tracer_version": self.tracer_version,
                "paths": self.paths,
                # per job the indexes of its paths in `paths`: compact for big fleets
                "needed_by": _indexes(self.needed_by, index),
                "held_for": _indexes(self.held_for, index)}

    def write(self, path: Path) -> None:
        """Atomically: a job or a later batch never reads half a descriptor."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)


def _indexes(by_job: dict[str, list[str]], index: dict[str, int]) -> dict[str, list[int]]:
    """Per job the indexes of its paths in `paths` (compact for big fleets)."""
    return {job: sorted(index[p] for p in paths if p in index)
            for job, paths in sorted(by_job.items())}


def _bad(where: str, what: str) -> BadInput:
    return BadInput(f"{where}: not a tracer base descriptor: {what}")


def parse_base_descriptor(doc: object, where: str) -> BaseDescriptor:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(where, f"expected an object with \"format\": \"{FORMAT}\"")
    fleet, diff_id = doc.get("fleet"), doc.get("diff_id")
    layers, paths = doc.get("layers"), doc.get("paths")
    size, content = doc.get("size"), doc.get("content_bytes")
    if not isinstance(fleet, str) or not fleet:
        raise _bad(where, "fleet: expected a name")
    if not isinstance(diff_id, str) or not DIGEST_RE.match(diff_id):
        raise _bad(where, "diff_id: expected a sha256 digest")
    if not isinstance(layers, list) or not layers or not all(
            isinstance(x, str) and DIGEST_RE.match(x) for x in layers):
        raise _bad(where, "layers: expected a list of sha256 digests")
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/")
                                              for p in paths):
        raise _bad(where, "paths: expected a list of absolute paths")
    for name, value in (("size", size), ("content_bytes", content)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(where, f"{name}: expected a number of bytes")
    by_job = {}
    for key in ("needed_by", "held_for"):
        given = doc.get(key, {})
        if not isinstance(given, dict):
            raise _bad(where, f"{key}: expected an object")
        found: dict[str, list[str]] = {}
        for job, indexes in given.items():
            if not isinstance(indexes, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(paths)
                    for i in indexes):
                raise _bad(where, f"{key}.{job}: expected indexes into paths")
            found[str(job)] = [paths[i] for i in indexes]
        by_job[key] = found
    version = doc.get("tracer_version", "")
    return BaseDescriptor(fleet, list(layers), diff_id, size, content, list(paths),  # type: ignore[arg-type]
                          by_job["needed_by"], version if isinstance(version, str) else "",
                          by_job["held_for"])


def read_base_descriptor(path: Path, limit: int = DEFAULT.index_bytes) -> BaseDescriptor:
    """The descriptor in `path` (an operator's file: checked as the module doc says)."""
    doc = read_json(path, "base descriptor", limit=limit, budget="index_bytes")
    return parse_base_descriptor(doc, str(path))


def read_pins(source: Path, fleets_dir: str) -> list[BaseDescriptor]:
    """--pin-base: a previous batch's --out (its fleets/*.json) or one descriptor file."""
    if source.is_dir():
        found = sorted((source / fleets_dir).glob("*.json")) if (source / fleets_dir).is_dir() \
            else []
        if not found:
            raise BadInput(f"--pin-base {source}: holds no base descriptor ({fleets_dir}/*.json "
                           "of a `tracer batch --share-base`)")
        return [read_base_descriptor(p) for p in found]
    return [read_base_descriptor(source)]


def previous_of(fleets: Path, jobs: set[str]) -> BaseDescriptor | None:
    """The last base descriptor in `fleets` whose jobs overlap `jobs` most."""
    best, overlap = None, 0
    for p in sorted(fleets.glob("*.json")):
        with contextlib.suppress(BadInput):
            d = read_base_descriptor(p)
            n = len(jobs & set(d.needed_by))
            if n > overlap:
                best, overlap = d, n
    return best
