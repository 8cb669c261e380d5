"""The command line as scripts use it: help, exit codes, `validate` and `ldd`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def tracer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def test_help_explains_commands_and_exit_codes() -> None:
    proc = tracer("--help")
    assert proc.returncode == 0
    for word in ("minimize", "diagnose", "why", "batch", "ldd", "validate", "init", "schema",
                 "exit codes", "docs/profile.md"):
        assert word in proc.stdout
    sub = tracer("minimize", "--help")
    assert "--report" in sub.stdout and "--output" in sub.stdout
    # every code a script may see, one line each (docs/profile.md's table holds the same)
    listed = {int(m) for m in re.findall(r"(?m)^  (\d+) +\S", sub.stdout)}
    assert listed == {0, 1, 2, 3, 4, 70, 130, 141}
    assert re.search(r"(?m)^  3 +the smoke test failed on the original image$", sub.stdout)


def test_bad_arguments_exit_2() -> None:
    proc = tracer("minimize")
    assert proc.returncode == 2 and "the following arguments are required" in proc.stderr
    assert tracer("frobnicate").returncode == 2


def test_validate_accepts_the_shipped_profiles_and_names_errors(tmp_path: Path) -> None:
    shipped = sorted(str(p) for p in (REPO / "profiles").glob("*.yaml"))
    ok = tracer("validate", *shipped)
    assert ok.returncode == 0 and ok.stdout.count(": ok - ") == len(shipped) >= 4
    assert "profiles/nginx.yaml: ok - nginx, 5 checks (the ready check + 4 smoke steps)" \
        in ok.stdout
    assert "profiles/hardcases.yaml: ok - hardcases, 3 checks (the job's own run + 2 smoke " \
        "steps)" in ok.stdout
    assert "?" not in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: app\nimage: 'oci:'\nrun: {mode: batch}\n")
    proc = tracer("validate", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:3: image:" in proc.stderr
    assert f"{bad}:4: run.mode: expected one of service, job, got 'batch'" in proc.stderr


def test_ldd_bad_reference_exits_2() -> None:
    proc = tracer("ldd", "docker-archive:/no/such/archive.tar")
    assert proc.returncode == 2 and "archive.tar" in proc.stderr


@pytest.mark.integration
def test_ldd_resolves_runpath_origin_inside_an_image(fixture_image) -> None:
    image = fixture_image("hardcases")
    proc = tracer("ldd", f"docker-daemon:{image}", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    paths = {f["path"] for f in data["files"]}
    # entrypoint /opt/hard/bin/hard with RUNPATH $ORIGIN/../lib
    assert {"/opt/hard/bin/hard", "/opt/hard/lib/libhardpriv.so"} <= paths
    assert any(p.endswith("/libc.so.6") for p in paths)
    assert data["missing"] == []
    text = tracer("ldd", f"docker-daemon:{image}", "/usr/bin/getent")
    assert text.returncode == 0 and "libc.so.6" in text.stdout


def test_an_internal_error_is_not_mistaken_for_a_failed_verification(monkeypatch, capsys) -> None:
    """Exit 1 means "the minimized image failed"; a crash in tracer must say something else."""
    from tracer import cli

    def boom(args):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(cli.COMMANDS, "validate", boom)
    assert cli.main(["validate", "x.yaml"]) == cli.INTERNAL_ERROR == 70
    assert "internal error: RuntimeError: kaboom" in capsys.readouterr().err


def test_schema_prints_the_shipped_json_schema() -> None:
    proc = tracer("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert proc.stdout == (REPO / "tracer" / "profile" / "profile.schema.json").read_text()


def test_budget_and_granularity_flags_are_checked(tmp_path: Path) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("version: 1\nname: a\nimage: a:1\n# " + "x" * 1_100_000 + "\n")
    refused = tracer("validate", str(prof))
    assert refused.returncode == 2
    assert f"{prof}: the profile is larger than the profile_bytes budget of 1MiB" in \
        refused.stderr and "--budget profile_bytes=N" in refused.stderr
    raised = tracer("validate", str(prof), "--budget", "profile_bytes=2MiB")
    assert raised.returncode == 0, raised.stderr
    for args, message in [
        (["validate", str(prof), "--budget", "layer=3"], "did you mean 'layers'?"),
        (["validate", str(prof), "--budget", "layers"], "expected NAME=VALUE"),
        (["minimize", str(prof), "--budget", "image_bytes=lots"], "budget image_bytes"),
        (["minimize", str(prof), "--granularity", "dir"], "invalid choice: 'dir'"),
        (["batch", str(prof), "--granularity", "dir"], "invalid choice: 'dir'"),
        (["ldd", "a:1", "--budget", "nope=1"], "unknown budget 'nope'"),
        (["diagnose", str(prof), "--budget", "nope=1"], "unknown budget 'nope'"),
    ]:
        proc = tracer(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_batch_refuses_two_profiles_with_one_name(tmp_path: Path) -> None:
    first, second = tmp_path / "web.yaml", tmp_path / "web-copy.yaml"
    for p in (first, second):
        p.write_text("version: 1\nname: web\nimage: docker-archive:/nonexistent/x.tar\n")
    (tmp_path / "other.yaml").write_text("version: 1\nname: other\nimage: a:1\n")
    (tmp_path / "broken.yaml").write_text("version: 1\nname: web\nimage: [\n")
    proc = tracer("batch", str(tmp_path), str(first), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{second} and {first} both have name: web" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_batch_passes_budget_and_granularity_to_every_job(tmp_path: Path) -> None:
    """The batch loads each profile with --budget (a 1.5 MiB profile loads), and so does
    each `tracer minimize` child: it fails on the missing directory, not on the budget."""
    prof = tmp_path / "big.yaml"
    prof.write_text("version: 1\nname: big\nimage: docker-archive:/nonexistent/big.tar\n"
                    "keep: {granularity: file}\n# " + "x" * 1_500_000 + "\n")
    out = tmp_path / "out"
    proc = tracer("batch", str(prof), "--out", str(out), "--budget", "profile_bytes=2MiB",
                  "--granularity", "package")
    assert proc.returncode == 1, proc.stderr
    log = (out / "big" / "run.log").read_text()
    assert "profile_bytes" not in log and "/nonexistent" in log


@pytest.mark.parametrize("error, code", [
    ("BadInput", 2), ("ImageFormatError", 2), ("BudgetExceeded", 2), ("ProfileErrors", 2),
    ("SmokeFailedOnOriginal", 3), ("EnvironmentProblem", 4)])
def test_every_error_kind_exits_with_the_contracts_code(monkeypatch, capsys, error: str,
                                                        code: int) -> None:
    """Scripts and `tracer batch` act on exit codes: each kind of failure maps to its own
    code in one place (main), whatever command raised it, and says why on stderr."""
    from tracer import budgets, cli, errors
    from tracer.profile import document

    make = {"BadInput": lambda: errors.BadInput("bad"),
            "ImageFormatError": lambda: errors.ImageFormatError("bad"),
            "BudgetExceeded": lambda: budgets.BudgetExceeded("layers", 1, "bad"),
            "ProfileErrors": lambda: document.ProfileErrors(["p.yaml:1: bad"]),
            "SmokeFailedOnOriginal": lambda: errors.SmokeFailedOnOriginal("bad"),
            "EnvironmentProblem": lambda: errors.EnvironmentProblem("bad")}[error]

    def fail(args):
        raise make()

    for command in ("validate", "minimize", "batch"):
        monkeypatch.setitem(cli.COMMANDS, command, fail)
    assert cli.main(["validate", "x.yaml"]) == code
    assert cli.main(["minimize", "x.yaml"]) == code
    assert cli.main(["batch", "x.yaml"]) == code
    assert "bad" in capsys.readouterr().err


def test_a_failed_verification_exits_1_and_ctrl_c_130(monkeypatch, capsys) -> None:
    from tracer import cli, pipeline
    from tracer.profile import load
    from tracer.profile.model import Profile
    from tracer.report import Report

    monkeypatch.setattr(load, "load_profile",
                        lambda *a, **k: Profile(name="app", image="app:1"))
    monkeypatch.setattr(pipeline, "minimize",
                        lambda *a, **k: Report(name="app", image="app:1", output="app:min",
                                               verified=False, failure="smoke[0]: broken"))
    assert cli.main(["minimize", "x.yaml"]) == 1
    assert "FAILED verification" in capsys.readouterr().err

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "minimize", interrupted)
    assert cli.main(["minimize", "x.yaml"]) == 130


def test_report_and_out_places_are_checked_before_any_work(tmp_path: Path) -> None:
    """A --report in a missing directory used to cost the whole traced run and then end in
    a traceback (exit 70); a mistyped place is bad input, said before anything runs."""
    prof = tmp_path / "p.yaml"
    prof.write_text("version: 1\nname: a\nimage: docker-archive:/nonexistent/a.tar\n")
    missing_dir = tmp_path / "no-such-dir"
    proc = tracer("minimize", str(prof), "--report", str(missing_dir / "a.json"))
    assert proc.returncode == 2, proc.stderr
    assert f"directory {missing_dir} does not exist" in proc.stderr
    assert "a.tar" not in proc.stderr and "Traceback" not in proc.stderr  # nothing ran
    proc = tracer("minimize", str(prof), "--report", str(tmp_path))
    assert proc.returncode == 2 and "is a directory; give a file name" in proc.stderr
    proc = tracer("batch", str(prof), "--out", str(prof))
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_first_try_without_arguments_shows_the_commands() -> None:
    proc = tracer()
    assert proc.returncode == 2
    for word in ("minimize", "validate", "init", "why", "exit codes"):
        assert word in proc.stderr


def test_validate_takes_a_directory_as_batch_does() -> None:
    shipped = sorted((REPO / "profiles").glob("*.yaml"))
    proc = tracer("validate", "profiles")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": ok - ") == len(shipped)
    assert tracer("validate", "no-such-dir").returncode == 2


def test_why_given_a_profile_says_which_file_it_wants(tmp_path: Path) -> None:
    prof = tmp_path / "app.yaml"
    prof.write_text("version: 1\nname: app\nimage: app:1\n")
    proc = tracer("why", str(prof), "/etc/passwd")
    assert proc.returncode == 2
    assert "looks like a profile" in proc.stderr and "--report FILE.json" in proc.stderr


def test_output_cut_short_by_its_reader_is_no_internal_error() -> None:
    """`tracer validate profiles | head -1`: the reader goes away; that is not a bug in
    tracer (exit 70 with a traceback) but the usual SIGPIPE ending."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "tracer", "validate", "profiles"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              timeout=600)
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


@pytest.mark.parametrize("command", [["diagnose", "profiles/nginx.yaml"],
                                     ["minimize", "profiles/nginx.yaml"],
                                     ["init", "docker-daemon:tracer-fixture/nginx:test"]])
def test_no_engine_is_exit_4_naming_where_it_looked(command: list[str]) -> None:
    """No engine is the machine's problem (exit 4), never bad input, and the message says
    where tracer looked and why it got no answer, in words."""
    proc = subprocess.run([sys.executable, "-m", "tracer", *command], capture_output=True,
                          text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 4, proc.stderr
    assert "no Docker engine answers at unix:///nonexistent/docker.sock (no such socket)" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
