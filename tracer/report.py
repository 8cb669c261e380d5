"""The report of one `tracer minimize` run: JSON for tools, a table for people.

Field names of the JSON follow docs/profile.md (`name`, `image`, `output`, `size_before`,
`size_after`, `files_before`, `files_after`, `verified`, `seconds`, `kept`), because
nightly jobs and dashboards parse them; everything else is additional.
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracer.profile.model import Profile


@dataclass
class StepSummary:
    label: str
    passed: bool
    seconds: float
    message: str = ""
    output: str = ""  # a failed step's evidence: output tail, bytes received (bounded)


@dataclass
class Report:
    name: str
    image: str
    output: str
    size_before: int = 0
    size_after: int = 0
    files_before: int = 0
    files_after: int = 0
    verified: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    excluded_paths: dict[str, dict] = field(default_factory=dict)
    unmatched_keep_paths: list[str] = field(default_factory=list)  # likely typos
    recorders: list[str] = field(default_factory=list)
    recorder_notes: list[str] = field(default_factory=list)  # e.g. why fanotify did not run
    unresolved_libraries: list[str] = field(default_factory=list)
    biggest_files: list[tuple[str, int]] = field(default_factory=list)
    biggest_dirs: list[tuple[str, int]] = field(default_factory=list)
    original_steps: list[StepSummary] = field(default_factory=list)
    verification_steps: list[StepSummary] = field(default_factory=list)
    failure: str | None = None
    keeplist_file: str | None = None
    diagnosis: dict[str, Any] | None = None
    diagnosis_text: str = ""
    tracer_version: str = ""
    # what the output reference holds after the run: the manifest digest of a
    # docker-archive or oci output, the image id in the engine (None: nothing written)
    output_digest: str | None = None
    output_unchanged: bool = False  # it already held exactly this image: left untouched
    granularity: str = "file"  # file | package (keep.granularity / --granularity)
    # with granularity package: what file granularity would have kept (bytes), and the
    # price per unit (package_granularity.units, biggest first; the sizes add up)
    size_file_granularity: int | None = None
    package_granularity: dict[str, Any] | None = None
    package_sizes_text: str = ""  # the same price table for people (not in the JSON)
    # keep.evidence: per recording, how many of its paths the image has, and those it
    # lacks (listed, ignored); tracer.analysis.evidence.EvidenceFile
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("diagnosis_text")
        data.pop("package_sizes_text")
        data["biggest_files"] = [{"path": p, "bytes": b} for p, b in self.biggest_files]
        data["biggest_dirs"] = [{"path": p, "bytes": b} for p, b in self.biggest_dirs]
        return data

    def write(self, path: Path) -> None:
        """Atomic: a reader never sees half a report."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _ratio(after: int, before: int) -> str:
    return f"{100.0 * after / before:.1f}%" if before else "-"


FIRST_CHECK = {"ready": "the ready check", "run": "the job's own run"}


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def checks_phrase(first: str | None, smoke_steps: int) -> str:
    """How many checks a run makes, in one wording for `validate` and `minimize`:
    `5 checks (the ready check + 4 smoke steps)`. The first check is the service's ready
    check or the job's own run; counting it in both places keeps the numbers equal."""
    parts = [first] if first else []
    if smoke_steps or not parts:
        parts.append(plural(smoke_steps, "smoke step"))
    total = smoke_steps + (1 if first else 0)
    return f"{plural(total, 'check')} ({' + '.join(parts)})"


def describe_checks(profile: Profile) -> str:
    """How many checks a run of `profile` makes, in the words `tracer minimize` reports
    them: the service's ready check or the job's own run comes first, then the steps."""
    first = "the job's own run" if profile.run.mode == "job" else "the ready check"
    return checks_phrase(first, len(profile.smoke))


def _verified_checks(steps: list[StepSummary]) -> str:
    first = FIRST_CHECK.get(steps[0].label) if steps else None
    return checks_phrase(first, len(steps) - (1 if first else 0))


def evidence_lines(evidence: list[dict[str, Any]], shown: int = 5) -> list[str]:
    """keep.evidence in the summary: per recording, what it added and what the image
    lacks (the first few by name; all of them in the report)."""
    from tracer.explain.runfiles import escape

    lines = []
    for e in evidence:
        lines.append(f"  evidence: {e['file']}: {e['kept']:,} of {e['paths']:,} recorded paths "
                     f"are in the image (recorded {e['span'][0]} .. {e['span'][1]} on "
                     f"{e['host']})")
        missing = e["not_in_image"]
        if missing:
            lines.append(f"    {len(missing):,} not in this image, ignored: "
                         + ", ".join(escape(p) for p in missing[:shown])
                         + (f" (and {len(missing) - shown:,} more in the report)"
                            if len(missing) > shown else ""))
    return lines


def summary_table(report: Report) -> str:
    """The before/after table printed at the end of a run: what was written, whether it
    was proven, and what the numbers mean (sizes are not `docker images` sizes)."""
    rows = [
        ("", "before", "after", "after/before"),
        ("size", human_size(report.size_before), human_size(report.size_after),
         _ratio(report.size_after, report.size_before)),
        ("files", f"{report.files_before:,}", f"{report.files_after:,}",
         _ratio(report.files_after, report.files_before)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{report.name}: {report.image} -> {report.output}"]
    for r in rows:
        lines.append("  " + "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    lines.append("  (size: regular-file bytes of the flattened image, hardlinks once, MB = 10^6 "
                 "bytes; files: paths")
    lines.append("   other than directories. `docker images` counts differently: layer "
                 "overhead, replaced files)")
    if report.granularity == "package" and report.size_file_granularity is not None:
        lines.append(f"  granularity: package; file granularity would keep "
                     f"{human_size(report.size_file_granularity)}")
    steps = report.verification_steps
    if report.verified:
        lines.append(f"  verified: yes, {_verified_checks(steps)} passed on the minimized "
                     "image")
        if report.output_unchanged:
            lines.append(f"  output: unchanged, it already held this image "
                         f"({report.output_digest})")
        elif report.output_digest:
            lines.append(f"  output: written ({report.output_digest})")
    else:
        lines.append(f"  verified: NO - {report.failure or 'not verified'}")
    for rule in report.unmatched_keep_paths:
        lines.append(f"  warning: keep.paths {rule!r} matched nothing in the image")
    lines += evidence_lines(report.evidence)
    if report.recorders:
        lines.append("  recorders: " + ", ".join(report.recorders)
                     + "".join(f" ({note})" for note in report.recorder_notes))
    took = " ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    lines.append(f"  time: {took}")
    if report.kept:
        counts = ", ".join(f"{k} {v:,}" for k, v in report.kept.items())
        lines += textwrap.wrap(f"kept paths by reason (a path can have several): {counts}",
                               width=98, initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False)
    return "\n".join(lines)
