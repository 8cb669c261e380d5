"""`tracer diagnose --exec/--command`: the pieces that need no engine.

The suggested smoke step (its stdout regex from real output, its argv with variables set
through `env`), the order of the fixes (smoke step, keep.binaries, exact keep.paths, then
a glob; never a whole tree) and the YAML that pastes into the operator's profile; and the
command-line errors, which must be exit 2 before anything runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.errors import BadInput, SmokeFailedOnOriginal
from tracer.explain.diagnose import ABSENT, Diagnosis, MissingFile, diagnose
from tracer.explain.replay import (
    Command,
    _confirmed,
    _expected_exit,
    check_command,
    make_step,
    replayed_argv,
    stdout_regex,
    step_yaml,
    suggest,
    with_step,
)
from tracer.profile.edit import apply
from tracer.profile.load import load_profile
from tracer.profile.model import CommandStep, ExecStep
from tracer.profile.sections import parse_profile
from tracer.rootfs import RootFS
from tracer.trace.result import Access, Captured, Meaning, SmokeResult, StepOutcome

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"


@pytest.mark.parametrize("output,line", [
    ("Rapport des ventes\ncaf\ufffd: 3\n", "Rapport des ventes"),
    # digits may change between runs (dates, counters): any digits match
    ("report of 2024-05-01 12:03:11, 17 rows\n", "report of 2099-12-31 23:59:59, 4 rows"),
    # a line without words is skipped for one that says something
    ("{\n  \"items\": [1, 2]\n}\n", '  "items": [9, 9]'),
    # what runners write for cut lines, and strace's own messages, are never a regex
    ("... (40 earlier lines)\n/.tracer/strace: Can't stat\ntotal (EUR): 3.50 [ok] *\n",
     "total (EUR): 13.75 [ok] *"),
    # a byte the runner could not decode stands for any character
    ("caf\ufffd cr\ufffdme\n", "caf\ufffd cr\ufffdme"),
    ("  " + "x" * 200 + "\n", "x" * 200),
])
def test_stdout_regex_matches_its_line_and_escapes_the_rest(output: str, line: str) -> None:
    regex = stdout_regex(output)
    assert regex is not None and re.search(regex, line, re.M), regex
    assert len(regex) <= 200  # a prefix proves the same as the whole line
    assert not re.search(regex, "something else entirely\n", re.M)


def test_no_output_gives_no_regex() -> None:
    assert stdout_regex("") is None and stdout_regex("\n  \n... (3 more lines)\n") is None


def test_regex_special_characters_are_literal() -> None:
    regex = stdout_regex("a.b*c+d?(e)[f]{g}|h^$\\\n")
    assert regex is not None
    assert re.search(regex, "a.b*c+d?(e)[f]{g}|h^$\\")
    assert not re.search(regex, "aXb*c+d?(e)[f]{g}|h^$\\")


def image_root(tmp_path: Path, with_env: bool = True) -> RootFS:
    (tmp_path / "usr/bin").mkdir(parents=True)
    if with_env:
        (tmp_path / "usr/bin/env").write_bytes(b"\x7fELF")
        (tmp_path / "usr/bin/env").chmod(0o755)
    return RootFS(tmp_path)


def test_variables_are_set_through_the_images_env(tmp_path: Path) -> None:
    cmd = Command("exec", ["python3", "/app/report.py"], env={"PYTHONIOENCODING": "latin-1",
                                                             "TZ": "Europe/Berlin"})
    argv = replayed_argv(cmd, image_root(tmp_path), {"PATH": "/usr/bin"})
    assert argv == ["env", "PYTHONIOENCODING=latin-1", "TZ=Europe/Berlin", "python3",
                    "/app/report.py"]
    assert replayed_argv(Command("exec", ["x"]), image_root(tmp_path / "n", False), {}) == ["x"]
    with pytest.raises(BadInput, match="needs the program `env` in the image"):
        replayed_argv(cmd, image_root(tmp_path / "none", False), {"PATH": "/usr/bin"})


def test_impossible_replays_are_bad_input() -> None:
    job = load_profile(PROFILES / "hardcases.yaml")
    service = load_profile(PROFILES / "pyapp.yaml")
    with pytest.raises(BadInput, match="has no running container to exec into.*--command"):
        check_command(job, Command("exec", ["id"]))
    check_command(job, Command("command", ["id"]))
    with pytest.raises(BadInput, match="needs the command to replay"):
        check_command(service, Command("exec", []))
    with pytest.raises(BadInput, match="KEY=VALUE"):
        check_command(service, Command("exec", ["id"], env={"": "x"}))
    with pytest.raises(BadInput, match="0-255"):
        check_command(service, Command("exec", ["id"], exit=256))


def test_the_replayed_step_is_appended_where_a_pasted_one_goes() -> None:
    service = load_profile(PROFILES / "pyapp.yaml")
    step = make_step(Command("exec", ["id"], timeout=5.0), ["id"], 0, "uid=", None,
                     stderr="(?!)")
    replay = with_step(service, step)
    assert replay.smoke[:-1] == service.smoke
    assert replay.smoke[-1].label == f"smoke[{len(service.smoke)}].exec"
    assert replay.smoke[-1].step == ExecStep(argv=["id"], exit=0, stdout="uid=",
                                             stderr="(?!)", timeout=5.0)
    assert make_step(Command("command", ["id"]), ["id"], 2, None, b"in") == CommandStep(
        argv=["id"], exit=2, stdin=b"in")


def minimized_python(tmp_path: Path) -> tuple[RootFS, Diagnosis]:
    """An original image with python3, its encodings, plugins and a helper program (a #!
    script run by python3); a minimized one that lost the helper, two encodings and the
    plugins."""
    base = tmp_path / "orig"
    for d in ("usr/bin", "usr/lib/python3.11/encodings", "usr/lib/x86_64-linux-gnu",
              "opt/app/plugins"):
        (base / d).mkdir(parents=True)
    for name in ("__init__.py", "iso8859_15.py", "cp1252.py", "utf_8.py"):
        (base / "usr/lib/python3.11/encodings" / name).write_text("#\n")
    for c in "abcd":
        (base / f"opt/app/plugins/{c}.py").write_text("#\n")
    (base / "usr/bin/iconv").write_bytes(b"#!/usr/bin/python3\n")
    (base / "usr/bin/iconv").chmod(0o755)
    (base / "usr/bin/python3").write_text("#!/usr/bin/python3.11\n")
    (base / "usr/bin/python3").chmod(0o755)
    root = RootFS(base)

    def used(path: str, syscall: str = "openat", program: str = "/usr/bin/python3") -> Access:
        return Access(path=path, syscall=syscall, ok=True, errno=None, pid=9, program=program,
                      cmdline=("python3", "report.py"), step="smoke[3].exec")

    original_run = SmokeResult(passed=True, accesses=[
        used("/usr/bin/iconv", "execve", "/bin/sh"),
        used("/usr/lib/python3.11/encodings/iso8859_15.py"),
        used("/usr/lib/python3.11/encodings/cp1252.py"),
        *[used(f"/opt/app/plugins/{c}.py") for c in "abcd"]])
    lost = {"/usr/bin/iconv", "/usr/lib/python3.11/encodings/iso8859_15.py",
            "/usr/lib/python3.11/encodings/cp1252.py",
            *[f"/opt/app/plugins/{c}.py" for c in "abcd"]}
    have = {"/" + str(p.relative_to(base)) for p in base.rglob("*")} - lost
    minimized_run = SmokeResult(passed=False, accesses=[Access(
        path="/usr/lib/python3.11/encodings/iso8859_15.py", syscall="openat", ok=False,
        errno="ENOENT", pid=9, program="/usr/bin/python3", cmdline=("python3",),
        step="smoke[3].exec", meaning=Meaning.READ)])
    d = diagnose(minimized_run, root, ["/usr/share/doc/**"], original_run=original_run,
                 present=have.__contains__, env={"PATH": "/usr/bin"})
    return root, d


def test_fixes_come_best_first_and_paste_into_the_profile(tmp_path: Path) -> None:
    _, d = minimized_python(tmp_path)
    assert d.keep_binaries == ["/usr/bin/iconv"]
    assert d.keep_paths == ["/opt/app/plugins/a.py", "/opt/app/plugins/b.py",
                            "/opt/app/plugins/c.py", "/opt/app/plugins/d.py",
                            "/usr/lib/python3.11/encodings/cp1252.py",
                            "/usr/lib/python3.11/encodings/iso8859_15.py"]
    assert d.keep_globs == ["/opt/app/plugins/*", "/usr/lib/python3.11/encodings/cp1252.py",
                            "/usr/lib/python3.11/encodings/iso8859_15.py"]
    assert [m.errno for m in d.missing if m.path.endswith("iso8859_15.py")] == ["ENOENT"]
    assert all(m.errno == ABSENT for m in d.missing if m.path.endswith("cp1252.py"))

    text = (PROFILES / "pyapp.yaml").read_text()
    profile = parse_profile(text)
    cmd = Command("exec", ["python3", "/srv/app/report.py"], env={"PYTHONIOENCODING": "cp1252"})
    argv = ["env", "PYTHONIOENCODING=cp1252", "python3", "/srv/app/report.py"]
    step = step_yaml(cmd, argv, 0, "Rapport des ventes", profile)
    fixes = suggest(text, step, "checked", d, passed=False)
    assert [s.kind for s in fixes] == ["smoke", "keep", "keep-globs"]
    for s in fixes:
        patched = parse_profile(apply(text, s.edits))
        assert patched.smoke[:len(profile.smoke)] == profile.smoke
        if s.kind == "smoke":
            assert patched.smoke[-1].step == make_step(cmd, argv, 0, "Rapport des ventes", None)
            assert patched.keep == profile.keep
        else:
            assert patched.smoke == profile.smoke
            assert patched.keep.binaries == ["/usr/bin/iconv"]
            assert patched.keep.paths == profile.keep.paths + (
                d.keep_paths if s.kind == "keep" else d.keep_globs)
            # never a whole tree
            assert not [p for p in patched.keep.paths if p.count("/") < 3 and "*" in p]


def test_a_passing_command_is_still_suggested_as_a_step() -> None:
    text = (PROFILES / "pyapp.yaml").read_text()
    profile = parse_profile(text)
    step = step_yaml(Command("exec", ["id"]), ["id"], 0, None, profile)
    fixes = suggest(text, step, "checked", Diagnosis(passed=True), passed=True)
    assert [s.kind for s in fixes] == ["smoke"] and "to keep it so" in fixes[0].why
    assert suggest(text, None, "not usable", Diagnosis(passed=False), passed=False) == []


def test_step_yaml_carries_timeout_and_stdin_file_relative_to_the_profile(
        tmp_path: Path) -> None:
    profile_path = tmp_path / "app.yaml"
    profile_path.write_text("version: 1\nname: app\nimage: app:1\nrun: {mode: job}\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in/orders.xml").write_bytes(b"<orders/>\n\x00\xff")  # any bytes
    profile = load_profile(profile_path)
    cmd = Command("command", ["python3", "/app/import.py"], stdin_file=tmp_path / "in/orders.xml",
                  timeout=90.0, exit=2)
    step = step_yaml(cmd, cmd.argv, 2, None, profile)
    assert step == {"command": ["python3", "/app/import.py"], "exit": 2, "timeout": "90s",
                    "stdin_file": "in/orders.xml"}
    [fix] = suggest(profile_path.read_text(), step, "checked", Diagnosis(), passed=True)
    profile_path.write_text(apply(profile_path.read_text(), fix.edits))
    [smoke] = load_profile(profile_path).smoke
    assert smoke.step == CommandStep(argv=["python3", "/app/import.py"], exit=2, timeout=90.0,
                                     stdin=b"<orders/>\n\x00\xff")


def tracer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # nothing runs
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["diagnose", "profiles/hardcases.yaml", "--exec", "--", "id"],
     "has no running container to exec into"),
    (["diagnose", "profiles/pyapp.yaml", "--", "id"], "needs --exec"),
    (["diagnose", "profiles/pyapp.yaml", "--env", "A=B"], "--env: only with --exec"),
    (["diagnose", "profiles/pyapp.yaml", "--exec"], "needs the command to replay"),
    (["diagnose", "profiles/pyapp.yaml", "--exec", "--env", "AB", "--", "id"],
     "--env 'AB': expected KEY=VALUE"),
    (["diagnose", "profiles/pyapp.yaml", "--command", "--timeout", "soon", "--", "id"],
     "--timeout 'soon'"),
    (["diagnose", "profiles/pyapp.yaml", "--exec", "--command", "--", "id"], "not allowed"),
])
def test_bad_replay_arguments_exit_2_before_anything_runs(args: list[str],
                                                          message: str) -> None:
    proc = tracer(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_options_after_the_double_dash_belong_to_the_replayed_command() -> None:
    from tracer.cli import _parse

    args = _parse(["diagnose", "p.yaml", "--json", "--command", "--", "python3", "--json",
                   "-c", "x", "--"])
    assert args.json is True and args.replay == "command"
    assert args.argv == ["python3", "--json", "-c", "x", "--"]
    why = _parse(["why", "r.json", "--", "-x"])
    assert why.path == "-x"


def test_json_of_a_diagnosis_lists_the_fixes_in_order(tmp_path: Path) -> None:
    _, d = minimized_python(tmp_path)
    data = json.loads(json.dumps(d.to_json()))
    assert data["suggested_keep_binaries"] == ["/usr/bin/iconv"]
    assert data["suggested_keep_paths"][0] == "/opt/app/plugins/a.py"
    assert data["suggested_keep_globs"][0] == "/opt/app/plugins/*"
    text = d.format_text()
    assert text.index('"/usr/bin/iconv"') < text.index('"/opt/app/plugins/a.py"') < \
        text.index('"/opt/app/plugins/*"')
    assert isinstance(d.missing[0], MissingFile)


def outcome(passed: bool, exit_code: int | None, message: str = "", output: str = "",
            label: str = "smoke[1].command") -> StepOutcome:
    return StepOutcome(label, "command", passed, 0.1, exit_code, message, output)


def ran(stdout: str = "", stderr: str = "", exit_code: int = 0, passed: bool = True,
        label: str = "smoke[1].command") -> StepOutcome:
    """A step's outcome that ran to completion, with its streams as the runner keeps them."""
    return StepOutcome(label, "command", passed, 0.1, exit_code,
                       streams={"stdout": Captured.of(stdout), "stderr": Captured.of(stderr)})


