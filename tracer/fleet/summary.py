"""A fleet's numbers and its lines under the batch's table: what its outputs weigh
stored once against one-layer outputs, and what each image pays for sharing the base."""

from __future__ import annotations

from typing import Any

from tracer.batch import JobResult
from tracer.report import human_size


def fleet_numbers(base: dict[str, Any], results: list[JobResult]) -> dict[str, Any]:
    """What a fleet's outputs weigh: unique bytes (its base once, plus each output's own
    layer: what a registry stores and a node pulls once), against the sum of the one-layer
    outputs the same images would have been, and what each image pays for the base."""
    on = [r for r in results if r.shared_base and r.status in ("passed", "unchanged", "skipped")
          and r.shared_base.get("diff_id") == base["diff_id"]]
    own = sum(int(r.shared_base.get("own_bytes", 0)) for r in on)  # type: ignore[union-attr]
    single = sum(int(r.shared_base.get("single_layer_bytes", 0)) for r in on)  # type: ignore[union-attr]
    unique = base["size"] + own if on else 0
    return {"outputs": len(on), "unique_bytes": unique, "single_layer_bytes": single,
            "ratio": round(unique / single, 3) if single else None,
            "failed": sorted(r.name for r in results if r.status == "failed"),
            "extra": {r.name: {"paths": r.shared_base.get("extra_paths", 0),  # type: ignore[union-attr]
                               "bytes": r.shared_base.get("extra_bytes", 0)}  # type: ignore[union-attr]
                      for r in on}}


def fleet_table(fleets: list[dict[str, Any]]) -> str:
    """The fleets under the batch's table: bytes stored once against one-layer outputs,
    and what each image pays for sharing."""
    lines = []
    for f in fleets:
        if not f.get("outputs"):
            lines.append(f"fleet {f['name']}: no output on its shared base this run")
            continue
        lines.append(
            f"fleet {f['name']}: {f['outputs']} outputs on one base {f['base']['diff_id'][:19]}"
            f" ({human_size(f['base']['size'])}): {human_size(f['unique_bytes'])} stored once"
            f" against {human_size(f['single_layer_bytes'])} as one-layer images "
            f"({f['ratio']:.2f}x)")
        extra = f.get("extra") or {}
        if extra:
            lines.append("  each pays for the base (files it does not keep itself): " + ", ".join(
                f"{name} {human_size(x['bytes'])}" for name, x in sorted(extra.items())))
        for line in f.get("changes", []):
            lines.append(f"  {line}")
    return "\n".join(lines)
