"""A run stopped after its keep-list, saved, and taken up again by another process.

`tracer batch --share-base` needs every job's keep-list before the fleet's shared base
can be written, and each job must stay its own process (one crashing or hanging job
cannot take the others down). So a job runs in two steps: `tracer minimize PROFILE
--stop-after analyse --state DIR` reads, traces and analyses, and saves here what writing
and verifying need (the flattened index, the traced run's outcome, the keep-list with its
reasons, the report so far); `tracer minimize PROFILE --resume DIR [--shared-base FILE]`
writes the image on the base the batch decided, verifies it with the full smoke test and
publishes it. In between, the job holds no memory and no slot: the batch runs the next.

What the index reads file content from stays valid in between: its directory is inside
DIR (the input's spooled layers, a hardlink to a saved archive), or the engine's own
layer directories (read in place) or the batch's index of the lowest layers.

`needs.json` beside the state is plain JSON for the batch: which of the kept paths the
fleet's base can hold for this job (sharedbase.needs), and the base's layers it read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer import statefile
from tracer.analysis.keeplist import Reason
from tracer.errors import BadInput
from tracer.image.config import ImageConfig
from tracer.image.layercache import find_seed_ids
from tracer.image.model import FlatImage
from tracer.image.prepare import Prepared
from tracer.image.reference import ImageRef
from tracer.image.sharedbase import needs
from tracer.report import Report
from tracer.trace.result import SmokeResult

STATE_FILE = "stage.pickle"
NEEDS_FILE = "needs.json"


@dataclass
class Stage:
    """Everything a run knows once its keep-list is made."""

    profile_hash: str | None  # the profile it was made with: resuming needs the same
    ref: ImageRef
    flat: FlatImage
    engine_ref: str | None  # how the engine runs the original (None: a temp copy, gone)
    trace: SmokeResult
    kept: dict[str, list[Reason]]
    report: Report
    phases: dict[str, float]
    seconds: float  # wall time of the first step
    input_layers: list[str] = field(default_factory=list)  # the input's diff_ids


def input_layers(flat: FlatImage) -> list[str]:
    """The input's layer digests (the config's rootfs.diff_ids), bottom first."""
    rootfs = flat.config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return [d for d in ids if isinstance(d, str)] if isinstance(ids, list) else []


def save(stage: Stage, state_dir: Path, temp_engine_ref: bool) -> None:
    """Save `stage` in `state_dir` (a private directory), with needs.json for the batch.

    `temp_engine_ref`: the engine ref is a copy this process loaded (removed when it
    ends), so the next step loads it again if it needs the original."""
    flat = stage.flat
    flat._rootfs = {}  # rebuilt on load; a cache, not state
    if temp_engine_ref:
        stage.engine_ref = None
    stage.input_layers = input_layers(flat)
    statefile.save(stage, state_dir / STATE_FILE)
    keep = sorted(stage.kept)
    doc: dict[str, Any] = {"base_layers": [], "needs": []}
    seed = find_seed_ids(stage.input_layers)
    if seed is not None:
        doc["base_layers"] = seed.diff_ids
        doc["needs"] = needs(flat, keep, seed.flat, len(seed.diff_ids))
    tmp = state_dir / f".{NEEDS_FILE}.tmp"
    tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    os.replace(tmp, state_dir / NEEDS_FILE)


def load(state_dir: Path, profile_hash: str | None) -> Stage:
    """The stage saved in `state_dir`; refused when the profile is not the one it was
    made with (the keep-list would not be this profile's)."""
    stage = statefile.load(state_dir / STATE_FILE)
    if not isinstance(stage, Stage):
        raise BadInput(f"{state_dir / STATE_FILE}: not a saved tracer run")
    if stage.profile_hash != profile_hash:
        raise BadInput(f"{state_dir}: saved with another version of the profile (sha256 "
                       f"{stage.profile_hash}, now {profile_hash}); analyse it again")
    return stage


def prepared_of(stage: Stage, walk_limit: int) -> Prepared:
    """The input as the later stages use it (its engine ref may be "", see Stage)."""
    flat = stage.flat
    config = ImageConfig.from_image_json(flat.config, str(stage.ref))
    return Prepared(ref=stage.ref, flat=flat, root=flat.rootfs(walk_limit),
                    engine_ref=stage.engine_ref or "", config=config)
