"""Silent breakage: comparing what checks print on the original and the minimized image,
and what a suggested smoke step checks of a command's output. No engine: outcomes are
built as the runner builds them (tracer.trace.result.Captured of each stream).

One class of output each: on stderr only, long (more lines than any failure shows),
varying between runs (a timestamp, a random token), binary.
"""

from __future__ import annotations

import re

from tracer.explain.outputs import (
    DIFF_LINES,
    NUMBERS,
    SAME,
    VARIES,
    compare,
    compare_step,
    stability,
    suspects,
    unified_diff,
)
from tracer.explain.stepcheck import candidates, output_check
from tracer.trace.result import KEPT_CHARS, Captured, SmokeResult, StepOutcome


def ran(stdout: str = "", stderr: str = "", exit_code: int | None = 0, passed: bool = True,
        label: str = "smoke[0].command") -> StepOutcome:
    return StepOutcome(label, "command", passed, 0.1, exit_code,
                       streams={"stdout": Captured.of(stdout), "stderr": Captured.of(stderr)})


def body(text: str, passed: bool = True, label: str = "smoke[1].http") -> StepOutcome:
    return StepOutcome(label, "http", passed, 0.1, None, streams={"body": Captured.of(text)})


LONG = "x\n" + "".join(f"{i}\n" for i in range(1, 101))
PNG = "\ufffdPNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\ufffd\ufffd\x08\x06\x00\n"


def test_stability_is_decided_by_whole_outputs() -> None:
    assert stability([Captured.of("a\nb\n"), Captured.of("a\nb\n")]) == SAME
    assert stability([Captured.of("took 12 ms\n"), Captured.of("took 9 ms\n")]) == NUMBERS
    assert stability([Captured.of("id 6f1c\n"), Captured.of("id 0b9e\n")]) == VARIES
    # a difference past the text kept for diffs still counts: the digest is of all
    tail = "a" * KEPT_CHARS
    assert stability([Captured.of(tail + "1x"), Captured.of(tail + "2y")]) == VARIES


# -- what the suggested step checks ----------------------------------------------------------

def test_output_on_stderr_only_is_checked_on_stderr() -> None:
    check = output_check([ran(stderr="fixed\n"), ran(stderr="fixed\n")])
    assert (check.stream, check.regex) == ("stderr", "fixed")


def test_stdout_comes_before_stderr_and_words_before_numbers() -> None:
    check = output_check([ran("42\n", "warning: cache cold\n")] * 2)
    assert (check.stream, check.regex) == ("stderr", "warning: cache cold")
    check = output_check([ran("report ready\n", "warning: cache cold\n")] * 2)
    assert (check.stream, check.regex) == ("stdout", "report ready")


def test_long_output_is_checked_on_a_line_every_run_printed() -> None:
    check = output_check([ran(LONG), ran(LONG)])
    assert (check.stream, check.regex) == ("stdout", "x")


def test_a_line_that_varies_is_skipped_for_one_that_does_not() -> None:
    runs = [ran("session 6f1c-aa\nstatus: ready\n"), ran("session 0b9e-cd\nstatus: ready\n")]
    check = output_check(runs)
    assert (check.stream, check.regex) == ("stdout", "status: ready")
    # numbers may differ in a worded line (dates, counters)
    runs = [ran("report of 2024-05-01, 17 rows\n"), ran("report of 2024-05-02, 18 rows\n")]
    check = output_check(runs)
    assert check.regex == "report of [0-9]+-[0-9]+-[0-9]+, [0-9]+ rows"


def test_output_that_only_varies_is_said_plainly() -> None:
    runs = [ran("6f1c2d7e-91aa-4c0b\n"), ran("0b9e77c1-03fe-4a9d\n")]
    check = output_check(runs)
    assert check.stream is None
    assert check.why == ("its output changes between runs of the original image (stdout "
                         "line 1: '6f1c2d7e-91aa-4c0b' then '0b9e77c1-03fe-4a9d')")
    assert output_check([ran(), ran()]).why == "it prints nothing on stdout or stderr"


def test_a_line_of_numbers_only_is_checked_whole_and_exact() -> None:
    check = output_check([ran("3\n"), ran("3\n")])
    assert check.regex == "(?m)^3$"
    assert not re.search(check.regex, "13\n", re.M) and re.search(check.regex, "3\n", re.M)
    assert output_check([ran("3\n"), ran("4\n")]).stream is None


def test_binary_output_is_checked_on_a_printable_stretch() -> None:
    assert [c.text for c in candidates(PNG)][:2] == ["\ufffdPNG", "IHDR"]
    check = output_check([ran(PNG), ran(PNG)])
    assert (check.stream, check.regex) == ("stdout", ".PNG")
    assert re.search(check.regex, PNG, re.M) and not re.search(check.regex, "GIF89a", re.M)
    noise = "\x00\x01\x02\ufffd\x03\n\x04\x05"
    check = output_check([ran(noise), ran(noise)])
    assert check.stream is None and "no text a regex can check" in check.why


# -- silent changes ----------------------------------------------------------------------------

