"""Diagnosis of a failed minimized run, and `why` answers, on real files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from tracer.diagnose import diagnose, suggest_globs
from tracer.rootfs import RootFS
from tracer.trace.result import Access, SmokeResult, StepOutcome
from tracer.why import why


def original_root(tmp_path: Path) -> RootFS:
    root = tmp_path / "orig"
    (root / "usr/lib/gconv").mkdir(parents=True)
    (root / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    for name in ("A.so", "B.so", "C.so"):
        (root / "usr/lib/gconv" / name).write_bytes(b"x")
    (root / "usr/share/zoneinfo/Europe/Berlin").write_bytes(b"TZif")
    return RootFS(root)


def access(path: str, errno: str | None = "ENOENT", step: str = "smoke[0].exec",
           program: str = "/app") -> Access:
    return Access(path=path, syscall="openat", ok=errno is None, errno=errno, pid=7,
                  program=program, cmdline=(program, "--x"), step=step)


def test_only_files_of_the_original_are_reported_with_rule_and_yaml(tmp_path: Path) -> None:
    root = original_root(tmp_path)
    result = SmokeResult(passed=False, steps=[
        StepOutcome("smoke[0].exec", "exec", False, 1.0, 1, "exit code 1, expected 0", "boom")],
        accesses=[
            access("/usr/share/zoneinfo/Europe/Berlin"),
            access("/etc/ld.so.preload"),  # normal noise: not in the original either
            access("/lib/gconv/A.so"), access("/lib/gconv/B.so"), access("/lib/gconv/C.so"),
            access("/usr/share/zoneinfo/Europe/Berlin", errno=None),  # ok: not missing
        ])
    d = diagnose(result, root, exclude=["/usr/share/zoneinfo/**"])
    paths = [m.path for m in d.missing]
    assert paths == ["/usr/share/zoneinfo/Europe/Berlin", "/lib/gconv/A.so", "/lib/gconv/B.so",
                     "/lib/gconv/C.so"]
    berlin = d.missing[0]
    assert berlin.excluded_by == "/usr/share/zoneinfo/**" and berlin.errno == "ENOENT"
    assert d.missing[1].image_path == "/usr/lib/gconv/A.so" and d.missing[1].excluded_by is None
    # three missing siblings collapse into one glob, on the real (resolved) directory
    assert d.suggestions == ["/usr/lib/gconv/*", "/usr/share/zoneinfo/Europe/Berlin"]
    text = d.format_text()
    assert "smoke[0].exec: exit code 1, expected 0" in text
    assert "/app (/app --x)" in text and '- "/usr/lib/gconv/*"' in text
    assert "exclude rule '/usr/share/zoneinfo/**'" in text
    assert json.loads(json.dumps(d.to_json()))["suggested_keep_paths"] == d.suggestions


def test_a_failure_that_is_not_a_missing_file_says_so(tmp_path: Path) -> None:
    result = SmokeResult(passed=False, steps=[
        StepOutcome("smoke[1].http", "http", False, 0.2, None, "expected status 200, got 500")])
    text = diagnose(result, original_root(tmp_path)).format_text()
    assert "smoke[1].http: expected status 200, got 500" in text
    assert "the failure is not a missing file" in text


def test_suggest_globs_keeps_few_siblings_as_files() -> None:
    assert suggest_globs(["/a/x", "/a/y", "/b/z"]) == ["/a/x", "/a/y", "/b/z"]


def saved_run(tmp_path: Path) -> Path:
    report = tmp_path / "app.json"
    report.write_text(json.dumps({"name": "app", "excluded_paths": {
        "/usr/share/doc/app/README": {"rule": "/usr/share/doc/**",
                                      "reasons": ["traced: openat by /app in run"]}}}))
    (tmp_path / "app.keeplist").write_text(
        "/usr/bin/app\telf: root; traced: execve by /bin/sh in run\n/usr\tparent: holds x\n")
    with gzip.open(tmp_path / "app.paths.gz", "wt") as f:
        f.write("/\n/usr\n/usr/bin/app\n/usr/bin/unused\n/usr/share/doc/app/README\n")
    return report


def test_why_kept_excluded_untouched_and_absent(tmp_path: Path) -> None:
    report = saved_run(tmp_path)
    kept = why(report, "/usr/bin/app")
    assert kept.kept and kept.reasons == ["elf: root", "traced: execve by /bin/sh in run"]
    assert "is KEPT because" in kept.format_text()
    excluded = why(report, "/usr/share/doc/app/README")
    assert not excluded.kept and excluded.excluded_by == "/usr/share/doc/**"
    assert "exclude rule '/usr/share/doc/**'" in excluded.format_text()
    untouched = why(tmp_path / "app.keeplist", "usr/bin/unused/")
    assert untouched.in_image is True and "nothing needed it" in untouched.format_text()
    absent = why(report, "/etc/nope")
    assert absent.in_image is False and "not in the original image" in absent.format_text()


def test_files_the_original_run_used_and_the_minimized_image_lacks(tmp_path: Path) -> None:
    """A program that lists a directory never looks up what is not listed: no ENOENT."""
    root = original_root(tmp_path)
    original_run = SmokeResult(passed=True, accesses=[
        access("/usr/share/zoneinfo/Europe/Berlin", errno=None, step="smoke[0].http"),
        access("/lib/gconv/A.so", errno=None, step="smoke[0].http"),
        access("/tmp/created-at-run-time", errno=None),  # not in the image: ignored
    ])
    minimized_run = SmokeResult(passed=False, accesses=[
        access("/usr/share/zoneinfo/Europe", errno=None, step="smoke[0].http")])
    present = {"/usr/lib/gconv/A.so"}.__contains__
    d = diagnose(minimized_run, root, exclude=["/usr/share/zoneinfo/**"],
                 original_run=original_run, present=present)
    assert [(m.image_path, m.errno, m.excluded_by) for m in d.missing] == [
        ("/usr/share/zoneinfo/Europe/Berlin", "absent", "/usr/share/zoneinfo/**")]
    assert "openat in the original run, absent now" in d.format_text()


def test_why_follows_the_image_symlinks(tmp_path: Path) -> None:
    """Under merged /usr a program asks for /lib/...; the keep-list holds /usr/lib/..."""
    report = saved_run(tmp_path)
    (tmp_path / "app.keeplist").write_text(
        "/lib\tsymlink: on the way to /lib/x/libc.so.6\n"
        "/usr/lib/x/libc.so.6\telf: /usr/bin/app -> libc.so.6\n")
    with gzip.open(tmp_path / "app.paths.gz", "wt") as f:
        f.write("/\tdir\t\n/lib\tsymlink\tusr/lib\n/usr\tdir\t\n/usr/lib\tdir\t\n"
                "/usr/lib/x\tdir\t\n/usr/lib/x/libc.so.6\tfile\t\n"
                "/usr/lib/x/libm.so.6\tfile\t\n")
    answer = why(report, "/lib/x/libc.so.6")
    assert answer.kept and answer.image_path == "/usr/lib/x/libc.so.6"
    text = answer.format_text()
    assert "is /usr/lib/x/libc.so.6 in the image" in text and "elf: /usr/bin/app" in text
    untouched = why(report, "/lib/x/libm.so.6")
    assert not untouched.kept and untouched.in_image is True