def test_the_step_is_suggested_as_the_second_run_of_the_original_allows() -> None:
    step = make_step(Command("command", ["report"]), ["report"], 0, None, None)
    run = SmokeResult(passed=False, failure="smoke[0].http: refused")
    report = "Rapport des ventes\ncaf\u00e9: 3\n"
    kept, note = _confirmed(step, ran(report), ran(report), run)
    assert kept == make_step(Command("command", ["report"]), ["report"], 0, "Rapport des ventes",
                             None)
    assert note.startswith("checked: it passes on the original image") and "stdout" in note
    # a program that speaks only on stderr is checked there
    kept, note = _confirmed(step, ran(stderr="fixed\n"), ran(stderr="fixed\n"), run)
    assert kept is not None and kept.stdout is None and kept.stderr == "fixed"
    # the output changes between runs, and not only in numbers: only the exit code, said
    kept, note = _confirmed(step, ran("id 6f1c-a\n"), ran("id 0b9e-c\n"), run)
    assert kept == step
    assert "only its exit code is checked, because its output changes between runs of the " \
           "original image (stdout line 1: 'id 6f1c-a' then 'id 0b9e-c')" in note
    kept, note = _confirmed(step, ran(), ran(), run)
    assert kept == step and "because it prints nothing on stdout or stderr" in note
    # the exit code changed between runs: no smoke step at all
    kept, note = _confirmed(step, ran(report), ran(report, exit_code=2, passed=False), run)
    assert kept is None and "not usable as a smoke step" in note and "exited 2" in note
    # the profile's own checks failed before it: unchecked, exit code only
    kept, note = _confirmed(step, ran(report), None, run)
    assert kept == step and "smoke[0].http: refused" in note and "exit code" in note


