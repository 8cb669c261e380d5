"""The console summary of `tracer minimize`: what an operator reads to decide whether the
run did what they wanted. The numbers must agree with `tracer validate` and with the
report, and the summary must say what was written."""

from __future__ import annotations

from tracer.profile.sections import parse_profile
from tracer.report import Report, StepSummary, checks_phrase, describe_checks, summary_table

SERVICE = """\
version: 1
name: web
image: web:1
run:
  network: host
  ready: {tcp: 8080}
smoke:
  - http: {url: "http://127.0.0.1:8080/"}
  - exec: ["web", "--check"]
"""


def _report(**kw) -> Report:
    base = dict(name="web", image="docker-daemon:web:1", output="docker-daemon:web:1-min",
                size_before=224_570_659, size_after=10_034_393, files_before=7182,
                files_after=45, verified=True, seconds={"read": 0.4, "total": 1.0},
                kept={"elf": 15, "traced": 32, "parent": 15},
                verification_steps=[StepSummary("ready", True, 0.1),
                                    StepSummary("smoke[0].http", True, 0.1),
                                    StepSummary("smoke[1].exec", True, 0.1)],
                output_digest="sha256:" + "ab" * 32)
    base.update(kw)
    return Report(**base)


def test_validate_and_minimize_count_the_same_checks() -> None:
    """validate said "2 smoke steps (+ the ready check)" and minimize "3 check(s) passed":
    two numbers for one profile. Both now count the ready check (or the job's run)."""
    said_by_validate = describe_checks(parse_profile(SERVICE))
    table = summary_table(_report())
    assert said_by_validate.startswith("3 checks")
    assert f"verified: yes, {said_by_validate} passed" in table
    job = _report(verification_steps=[StepSummary("run", True, 0.1)])
    assert "verified: yes, 1 check (the job's own run) passed" in summary_table(job)
    assert checks_phrase(None, 0) == "0 checks (0 smoke steps)"


def test_the_summary_says_what_was_written_and_what_sizes_mean() -> None:
    written = summary_table(_report())
    assert "output: written (sha256:" + "ab" * 32 + ")" in written
    assert "`docker images` counts differently" in written
    # kept counts are per reason and overlap: the line must not read as a file count
    assert "kept paths by reason (a path can have several): elf 15, traced 32" in written
    unchanged = summary_table(_report(output_unchanged=True))
    assert "output: unchanged, it already held this image" in unchanged
    assert "written" not in unchanged.replace("unchanged", "")
    failed = summary_table(_report(verified=False, output_digest=None,
                                   failure="smoke[0].http: status 500"))
    assert "verified: NO - smoke[0].http: status 500" in failed
    assert "output: written" not in failed


def test_the_summary_fits_a_terminal_and_has_no_placeholders() -> None:
    many = {"config": 2, "elf": 299, "keep.binaries": 1, "keep.paths": 26, "package": 1655,
            "parent": 13, "root": 1, "runtime": 6, "symlink": 14, "traced": 32}
    table = summary_table(_report(kept=many))
    assert "package 1,655" in table
    for line in table.splitlines()[1:]:  # the first line holds the image names
        assert len(line) <= 100, line
    assert "?" not in table and "(s)" not in table
