"""The strace bundle: self-contained (its own loader and libraries) and complete."""

from __future__ import annotations

import subprocess

import pytest
from prereq import missing

from tracer.errors import EnvironmentProblem
from tracer.trace.bundle import BUNDLE_MOUNT, build_bundle
from tracer.trace.users import RunAs


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
    cmd = bundle.command("/.tracer-out/main.trace", ["nginx", "-g", "daemon off;"],
                         env={"LD_PRELOAD": "/x.so", "A": "b=c"})
    loader = [f"{BUNDLE_MOUNT}/{bundle.loader_name}", "--inhibit-cache", "--library-path",
              f"{BUNDLE_MOUNT}/lib"]
    assert cmd[:5] == [*loader, f"{BUNDLE_MOUNT}/strace"]
    assert {"-f", "--seccomp-bpf", "-y", "-xx"} <= set(cmd)
    assert cmd[cmd.index("-o") + 1] == "/.tracer-out/main.trace"
    # the bundle's env gives the app its environment back, the last of the bundle to run
    assert cmd[cmd.index("--") + 1:] == [*loader, f"{BUNDLE_MOUNT}/env", "--",
                                         "LD_PRELOAD=/x.so", "A=b=c", "nginx", "-g",
                                         "daemon off;"]


def test_missing_strace_is_an_environment_problem(tmp_path):
    with pytest.raises(EnvironmentProblem, match="strace"):
        build_bundle(tmp_path, str(tmp_path / "no-such-strace"))


def test_strace_stays_root_and_starts_the_app_as_the_user(host_strace, tmp_path):
    bundle = build_bundle(tmp_path, host_strace)
    cmd = bundle.command("/.tracer-out/main.fifo", ["id"], RunAs("0", strace_user="app"))
    assert cmd[cmd.index("-u") + 1] == "app" and cmd.index("-u") < cmd.index("--")
    assert cmd[-3:] == [f"{BUNDLE_MOUNT}/env", "--", "id"]
    if not bundle.has_setpriv:
        return
    cmd = bundle.command("/.tracer-out/main.fifo", ["id"],
                         RunAs("0", setpriv=["--reuid=7", "--regid=8", "--clear-groups"]))
    assert "-u" not in cmd
    tail = cmd[cmd.index("--") + 1:]
    loader = [f"{BUNDLE_MOUNT}/{bundle.loader_name}", "--inhibit-cache", "--library-path",
              f"{BUNDLE_MOUNT}/lib"]
    assert tail == [*loader, f"{BUNDLE_MOUNT}/setpriv", "--reuid=7", "--regid=8",
                    "--clear-groups", "--", *loader, f"{BUNDLE_MOUNT}/env", "--", "id"]


def test_bundled_setpriv_and_dash_run_through_the_bundle_loader(host_strace, tmp_path):
    """What the container runs, with the host paths of the bundle and an empty environment:
    the waiter reads its gate line and execs the program; setpriv switches the user."""
    bundle = build_bundle(tmp_path, host_strace)
    if not (bundle.has_dash and bundle.has_setpriv):
        missing("this host has no dash or setpriv (util-linux)")
    d = bundle.host_dir
    gate = tmp_path / "gate"
    gate.write_text("go\n")
    cmd = [a.replace(BUNDLE_MOUNT, str(d)) for a in
           bundle.waiter(str(gate), ["env"], {"PATH": "/usr/bin:/bin", "APP": "x"})]
    # the container's environment is the app's, emptied: the waiter gives it back
    out = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": "", "APP": ""},
                         check=True, timeout=30).stdout
    assert sorted(out.splitlines()) == ["APP=x", "PATH=/usr/bin:/bin"]  # no PWD of dash's
    run = [str(d / bundle.loader_name), "--library-path", str(d / "lib"), str(d / "setpriv"),
           "--reuid=65534", "--regid=65534", "--clear-groups", "--", "id", "-u"]
    out = subprocess.run(run, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                         check=True, timeout=30).stdout
    assert out.strip() == "65534"


def test_the_bundle_loader_reads_no_preload_file_and_no_cache_of_the_root(host_strace,
                                                                           tmp_path):
    """glibc's loader reads /etc/ld.so.preload of its root whatever its options say: the
    bundle's copy looks for it inside the bundle, where it never exists."""
    bundle = build_bundle(tmp_path, host_strace)
    d = bundle.host_dir
    loader = (d / bundle.loader_name).read_bytes()
    assert b"/etc/ld.so.preload\0" not in loader
    assert loader.count(f"{BUNDLE_MOUNT}/nopreload".encode() + b"\0") == 1
    trace = tmp_path / "loader.trace"
    subprocess.run([host_strace, "-f", "-e", "trace=%file", "-o", str(trace),
                    str(d / bundle.loader_name), *bundle.loader_options, "--library-path",
                    str(d / "lib"), str(d / "env"), "true"], env={"LD_PRELOAD": ""}, check=True)
    lines = trace.read_text().splitlines()
    execs = [i for i, ln in enumerate(lines) if "execve(" in ln]
    loader_lines = lines[:execs[1]]  # until env execs the program: the bundle's part
    assert any(f"{BUNDLE_MOUNT}/nopreload" in ln for ln in loader_lines)
    assert not [ln for ln in loader_lines if "/etc/ld.so" in ln], loader_lines