def test_the_expected_exit_code_is_the_originals_unless_given() -> None:
    run = SmokeResult(passed=False, failure="smoke[0].http: refused")
    assert _expected_exit(outcome(False, 3, "x"), run, Command("command", ["r"]), "img") == 3
    assert _expected_exit(outcome(False, 0, "x"), run, Command("command", ["r"], exit=0),
                          "img") == 0
    with pytest.raises(SmokeFailedOnOriginal, match=r"exit 3, expected 0(.|\n)*half done"
                       r"(.|\n)*pass --exit 3") as failed:
        _expected_exit(outcome(False, 3, "x", "half done\n/.tracer/strace: noise"), run,
                       Command("command", ["r"], exit=0), "img")
    assert "noise" not in str(failed.value)
    with pytest.raises(SmokeFailedOnOriginal, match="before the replayed command.*refused"):
        _expected_exit(None, run, Command("command", ["r"]), "img")
    with pytest.raises(SmokeFailedOnOriginal, match="did not run to completion.*timed out"):
        _expected_exit(outcome(False, None, "timed out after 60s"), run,
                       Command("command", ["r"]), "img")


def paste(text: str, answer: str, option: int = 1) -> str:
    """What an operator makes of fix `option` in `answer`: every `# insert after line N`
    / `# replace lines A-B` block of it done by hand, in the order printed."""
    blocks = answer.split("\n")
    start = next(i for i, ln in enumerate(blocks) if ln.startswith(f"# {option}. "))
    lines = text.split("\n")
    i = start + 1
    while i < len(blocks) and not re.match(r"# \d+\. ", blocks[i]):
        m = re.match(r"# (insert after line (\d+)|replace lines? (\d+)(?:-(\d+))?) of ", blocks[i])
        i += 1
        if m is None:
            continue
        body = []
        while i < len(blocks) and not blocks[i].startswith("#") and blocks[i]:
            body.append(blocks[i])
            i += 1
        if m.group(2) is not None:
            at = int(m.group(2))
            lines[at:at] = body
        else:
            first = int(m.group(3))
            last = int(m.group(4) or first)
            lines[first - 1:last] = body
    return "\n".join(lines)


