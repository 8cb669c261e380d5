"""The strace bundle: self-contained (its own loader and libraries) and complete."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tracer.errors import EnvironmentProblem
from tracer.trace.bundle import BUNDLE_MOUNT, build_bundle, make_output_dir


def test_bundle_runs_strace_through_its_own_loader_with_an_empty_environment(host_strace, tmp_path):
    bundle = build_bundle(tmp_path, host_strace)
    d = bundle.host_dir
    assert (d / "strace").is_file() and (d / bundle.loader_name).is_file()
    assert (d / "lib" / "libc.so.6").is_file()
    # exactly how the container starts it, with the host paths of the bundle
    cmd = [str(d / bundle.loader_name), "--library-path", str(d / "lib"), str(d / "strace"), "-V"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={}, check=True).stdout
    assert "strace -- version" in out


def test_bundle_command_wraps_argv_with_follow_forks_and_seccomp(host_strace, tmp_path):
    bundle = build_bundle(tmp_path, host_strace)
    cmd = bundle.command("/.tracer-out/main.trace", ["nginx", "-g", "daemon off;"])
    assert cmd[0] == f"{BUNDLE_MOUNT}/{bundle.loader_name}"
    assert cmd[1:3] == ["--library-path", f"{BUNDLE_MOUNT}/lib"]
    assert {"-f", "--seccomp-bpf", "-y", "-xx"} <= set(cmd)
    assert cmd[cmd.index("-o") + 1] == "/.tracer-out/main.trace"
    assert cmd[-4:] == ["--", "nginx", "-g", "daemon off;"]


def test_missing_strace_is_an_environment_problem(tmp_path):
    with pytest.raises(EnvironmentProblem, match="strace"):
        build_bundle(tmp_path, str(tmp_path / "no-such-strace"))


def test_output_dir_is_writable_by_any_user(tmp_path: Path):
    out = make_output_dir(tmp_path)
    assert out.stat().st_mode & 0o7777 == 0o1777
