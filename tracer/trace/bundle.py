"""The self-contained strace bundle injected into containers under test.

The image under test may have no libc, a different libc (musl) or a libc too old for the
host's strace. So the bundle carries the host's strace, every library the host's `ldd`
lists for it and the host's loader, and is started through that loader with
`--library-path`: nothing of the image is used to run the tracer, and nothing of the
tracer leaks into what the trace records (its mount point is excluded). Two more host
programs ride along when the host has them: `setpriv` (to start the app as a user strace's
`-u` cannot name, see `users`) and `dash` (the waiter that holds an untraced app until
fanotify's mark is in place). The bundle is mounted read-only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import EnvironmentProblem
from tracer.trace.users import RunAs

BUNDLE_MOUNT = "/.tracer"  # read-only: strace, its libs, the loader
OUTPUT_MOUNT = "/.tracer-out"  # read-only: the FIFOs tracer made (see channels)
# %file: every call taking a path; the fd calls whose path we need; exec; the fork
# family only (not all of %process: wait4/exit_group stops cost time and tell nothing);
# unshare, which can give a thread its own cwd (CLONE_FS).
TRACE_SET = "%file,getdents,getdents64,fchdir,bind,connect,clone,clone3,fork,vfork,unshare"


@dataclass(frozen=True)
class StraceBundle:
    """A bundle directory on the host and how to start strace from it in a container."""

    host_dir: Path
    loader_name: str  # file name of the loader inside the bundle
    has_setpriv: bool = False
    has_dash: bool = False

    def _run(self, program: str) -> list[str]:
        """argv prefix that runs bundled `program` through the bundle's own loader."""
        return [f"{BUNDLE_MOUNT}/{self.loader_name}", "--library-path", f"{BUNDLE_MOUNT}/lib",
                f"{BUNDLE_MOUNT}/{program}"]

    def command(self, output_file: str, argv: list[str], run_as: RunAs | None = None
                ) -> list[str]:
        """argv that runs `argv` under strace, writing the trace to `output_file` (container path).

        `-f --seccomp-bpf` stops only at the traced calls (cheap); `-y` decodes fds to paths
        (dirfds, getdents, fchdir); `-xx` hex-escapes strings so any byte round-trips;
        `-ttt` timestamps attribute calls to smoke steps; `-qq` and `-e signal=none` keep
        strace quiet; `-o` keeps its output away from the app's stdout/stderr. With
        `run_as`, strace stays root and starts the app as the profile's user (`-u NAME`, or
        the bundled setpriv with numeric ids); without `run_as.seccomp` no seccomp filter
        (it would set no_new_privs and cancel setuid and file capabilities).
        """
        seccomp = ["--seccomp-bpf"] if run_as is None or run_as.seccomp else []
        user = ["-u", run_as.strace_user] if run_as and run_as.strace_user else []
        switch = [*self._run("setpriv"), *run_as.setpriv, "--"] if run_as and run_as.setpriv \
            else []
        return [
            *self._run("strace"),
            "-f",
            *seccomp,
            "-qq",
            "-y",
            "-xx",
            "-ttt",
            "-s",
            "4096",
            "-e",
            f"trace={TRACE_SET}",
            "-e",
            "signal=none",
            *user,
            "-o",
            output_file,
            "--",
            *switch,
            *argv,
        ]

    def waiter(self, gate: str, argv: list[str]) -> list[str]:
        """argv that waits for one line on the FIFO `gate`, then execs `argv` (fanotify-only
        runs: the app must not open anything before the mark is in place)."""
        return [*self._run("dash"), "-c", 'read _ < "$0"; exec "$@"', gate,
                *argv]


def _ldd(binary: str) -> tuple[list[Path], Path]:
    """Libraries and loader the host's ldd lists for `binary`."""
    try:
        out = subprocess.run(
            ["ldd", binary], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"cannot list the libraries of {binary} with ldd: {exc}") from exc
    libs: list[Path] = []
    loader: Path | None = None
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line)
        if m:
            libs.append(Path(m.group(2)))
            continue
        m = re.match(r"\s*(/\S+)\s+\(0x", line)
        if m:
            loader = Path(m.group(1))
    if loader is None:
        raise EnvironmentProblem(f"ldd names no loader for {binary}; a static strace needs none")
    return libs, loader


def build_bundle(workdir: Path, strace: str | None = None) -> StraceBundle:
    """Copy the host's strace (and setpriv, dash), their libraries and loader into
    `workdir/strace-bundle`."""
    path = strace or shutil.which("strace")
    if not path or not Path(path).is_file():
        raise EnvironmentProblem("strace is not installed on this host (apt-get install strace)")
    dest = Path(workdir) / "strace-bundle"
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "lib").mkdir(parents=True)
    programs = {"strace": path}
    for extra in ("setpriv", "dash"):
        found = shutil.which(extra)
        if found and Path(found).is_file():
            programs[extra] = found
    loader: Path | None = None
    for name, program in programs.items():
        libs, loader_of = _ldd(program)
        if loader is None:
            loader = loader_of
        elif loader_of.name != loader.name:
            continue  # built for another loader: not usable through ours
        shutil.copy2(Path(program).resolve(), dest / name)
        for lib in libs:
            shutil.copy2(lib.resolve(), dest / "lib" / lib.name)
    assert loader is not None  # strace's, or _ldd raised
    shutil.copy2(loader.resolve(), dest / loader.name)
    for f in [dest, dest / "lib", *dest.rglob("*")]:
        f.chmod(0o755)
    return StraceBundle(dest, loader.name, has_setpriv=(dest / "setpriv").exists(),
                        has_dash=(dest / "dash").exists())