def test_output_that_never_changes_must_not_change_on_the_minimized_image() -> None:
    original = [ran(LONG), ran(LONG)]
    broken = ran(LONG.replace("57\n", "57\nwarning: no locale\n"))
    changes, notes = compare_step(original, broken)
    assert [(c.stream, c.how) for c in changes] == [("stdout", SAME)] and notes == []
    assert changes[0].message == ("smoke[0].command: exit 0 as on the original image, but "
                                  "its stdout differs from the original's, which every run of "
                                  "the original printed alike")
    diff = changes[0].diff.splitlines()
    assert diff[:3] == ["--- original stdout", "+++ minimized stdout", "@@ -57,4 +57,5 @@"]
    assert "+warning: no locale" in diff and " 57" in diff
    assert compare_step(original, ran(LONG)) == ([], [])


def test_stderr_alone_is_compared_too() -> None:
    original = [ran(stderr="fixed\n"), ran(stderr="fixed\n")]
    changes, _ = compare_step(original, ran(stderr="fixed\nperl: warning: Setting locale "
                                                   "failed.\n"))
    assert [c.stream for c in changes] == ["stderr"]
    assert "+perl: warning: Setting locale failed." in changes[0].diff


def test_numbers_may_differ_where_they_differ_on_the_original() -> None:
    original = [ran("took 12 ms\nzone CET\n"), ran("took 9 ms\nzone CET\n")]
    assert compare_step(original, ran("took 31 ms\nzone CET\n")) == ([], [])
    changes, _ = compare_step(original, ran("took 31 ms\nzone Europe\n"))
    assert [(c.stream, c.how) for c in changes] == [("stdout", NUMBERS)]
    assert "-zone CET" in changes[0].diff and "+zone Europe" in changes[0].diff


def test_output_that_varies_is_not_compared_and_said_so() -> None:
    original = [ran("6f1c-aa\n", "done\n"), ran("0b9e-cd\n", "done\n")]
    changes, notes = compare_step(original, ran("77aa-ee\n", "done\n"))
    assert changes == []
    assert notes == ["smoke[0].command stdout: not compared: it changes between runs of the "
                     "original image, and not only in numbers (line 1: '6f1c-aa' then "
                     "'0b9e-cd')"]
    changes, _ = compare_step(original, ran("77aa-ee\n", "done\nerror: gone\n"))
    assert [c.stream for c in changes] == ["stderr"]


def test_binary_output_is_compared_byte_for_byte_as_kept() -> None:
    original = [ran(PNG), ran(PNG)]
    changes, _ = compare_step(original, ran(PNG.replace("IHDR", "IHDX")))
    assert [c.stream for c in changes] == ["stdout"]
    assert "\\x00" in changes[0].diff and "\x00" not in changes[0].diff  # escaped, one line
    assert compare_step(original, ran(PNG)) == ([], [])


def test_only_checks_that_end_alike_are_compared() -> None:
    original = [ran("ok\n"), ran("ok\n")]
    # another exit code is a failure of its own: no silent change to tell
    assert compare_step(original, ran("usage\n", exit_code=2, passed=False)) == ([], [])
    # a check that ends otherwise on the original runs says nothing
    changes, notes = compare_step([ran("ok\n"), ran("ok\n", exit_code=1, passed=False)],
                                  ran("no\n"))
    assert changes == [] and "ends differently on every run" in notes[0]


def test_http_bodies_are_compared_when_the_step_passed_on_both() -> None:
    page = "<h1>Welcome</h1>\n<p>zone: CET</p>\n"
    minimized = SmokeResult(passed=True, steps=[ran("ok\n"), body(page.replace("CET", "UTC"))])
    first = SmokeResult(passed=True, steps=[ran("ok\n"), body(page)])
    assert suspects(first, minimized) == ["smoke[1].http body"]
    found = compare([first, first], minimized)
    assert [(c.label, c.stream, c.exit_code) for c in found.changes] == [
        ("smoke[1].http", "body", None)]
    assert found.changes[0].message.startswith("smoke[1].http: passed as on the original "
                                               "image, but its body differs")
    # one run of the original is not enough to judge anything
    assert compare([first], minimized).changes == []
    assert compare([first, first], minimized, {"smoke[0].command"}).changes == []


def test_a_diff_is_bounded() -> None:
    a = Captured.of("".join(f"line {i}\n" for i in range(5000)))
    b = Captured.of("".join(f"line {i}{'!' * 500 if i % 2 else ''}\n" for i in range(5000)))
    diff = unified_diff(a, b, "stdout").splitlines()
    assert len(diff) == DIFF_LINES + 2 and diff[-2].startswith("... (")
    assert diff[-1] == f"(diffed: the beginning kept of each, {a.chars:,} and {KEPT_CHARS:,} " \
        "characters)"  # b was cut
    assert max(len(ln) for ln in diff) <= 210
    same_head = Captured.of("a" * KEPT_CHARS + "1x")
    other = Captured.of("a" * KEPT_CHARS + "2y")
    assert "they differ after them" in unified_diff(same_head, other, "stdout")