def test_the_diagnosis_of_a_failed_minimization_pastes_into_the_profile(
        tmp_path: Path) -> None:
    """`tracer minimize` and `tracer diagnose PROFILE` print the fix placed in the operator's
    own file, like the replay does: a second `keep:` would be a duplicate key."""
    _, d = minimized_python(tmp_path)
    text = (PROFILES / "pyapp.yaml").read_text()
    profile = parse_profile(text)
    assert profile.keep.paths  # the profile has a keep: section already
    d.profile_text, d.profile_file = text, "profiles/pyapp.yaml"
    answer = d.format_text()
    for option, paths in ((1, d.keep_paths), (2, d.keep_globs)):
        patched = parse_profile(paste(text, answer, option))
        assert patched.keep.binaries == ["/usr/bin/iconv"]
        assert patched.keep.paths == profile.keep.paths + paths
        assert patched.smoke == profile.smoke and patched.exclude == profile.exclude


def test_a_fix_no_edit_can_make_is_left_out_not_a_crash(tmp_path: Path) -> None:
    """keep.paths that is the anchor of keep.binaries cannot grow without growing both:
    the keep fixes are left out (the smoke step still goes in), never an exit 70."""
    _, d = minimized_python(tmp_path)
    text = ("version: 1\nname: app\nimage: app:1\nkeep:\n  paths: &p [/etc/**]\n"
            "  binaries: *p\n")
    step = {"exec": ["id"], "exit": 0}
    assert [s.kind for s in suggest(text, step, "checked", d, passed=False)] == ["smoke"]
    d.profile_text = text
    assert "keep:\n  binaries:" in d.format_text()  # unplaced, for the operator to merge


