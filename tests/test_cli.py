"""The command line as scripts use it: help, exit codes, `validate` and `ldd`."""

from __future__ import annotations

import json
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
    for word in ("minimize", "diagnose", "why", "batch", "ldd", "validate", "exit codes"):
        assert word in proc.stdout
    sub = tracer("minimize", "--help")
    assert "--report" in sub.stdout and "--output" in sub.stdout and "3 the smoke test" in \
        sub.stdout


def test_bad_arguments_exit_2() -> None:
    proc = tracer("minimize")
    assert proc.returncode == 2 and "the following arguments are required" in proc.stderr
    assert tracer("frobnicate").returncode == 2


def test_validate_accepts_the_shipped_profiles_and_names_errors(tmp_path: Path) -> None:
    ok = tracer("validate", *sorted(str(p) for p in (REPO / "profiles").glob("*.yaml")))
    assert ok.returncode == 0 and ok.stdout.count(": ok (") == 4
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
