"""Deciding a fleet's shared base: which jobs share it, which paths it holds, and what
changed since the last batch. Pure functions of what the jobs need; nothing runs here.

- `group`: jobs whose inputs start with the same layer (by diff_id) form a fleet; its base
  is made of the layers all of them start with (the longest common run, bottom first).
  A job alone on its layers is no fleet: it gets its one-layer output as without
  --share-base.
- `decide`: the base holds the union of what every job of the fleet keeps of those layers
  (sharedbase.needs), closed over parent directories; that is reproducible, so the base
  only changes when the union does. With a pinned base (`--pin-base`), the last base stays
  as it is when it still covers every job, and otherwise the decision says why not.
- `changes`: what the jobs that joined, left or changed did to the base, in words, for
  the batch's log and summary.json (paths escaped as the keep-list writes them: a name
  in an image may hold a newline, and must not forge a line of the log).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tracer.analysis.keeplist import size_of
from tracer.explain.runfiles import escape
from tracer.fleet.descriptor import BaseDescriptor
from tracer.image.layercache import chain_ids
from tracer.image.layerwrite import closed_paths
from tracer.image.model import FlatImage
from tracer.report import human_size


@dataclass
class Fleet:
    """Jobs (by name, in the batch's order) whose inputs start with `layers`."""

    name: str
    layers: list[str]
    jobs: list[str]


def fleet_name(layers: Sequence[str]) -> str:
    """A fleet's name: its base layers' chain id, short (the same layers, the same name)."""
    return "base-" + chain_ids(layers)[-1].removeprefix("sha256:")[:12]


def common_prefix(lists: Sequence[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for column in zip(*lists, strict=False):
        if any(x != column[0] for x in column):
            break
        out.append(column[0])
    return out


def group(inputs: Mapping[str, Sequence[str]]) -> tuple[list[Fleet], list[str]]:
    """Fleets of the jobs in `inputs` (job -> its input's diff_ids, bottom first), and the
    jobs in no fleet (alone on their first layer, or whose layers are unknown)."""
    by_first: dict[str, list[str]] = {}
    alone: list[str] = []
    for job, layers in inputs.items():
        if layers:
            by_first.setdefault(layers[0], []).append(job)
        else:
            alone.append(job)
    fleets = []
    for jobs in by_first.values():
        if len(jobs) < 2:
            alone.extend(jobs)
            continue
        layers = common_prefix([inputs[j] for j in jobs])
        fleets.append(Fleet(fleet_name(layers), layers, jobs))
    return fleets, alone


@dataclass
class Decision:
    """The base a fleet gets: its paths (closed, sorted), whether it is the pinned one,
    and what the pin came to (why it could not be kept)."""

    paths: list[str]
    pinned: bool = False
    pin_note: str = ""


def union(needs: Mapping[str, Sequence[str]], index: FlatImage) -> list[str]:
    """Every path some job needs, closed over its parents in the base layers' index."""
    wanted: set[str] = set()
    for paths in needs.values():
        wanted.update(paths)
    return closed_paths(index, wanted)


def decide(fleet: Fleet, needs: Mapping[str, Sequence[str]], index: FlatImage,
           pinned: BaseDescriptor | None) -> Decision:
    """The fleet's base (module doc). `pinned`: the base to keep if it still can."""
    paths = union(needs, index)
    if pinned is None:
        return Decision(paths)
    if pinned.layers != fleet.layers:
        return Decision(paths, pin_note=(
            f"the pinned base {pinned.fleet} is made of other layers than the fleet now "
            f"stands on ({len(pinned.layers)} layer(s) ending {pinned.layers[-1][:19]}, now "
            f"{len(fleet.layers)} ending {fleet.layers[-1][:19]}): its images' base changed"))
    held = set(pinned.paths)
    lacking = {job: [p for p in paths if p in set(want) and p not in held]
               for job, want in needs.items()}
    lacking = {job: missing for job, missing in lacking.items() if missing}
    if lacking:
        words = "; ".join(f"{job} needs {len(m)} path(s) it lacks (e.g. {escape(m[0])})"
                          for job, m in sorted(lacking.items()))
        return Decision(paths, pin_note=f"cannot keep the pinned base {pinned.diff_id[:19]}: "
                        + words)
    unknown = [p for p in pinned.paths if p not in index.entries]
    if unknown:
        return Decision(paths, pin_note=f"cannot keep the pinned base {pinned.diff_id[:19]}: "
                        f"its path {escape(unknown[0])} is not in the base layers")
    return Decision(closed_paths(index, pinned.paths), pinned=True,
                    pin_note=f"kept the pinned base {pinned.diff_id[:19]}: it covers every "
                    "job")


def held_for(previous: BaseDescriptor | None, needs: Mapping[str, Sequence[str]],
             paths: Sequence[str]) -> dict[str, list[str]]:
    """What a kept (pinned) base still holds for jobs no longer in the fleet: their paths
    no job of the fleet needs now (so the next batch can say whose they were)."""
    if previous is None:
        return {}
    wanted: set[str] = set()
    for p in needs.values():
        wanted.update(p)
    held = set(paths) - wanted
    gone = {**previous.held_for, **previous.needed_by}
    out = {job: sorted(set(p) & held) for job, p in gone.items() if job not in needs}
    return {job: p for job, p in out.items() if p}


@dataclass
class Change:
    """What happened to a fleet's base since the last batch, in words (`lines`)."""

    lines: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # paths the base gained
    removed: list[str] = field(default_factory=list)  # paths it lost


def _only(job: str, needs: Mapping[str, Sequence[str]]) -> set[str]:
    """Paths `job` needs that no other job in `needs` does."""
    others: set[str] = set()
    for other, paths in needs.items():
        if other != job:
            others.update(paths)
    return set(needs.get(job, ())) - others


def changes(previous: BaseDescriptor | None, needs: Mapping[str, Sequence[str]],
            paths: Sequence[str], diff_id: str, index: FlatImage, pinned: bool) -> Change:
    """Compare the new base (`paths`, `diff_id`, for `needs`) with the last batch's."""

    def files_of(some: Sequence[str]) -> str:
        return human_size(size_of(index.entries, some))

    if previous is None:
        return Change([f"new shared base {diff_id[:19]}: {len(paths):,} paths, "
                       f"{files_of(paths)} of files, for "
                       f"{len(needs)} jobs"])
    out = Change()
    old_paths, new_paths = set(previous.paths), set(paths)
    out.added = sorted(new_paths - old_paths)
    out.removed = sorted(old_paths - new_paths)
    if previous.diff_id == diff_id:
        out.lines.append(f"shared base unchanged ({diff_id[:19]}, {len(paths):,} paths): "
                         "no image of the fleet pulls a new base")
    else:
        out.lines.append(
            f"shared base changed {previous.diff_id[:19]} -> {diff_id[:19]}: "
            f"+{len(out.added)} path(s) (+{files_of(out.added)}), "
            f"-{len(out.removed)} (-{files_of(out.removed)})")
    before = previous.needed_by
    for job, held in sorted(previous.held_for.items()):
        gone = sorted(set(held) - new_paths)
        if gone and job not in needs:
            out.lines.append(f"{len(gone)} path(s) the pinned base held for {job} (which left "
                             f"the fleet before) left the base, e.g. {escape(gone[0])}")
    for job in sorted(set(needs) - set(before)):
        if job in previous.held_for:
            out.lines.append(f"{job} is back in the fleet")
            continue
        grows = sorted(_only(job, needs) - old_paths)
        out.lines.append(
            f"{job} joined the fleet: " + (
                f"the base grows by {len(grows)} path(s) ({files_of(grows)}) "
                f"only it needs, e.g. {escape(grows[0])}" if grows else
                "it needs nothing the base lacked"))
    for job in sorted(set(before) - set(needs)):
        gone = sorted(_only(job, before) - new_paths) if not pinned else []
        kept = sorted((_only(job, before) & new_paths) - set().union(*needs.values()))
        if gone:
            out.lines.append(f"{job} left the fleet: {len(gone)} path(s) "
                             f"({files_of(gone)}) only it needed left the "
                             f"base, e.g. {escape(gone[0])}")
        elif kept and pinned:
            out.lines.append(f"{job} left the fleet: {len(kept)} path(s) only it needed stay "
                             "in the pinned base")
        else:
            out.lines.append(f"{job} left the fleet: the base keeps what the others need")
    for job in sorted(set(needs) & set(before)):
        more = sorted(set(needs[job]) - set(before[job]))
        less = sorted(set(before[job]) - set(needs[job]))
        grew = [p for p in more if p in out.added]
        shrank = [p for p in less if p in out.removed]
        if grew or shrank:
            out.lines.append(f"{job} now keeps other paths of the base: +{len(grew)} for it "
                             f"alone (e.g. {escape((grew or ['-'])[0])}), -{len(shrank)} no one "
                             f"needs any more (e.g. {escape((shrank or ['-'])[0])})")
    return out
