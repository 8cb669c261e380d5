"""The self-contained strace bundle injected into containers under test.

The image under test may have no libc, a different libc (musl) or a libc too old for the
host's strace. So the bundle carries the host's strace, every library the host's `ldd`
lists for it and the host's loader, and is started through that loader with
`--library-path`: nothing of the image is used to run the tracer, and nothing of the
tracer leaks into what the trace records (its mount point is excluded).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import EnvironmentProblem

BUNDLE_MOUNT = "/.tracer"  # read-only: strace, its libs, the loader
OUTPUT_MOUNT = "/.tracer-out"  # writable by anyone: the trace files
# %file: every call taking a path; the fd calls whose path we need; exec; and the fork
# family only (not all of %process: wait4/exit_group stops cost time and tell nothing).
TRACE_SET = "%file,getdents,getdents64,fchdir,bind,connect,clone,clone3,fork,vfork"


@dataclass(frozen=True)
class StraceBundle:
    """A bundle directory on the host and how to start strace from it in a container."""

    host_dir: Path
    loader_name: str  # file name of the loader inside the bundle

    def command(self, output_file: str, argv: list[str]) -> list[str]:
        """argv that runs `argv` under strace, writing the trace to `output_file` (container path).

        `-f --seccomp-bpf` stops only at the traced calls (cheap); `-y` decodes fds to paths
        (dirfds, getdents, fchdir); `-xx` hex-escapes strings so any byte round-trips;
        `-ttt` timestamps attribute calls to smoke steps; `-qq` and `-e signal=none` keep
        strace quiet; `-o` keeps its output away from the app's stdout/stderr.
        """
        return [
            f"{BUNDLE_MOUNT}/{self.loader_name}",
            "--library-path",
            f"{BUNDLE_MOUNT}/lib",
            f"{BUNDLE_MOUNT}/strace",
            "-f",
            "--seccomp-bpf",
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
            "-o",
            output_file,
            "--",
            *argv,
        ]


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
    """Copy the host's strace, its libraries and loader into `workdir/strace-bundle`."""
    path = strace or shutil.which("strace")
    if not path or not Path(path).is_file():
        raise EnvironmentProblem("strace is not installed on this host (apt-get install strace)")
    dest = Path(workdir) / "strace-bundle"
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "lib").mkdir(parents=True)
    libs, loader = _ldd(path)
    shutil.copy2(Path(path).resolve(), dest / "strace")
    for lib in libs:
        shutil.copy2(lib.resolve(), dest / "lib" / lib.name)
    shutil.copy2(loader.resolve(), dest / loader.name)
    for f in [dest, dest / "lib", *dest.rglob("*")]:
        f.chmod(0o755)
    return StraceBundle(dest, loader.name)


def make_output_dir(workdir: Path, name: str = "trace-out") -> Path:
    """A directory for trace files that the app's user (maybe not root) can write (1777)."""
    out = Path(workdir) / name
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o1777)
    return out