def test_a_program_the_original_ran_goes_to_keep_binaries(tmp_path: Path) -> None:
    """On the minimized image a shell only looks `seq` up on its PATH (newfstatat ->
    ENOENT); the original run executed it. It is a program: keep.binaries, not a path."""
    base = tmp_path / "orig"
    (base / "usr/bin").mkdir(parents=True)
    for name in ("sh", "seq"):
        (base / "usr/bin" / name).write_text("#!/usr/bin/sh\n")
        (base / "usr/bin" / name).chmod(0o755)

    def access(syscall: str, ok: bool) -> Access:
        return Access(path="/usr/bin/seq", syscall=syscall, ok=ok,
                      errno=None if ok else "ENOENT", pid=7, program="/usr/bin/sh",
                      cmdline=("sh", "-c", "seq 1 3"), step="smoke[0].command")

    minimized_run = SmokeResult(passed=False, accesses=[access("newfstatat", False)])
    original_run = SmokeResult(passed=True, accesses=[access("newfstatat", True),
                                                      access("execve", True)])
    d = diagnose(minimized_run, RootFS(base), [], original_run=original_run,
                 present={"/usr", "/usr/bin", "/usr/bin/sh"}.__contains__,
                 env={"PATH": "/usr/bin"})
    assert d.keep_binaries == ["/usr/bin/seq"] and d.keep_paths == []
    [missing] = d.missing
    assert (missing.syscall, missing.errno) == ("execve", ABSENT)
