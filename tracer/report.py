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

from tracer.errors import BadInput
from tracer.explain.runfiles import escape
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
    # kept although an exclude rule matches them: a kept link, hardlink or file needs them
    excluded_but_kept: dict[str, dict] = field(default_factory=dict)
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
    # the digest the input reference resolved to when the run read it: a registry's
    # manifest or index digest (a tag is resolved once), an archive's or layout's manifest
    # digest, the engine's image id
    input_digest: str | None = None
    platform: str | None = None  # OS/ARCH[/VARIANT] of the image read (and minimized)
    platform_runs: str | None = None  # "native", or the binfmt_misc handler emulating it
    # --all-platforms: one summary per platform (this report's numbers are the first's;
    # each platform's full report is REPORT.OS-ARCH.json beside it)
    platforms: list[dict[str, Any]] = field(default_factory=list)
    granularity: str = "file"  # file | package | deps (keep.granularity / --granularity)
    # with granularity package or deps: what file granularity would have kept (bytes),
    # the bytes each position keeps ({"file": .., "package": .., "deps": ..}: what safety
    # costs), and the price per unit (package_granularity.units, biggest first; the sizes
    # add up; with deps, package_granularity.deps lists the units the dependencies pulled
    # in, each with its chain)
    size_file_granularity: int | None = None
    sizes_by_granularity: dict[str, int] = field(default_factory=dict)
    package_granularity: dict[str, Any] | None = None
    package_sizes_text: str = ""  # the same price table for people (not in the JSON)
    # checks that passed on the minimized image but print otherwise than on the original,
    # where every run of the original printed alike (tracer.explain.outputs): a failure
    output_changes: list[dict[str, Any]] = field(default_factory=list)
    output_not_compared: list[str] = field(default_factory=list)  # outputs that vary
    # keep.evidence: per recording, how many of its paths the image has, and those it
    # lacks (listed, ignored); tracer.analysis.evidence.EvidenceFile
    evidence: list[dict[str, Any]] = field(default_factory=list)
    # tracer batch --share-base: "analysed" for a run saved after its keep-list (its
    # second step finishes it); and on a fleet's shared base, the base under the image,
    # its own layer and what it pays for the base (pipeline.on_base_report)
    stage: str | None = None
    shared_base: dict[str, Any] | None = None

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


def _overridden_excludes(overridden: dict[str, dict], shown: int = 3) -> list[str]:
    """One note per exclude rule that matches kept paths: the closure needed them (a kept
    link's target, a kept file's other hardlink names or its directory). Directories kept
    only to hold a kept file are counted but not named: they are never a surprise."""
    by_rule: dict[str, list[tuple[str, list[str]]]] = {}
    for path, entry in overridden.items():
        by_rule.setdefault(str(entry.get("rule")), []).append(
            (path, [str(r) for r in entry.get("kept_because", [])]))
    lines = []
    for rule, items in sorted(by_rule.items()):
        named = [(p, why) for p, why in items if not all(r.startswith("parent:") for r in why)]
        text = f"  note: exclude {rule!r} matches {plural(len(items), 'kept path')}"
        if named:
            text += ", kept because the closure needs " + ("it" if len(items) == 1 else "them")
            text += ": " + "; ".join(f"{escape(p)} ({', '.join(why)})"
                                     for p, why in named[:shown])
            if len(named) > shown:
                text += f"; ... ({len(named) - shown} more in excluded_but_kept)"
        else:
            text += " (directories of kept files)"
        lines.append(text)
    return lines


def evidence_lines(evidence: list[dict[str, Any]], shown: int = 5) -> list[str]:
    """keep.evidence in the summary: per recording, what it added and what the image
    lacks (the first few by name; all of them in the report)."""
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
    if report.granularity != "file" and report.sizes_by_granularity:
        others = [f"{name} granularity {human_size(size)}" for name, size
                  in reversed(report.sizes_by_granularity.items()) if name != report.granularity]
        others[0] = others[0].replace(" granularity ", " granularity would keep ", 1)
        lines.append(f"  granularity: {report.granularity}; " + ", ".join(others))
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
    for p in report.platforms:
        verdict = "verified" if p["verified"] else "NOT verified"
        lines.append(f"  platform {p['platform']}: {verdict} ({p['platform_runs']}), "
                     f"{human_size(p['size_before'])} -> {human_size(p['size_after'])}")
    for rule in report.unmatched_keep_paths:
        lines.append(f"  warning: keep.paths {rule!r} matched nothing in the image")
    lines += _overridden_excludes(report.excluded_but_kept)
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


def _is_dir(path: Path, what: str) -> bool:
    """Path.is_dir, with a directory on the way this user may not enter (EACCES) said as
    bad input, not raised as a traceback (exit 70)."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise BadInput(f"{what}: cannot reach {path}: {exc.strerror or exc}") from None


def writable_dir(directory: Path, what: str) -> None:
    """Exit 2 now, naming the fix, rather than after minutes of work (or with a traceback)."""
    if not _is_dir(directory, what):
        raise BadInput(f"{what}: directory {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadInput(f"{what}: cannot write in {directory} (permission denied)")


def check_report_path(path: Path) -> None:
    """--report FILE.json: FILE.json, FILE.keeplist and FILE.paths.gz are written next to
    each other at the end of the run, so the place is checked before the run starts."""
    if _is_dir(path, f"--report {path}"):
        raise BadInput(f"--report {path}: is a directory; give a file name, e.g. "
                       f"{path / 'report.json'}")
    writable_dir(path.parent, f"--report {path}")
