"""Diagnosis of a failed minimized run, and `why` answers, on real files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from tracer.explain.diagnose import diagnose, suggest_globs
from tracer.explain.why import why
from tracer.rootfs import RootFS
from tracer.trace.result import Access, Meaning, SmokeResult, StepOutcome


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
           program: str = "/app", meaning: Meaning = Meaning.READ,
           syscall: str = "openat") -> Access:
    return Access(path=path, syscall=syscall, ok=errno is None, errno=errno, pid=7,
                  program=program, cmdline=(program, "--x") if program else (), step=step,
                  meaning=meaning)


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
    # exact paths first, on the real (resolved) directory; three missing siblings are
    # offered as one glob only as the shorter alternative
    assert d.keep_paths == ["/usr/lib/gconv/A.so", "/usr/lib/gconv/B.so", "/usr/lib/gconv/C.so",
                            "/usr/share/zoneinfo/Europe/Berlin"]
    assert d.keep_globs == ["/usr/lib/gconv/*", "/usr/share/zoneinfo/Europe/Berlin"]
    assert d.keep_binaries == []
    text = d.format_text()
    assert "smoke[0].exec: exit code 1, expected 0" in text
    assert "/app (/app --x)" in text and '- "/usr/lib/gconv/A.so"' in text
    assert text.index('- "/usr/lib/gconv/A.so"') < text.index('- "/usr/lib/gconv/*"')
    assert "exclude rule '/usr/share/zoneinfo/**'" in text
    as_json = json.loads(json.dumps(d.to_json()))
    assert as_json["suggested_keep_paths"] == d.keep_paths
    assert as_json["suggested_keep_globs"] == d.keep_globs


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
    present = {"/lib", "/usr", "/usr/lib", "/usr/lib/gconv", "/usr/lib/gconv/A.so"}.__contains__
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


# ---- a diagnosis that is never wrong -------------------------------------------------------

def runtime_root(tmp_path: Path) -> RootFS:
    root = original_root(tmp_path)
    base = Path(root.root)
    (base / "run/app").mkdir(parents=True)
    (base / "tmp").mkdir()
    (base / "tmp").chmod(0o1777)
    os.symlink("/run", base / "var-run")
    return root


def everything_but(root: RootFS, *lacking: str):
    """`present` of a minimized image holding every original path except `lacking`."""
    base = Path(root.root)
    have = {"/" + str(p.relative_to(base)) for p in base.rglob("*")} | {"/"}
    return (have - set(lacking)).__contains__


def test_the_root_directory_is_never_missing(tmp_path: Path) -> None:
    """The original run chdir'd to / and listed it; / is in every image, whatever
    `present` says, and keep.paths "/" is never suggested."""
    root = runtime_root(tmp_path)
    original_run = SmokeResult(passed=True, accesses=[
        access("/", errno=None, meaning=Meaning.ENTRY, syscall="chdir"),
        access("/", errno=None, meaning=Meaning.LIST, syscall="getdents64")])
    minimized = SmokeResult(passed=False, accesses=[
        access("/", errno="ENOENT", meaning=Meaning.ENTRY, syscall="chdir")])
    for present in (set().__contains__, everything_but(root, "/")):
        d = diagnose(minimized, root, original_run=original_run, present=present)
        assert not [m for m in d.missing if m.image_path == "/" or m.path == "/"]
        assert "/" not in d.keep_paths + d.keep_globs and '"/"' not in d.format_text()


@pytest.mark.parametrize("syscall,meaning", [("bind", Meaning.CREATE),
                                             ("openat", Meaning.CREATE),
                                             ("mkdir", Meaning.CREATE),
                                             ("connect", Meaning.CONNECT)])
def test_a_failed_create_names_the_missing_directory(tmp_path: Path, syscall: str,
                                                     meaning: Meaning) -> None:
    root = runtime_root(tmp_path)
    minimized = SmokeResult(passed=False, accesses=[
        access("/var-run/app/app.sock", errno="ENOENT", meaning=meaning, syscall=syscall)])
    d = diagnose(minimized, root, exclude=["/run/app/**"],
                 present=everything_but(root, "/run/app"))
    assert [(m.path, m.image_path, m.acted_on, m.excluded_by) for m in d.missing] == [
        ("/var-run/app", "/run/app", "/var-run/app/app.sock", "/run/app/**")]
    assert d.keep_paths == ["/run/app"] and d.keep_globs == []
    text = d.format_text()
    assert f"{syscall} of /var-run/app/app.sock -> ENOENT" in text and '- "/run/app"' in text
    # the directory is there: the socket is simply not up, no file is missing
    d = diagnose(minimized, root, present=everything_but(root))
    assert d.missing == []


def test_a_name_the_original_run_created_needs_its_directory(tmp_path: Path) -> None:
    root = runtime_root(tmp_path)
    original_run = SmokeResult(passed=True, accesses=[
        access("/tmp/out.1234", errno=None, meaning=Meaning.CREATE),
        access("/tmp/out.1234", errno=None, meaning=Meaning.REMOVE, syscall="unlink")])
    d = diagnose(SmokeResult(passed=False), root, exclude=["/tmp/**"],
                 original_run=original_run, present=everything_but(root, "/tmp"))
    assert [(m.image_path, m.errno, m.acted_on, m.excluded_by) for m in d.missing] == [
        ("/tmp", "absent", "/tmp/out.1234", "/tmp/**")]
    assert d.keep_paths == ["/tmp"]


EXCLUDE_CASES = [
    # (asked, lacking in the minimized image, exclude rules, the rule to blame)
    ("/lib/gconv/A.so", "/usr/lib/gconv/A.so", ["/usr/lib/gconv/**"], "/usr/lib/gconv/**"),
    ("/lib/gconv/A.so", "/usr/lib/gconv/A.so", ["/usr/share/**", "/usr/lib/gconv/A.so"],
     "/usr/lib/gconv/A.so"),
    # a rule written through the link removed the image path, as the keep-list applies it
    ("/lib/gconv/A.so", "/usr/lib/gconv/A.so", ["/lib/gconv/**"], "/lib/gconv/**"),
    # a rule that matches only the name as asked (no literal directory to resolve) never
    # removed the image path: not to blame
    ("/lib/gconv/A.so", "/usr/lib/gconv/A.so", ["/l*/gconv/**"], None),
    ("/usr/lib/gconv/B.so", "/usr/lib/gconv/B.so", ["/usr/share/zoneinfo/**"], None),
    # the file is there, the symlink on the way is what exclude removed
    ("/lib/gconv/C.so", "/lib", ["/usr/share/**", "/lib"], "/lib"),
]


@pytest.mark.parametrize("asked,lacking,rules,blamed", EXCLUDE_CASES)
def test_exclude_attribution_names_the_rule_that_removed_what_is_missing(
        tmp_path: Path, asked: str, lacking: str, rules: list[str], blamed: str | None) -> None:
    root = original_root(tmp_path)
    result = SmokeResult(passed=False, accesses=[access(asked)])
    d = diagnose(result, root, exclude=rules, present=everything_but(root, lacking))
    assert [(m.path, m.image_path, m.excluded_by) for m in d.missing] == [
        (asked, lacking, blamed)]
    text = d.format_text()
    assert (f"removed by exclude rule {blamed!r}" in text) == (blamed is not None)
    assert "narrow these exclude rules" in text if blamed else "narrow" not in text


def test_an_unidentified_program_is_said_in_words(tmp_path: Path) -> None:
    root = original_root(tmp_path)
    result = SmokeResult(passed=False, accesses=[
        access("/usr/share/zoneinfo/Europe/Berlin", program="")])
    text = diagnose(result, root).format_text()
    assert "in smoke[0].exec, an unidentified process:" in text
    assert "?" not in text and "()" not in text


def test_suggestions_are_never_a_whole_tree() -> None:
    assert suggest_globs(["/", "/a", "/b", "/c"]) == ["/a", "/b", "/c"]
    assert suggest_globs(["/usr/a", "/usr/b", "/usr/c"]) == ["/usr/a", "/usr/b", "/usr/c"]
    for tree in ("/usr/lib", "/usr/share", "/etc", "/opt/app", "/usr/lib/x86_64-linux-gnu",
                 "/lib/aarch64-linux-musl", "/usr/local/lib", "/usr/lib64"):
        paths = [f"{tree}/{c}" for c in "abcd"]
        assert suggest_globs(paths) == paths, tree
    assert suggest_globs(["/usr/lib/gconv/" + c for c in "abc"]) == ["/usr/lib/gconv/*"]
    assert not [s for s in suggest_globs(["/x/y/z/" + c for c in "abcdef"]) if "**" in s]


def test_a_glob_is_offered_only_where_the_missing_files_are_most_of_the_directory() -> None:
    paths = ["/usr/lib/python3.11/" + m for m in ("csv.py", "enum.py", "types.py")]
    assert suggest_globs(paths, entries_in=lambda d: 200) == paths
    assert suggest_globs(paths, entries_in=lambda d: 6) == ["/usr/lib/python3.11/*"]
    assert suggest_globs(paths, entries_in=lambda d: 7) == paths


def test_a_directory_is_not_listed_with_what_is_inside_it(tmp_path: Path) -> None:
    from tracer.explain.diagnose import exact_paths

    assert exact_paths(["/a/re", "/a/re/x/y.py", "/a/re.py", "/b"]) == [
        "/a/re.py", "/a/re/x/y.py", "/b"]


def test_glob_characters_in_a_name_match_only_that_name() -> None:
    from tracer.analysis.keeplist import compile_globs, first_match
    from tracer.explain.diagnose import glob_escape

    for name in ("/opt/a[1]*?.so", "/opt/[x", "/opt/b]", "/opt/**/c"):
        globs = compile_globs([glob_escape(name)])
        assert first_match(name, globs) is not None, name
        assert first_match(name.replace("/opt/", "/opt/z"), globs) is None
    assert suggest_globs(["/o/p/q[1]/" + c for c in "abc"]) == ["/o/p/q[\\[]1]/*"]


def test_a_missing_program_is_suggested_for_keep_binaries_first(tmp_path: Path) -> None:
    """A program the original run executed is kept with keep.binaries (which keeps it
    with the libraries it links); the data files it read stay exact keep.paths."""
    root = original_root(tmp_path)
    base = Path(root.root)
    (base / "usr/bin").mkdir(parents=True)
    (base / "usr/bin/iconv").write_bytes(b"#!/usr/bin/helper\n")
    (base / "usr/bin/iconv").chmod(0o755)
    (base / "usr/bin/helper").write_bytes(b"\x7fELF-not-really")
    (base / "usr/bin/helper").chmod(0o755)
    original_run = SmokeResult(passed=True, accesses=[
        access("/usr/bin/iconv", errno=None, syscall="execve", program="/bin/sh"),
        access("/usr/bin/helper", errno=None, syscall="execve", program="/bin/sh"),
        access("/lib/gconv/A.so", errno=None, program="/usr/bin/iconv")])
    minimized = SmokeResult(passed=False, accesses=[
        access("/usr/bin/iconv", syscall="execve", meaning=Meaning.EXEC, program="/bin/sh")])
    d = diagnose(minimized, root, original_run=original_run,
                 present=everything_but(root, "/usr/bin/iconv", "/usr/bin/helper",
                                        "/usr/lib/gconv/A.so"))
    assert d.keep_binaries == ["/usr/bin/iconv", "/usr/bin/helper"]
    # the interpreter of the #! script is kept by keep.binaries: not a path to add
    assert d.keep_paths == ["/usr/lib/gconv/A.so"]
    text = d.format_text()
    assert text.index("binaries:") < text.index("paths:")
    assert '\nkeep:\n  binaries:' in text and '    - "/usr/bin/iconv"' in text


# ---- why: /, program names, keep.binaries, interpreters ------------------------------------

def indexed_run(tmp_path: Path, kept: dict[str, list[str]], entries: list[tuple],
                path_env: str | None = "/usr/local/bin:/usr/bin:/bin") -> Path:
    """A report, keep-list and path index as `tracer minimize --report` writes them."""
    from tracer.explain.runfiles import keeplist_line, write_path_index
    from tracer.image.model import Entry, FlatImage

    tmp_path.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "run.json"
    report.write_text(json.dumps({"name": "run", "excluded_paths": {}}))
    (tmp_path / "run.keeplist").write_text(
        "".join(keeplist_line(p, r) + "\n" for p, r in sorted(kept.items())))
    flat_entries = {"/": Entry("/", "dir", 0o755, 0, 0, 0.0, 0, "", {}, 0)}
    for path, kind, mode, link in entries:
        flat_entries[path] = Entry(path, kind, mode, 0, 0, 0.0, 0, link, {}, 0)
    write_path_index(FlatImage(entries=flat_entries, root=None, config={}, source_digest=""),
                     tmp_path / "run.paths.gz", path_env=path_env)
    return report


BIN_ENTRIES = [("/usr", "dir", 0o755, ""), ("/usr/bin", "dir", 0o755, ""),
               ("/bin", "symlink", 0o777, "usr/bin"), ("/usr/local", "dir", 0o755, ""),
               ("/usr/local/bin", "dir", 0o755, ""),
               ("/usr/local/bin/memcflush", "file", 0o644, ""),  # not executable: skipped
               ("/usr/bin/memcflush", "file", 0o755, ""),
               ("/usr/bin/memcstat", "file", 0o755, ""),
               ("/usr/bin/python3", "symlink", 0o777, "python3.11"),
               ("/usr/bin/python3.11", "file", 0o755, ""),
               ("/usr/bin/bash", "file", 0o755, ""), ("/usr/bin/notes.txt", "file", 0o644, "")]


def test_why_root_is_kept(tmp_path: Path) -> None:
    for report in (saved_run(tmp_path), indexed_run(tmp_path / "n", {}, BIN_ENTRIES)):
        answer = why(report, "/")
        assert answer.kept and "root" in answer.reasons[0]
        assert "/ is KEPT because" in answer.format_text()


def test_why_looks_bare_program_names_up_on_the_image_path(tmp_path: Path) -> None:
    report = indexed_run(tmp_path, {
        "/usr/bin/memcflush": ["keep.binaries: /usr/bin/memc*"],
        "/usr/bin/memcstat": ["keep.binaries: /usr/bin/memc*", "elf: /usr/bin/memcstat"]},
        BIN_ENTRIES)
    answer = why(report, "memcflush")
    assert answer.kept and answer.path == "/usr/bin/memcflush"
    text = answer.format_text()
    assert text.startswith("memcflush is /usr/bin/memcflush on the image's PATH "
                           "(/usr/local/bin:/usr/bin:/bin)")
    assert "keep.binaries: /usr/bin/memc*" in text
    absent = why(report, "memcached")
    assert not absent.kept and absent.in_image is False
    assert "no program of that name is on the image's PATH" in absent.format_text()
    # without a path index, the keep-list and the default PATH still answer
    (tmp_path / "run.paths.gz").unlink()
    assert why(report, "memcstat").path == "/usr/bin/memcstat"


def test_why_advice_for_interpreters_programs_and_files_that_are_not_kept(
        tmp_path: Path) -> None:
    report = indexed_run(tmp_path, {}, BIN_ENTRIES)
    python = why(report, "python3").format_text()
    assert "python3 is /usr/bin/python3 on the image's PATH" in python
    assert "interpreter" in python and "keep.paths would keep the binary without its" in python
    assert "smoke step" in python and "keep.binaries" in python
    assert "add it to keep.paths" not in python
    bash = why(report, "/bin/bash").format_text()
    assert "is a shell: name it in keep.binaries" in bash and "add it to keep.paths" not in bash
    program = why(report, "/usr/bin/memcstat").format_text()
    assert "keep.binaries, which keeps the libraries it links" in program
    data = why(report, "/usr/bin/notes.txt").format_text()
    assert "add it to keep.paths if the application needs it" in data
    assert "keep.binaries" in data  # "nothing needed it" names every kind of rule


def test_why_never_crashes_on_a_broken_run_file(tmp_path: Path) -> None:
    from tracer.errors import BadInput

    report = saved_run(tmp_path)
    (tmp_path / "app.keeplist").write_bytes(b"/ok\telf: x\n/bad\\q\telf: y\n")
    with pytest.raises(BadInput, match=r"app.keeplist:2: .*lone backslash"):
        why(report, "/ok")
    (tmp_path / "app.keeplist").write_bytes(b"/ok\telf: \xff\n")
    with pytest.raises(BadInput, match="not UTF-8"):
        why(report, "/ok")
    (tmp_path / "app.keeplist").write_text("/ok\telf: x\n")
    with gzip.open(tmp_path / "app.paths.gz", "wt") as f:
        f.write("/\tdir\t\n/ok\tweird-kind\t\n")
    with pytest.raises(BadInput, match="app.paths.gz:2: not a path index line"):
        why(report, "/ok")


def test_a_failed_steps_output_shows_its_end_where_the_error_is() -> None:
    """A Python traceback names the missing module on its LAST line."""
    from tracer.explain.diagnose import Diagnosis

    output = "\n".join([f"  File \"/app/x{i}.py\", line {i}" for i in range(20)]
                       + ["ModuleNotFoundError: No module named 'csv'"])
    lines = Diagnosis(step_failures=[{"label": "smoke[0].command", "message": "exit 1",
                                      "exit_code": 1, "output": output}]).format_failures()
    assert lines[-1].endswith("ModuleNotFoundError: No module named 'csv'")
    assert any("earlier lines" in line for line in lines)


def test_a_missing_link_on_the_way_and_the_file_behind_it_are_named_in_one_round(
        tmp_path: Path) -> None:
    """`/etc/localtime -> /usr/share/zoneinfo/Europe/Berlin` with both gone: naming only the
    link made the operator add it, rerun, and only then learn of the zone file."""
    root = runtime_root(tmp_path)
    os.symlink("/usr/share/zoneinfo/Europe/Berlin", Path(root.root) / "etc-localtime")
    minimized = SmokeResult(passed=False, accesses=[access("/etc-localtime")])
    d = diagnose(minimized, root, present=everything_but(
        root, "/etc-localtime", "/usr/share/zoneinfo/Europe/Berlin"))
    assert [(m.path, m.image_path) for m in d.missing] == [
        ("/etc-localtime", "/etc-localtime"),
        ("/etc-localtime", "/usr/share/zoneinfo/Europe/Berlin")]
    assert d.keep_paths == ["/etc-localtime", "/usr/share/zoneinfo/Europe/Berlin"]
    # a link crossed on the way (the /lib -> usr/lib of merged /usr) and the file behind
    d = diagnose(SmokeResult(passed=False, accesses=[access("/lib/gconv/A.so")]), root,
                 present=everything_but(root, "/lib", "/usr/lib/gconv/A.so"))
    assert [m.image_path for m in d.missing] == ["/lib", "/usr/lib/gconv/A.so"]
    # only what is really missing: the link is there, the file is not
    d = diagnose(minimized, root, present=everything_but(
        root, "/usr/share/zoneinfo/Europe/Berlin"))
    assert [m.image_path for m in d.missing] == ["/usr/share/zoneinfo/Europe/Berlin"]
