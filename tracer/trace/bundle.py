"""The self-contained strace bundle injected into containers under test.

The image under test may have no libc, a different libc (musl) or a libc too old for the
host's strace. So the bundle carries the host's strace, every library the host's `ldd`
lists for it and the host's loader, and is started through that loader with
`--library-path`: nothing of the image is used to run the tracer, and nothing of the
tracer leaks into what the trace records (its mount point is excluded). More host
programs ride along: `env` (below), and when the host has them `setpriv` (to start the app
as a user strace's `-u` cannot name, see `users`) and `dash` (the waiter that holds an
untraced app until fanotify's mark is in place). The bundle is mounted read-only.

Nothing of the image may run inside these programs: strace runs as root, and code of the
image in it could write what it likes into the trace. A loader loads what `LD_PRELOAD`
(and LD_AUDIT, ...) in its environment and `/etc/ld.so.preload` of its root name, and in
the container both are the image's. So:
- the bundle's copy of the glibc loader reads its preload file from a path inside the
  bundle that does not exist (the path's bytes are replaced, same length: there is no
  option to switch that file off), and `--inhibit-cache` keeps the image's ld.so.cache out;
- the container's own environment holds every variable of the app's environment with an
  empty value (`recorder_env`; the engine cannot remove a variable of the image), so the
  bundle's programs run with nothing of the image in theirs;
- the bundled `env`, the last program of the bundle to run, already as the app's user,
  gives the app its environment back, exactly (`restore`).
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
    # glibc's loader: no ld.so.cache (musl's loader has neither the cache nor the option)
    loader_options: tuple[str, ...] = ("--inhibit-cache",)

    def _run(self, program: str) -> list[str]:
        """argv prefix that runs bundled `program` through the bundle's own loader (its
        libraries only: not the image's ld.so.cache, nor its preload file)."""
        return [f"{BUNDLE_MOUNT}/{self.loader_name}", *self.loader_options, "--library-path",
                f"{BUNDLE_MOUNT}/lib", f"{BUNDLE_MOUNT}/{program}"]

    def restore(self, env: dict[str, str], argv: list[str], *, unset: tuple[str, ...] = ()
                ) -> list[str]:
        """argv that starts `argv` with the app's environment `env` back (the container's
        has every one of these names empty, see `recorder_env`), `unset` removed."""
        return [*self._run("env"), *(a for name in unset for a in ("-u", name)), "--",
                *(f"{name}={value}" for name, value in env.items()), *argv]

    def command(self, output_file: str, argv: list[str], run_as: RunAs | None = None,
                env: dict[str, str] | None = None) -> list[str]:
        """argv that runs `argv` under strace, writing the trace to `output_file` (container path).

        `-f --seccomp-bpf` stops only at the traced calls (cheap); `-y` decodes fds to paths
        (dirfds, getdents, fchdir); `-xx` hex-escapes strings so any byte round-trips;
        `-ttt` timestamps attribute calls to smoke steps; `-qq` and `-e signal=none` keep
        strace quiet; `-o` keeps its output away from the app's stdout/stderr. With
        `run_as`, strace stays root and starts the app as the profile's user (`-u NAME`, or
        the bundled setpriv with numeric ids); without `run_as.seccomp` no seccomp filter
        (it would set no_new_privs and cancel setuid and file capabilities). strace and
        setpriv run with the container's emptied environment; the bundled `env` gives the
        app its environment `env` (the image's with the profile's over it) back.
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
            *self.restore(env or {}, argv),
        ]

    def waiter(self, gate: str, argv: list[str], env: dict[str, str] | None = None
               ) -> list[str]:
        """argv that waits for one line on the FIFO `gate`, then execs `argv` with its
        environment `env` back (fanotify-only runs: the app must not open anything before
        the mark is in place). dash exports a PWD of its own: removed unless `env` has it."""
        return [*self._run("dash"), "-c", 'read _ < "$0"; exec "$@"', gate,
                *self.restore(env or {}, argv, unset=("PWD",))]


def recorder_env(app_env: dict[str, str]) -> dict[str, str]:
    """The container's environment when the bundle starts the app: every name of the app's
    environment (the image's Env with the profile's over it), with an empty value. The
    engine merges the image's Env under whatever a container sets and cannot remove a
    name, but an empty LD_PRELOAD, LD_AUDIT, LOCPATH, GCONV_PATH or GLIBC_TUNABLES names
    nothing: the bundle's programs start with nothing of the image."""
    return {name: "" for name in app_env}


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
    env = shutil.which("env")
    if not env or not Path(env).is_file():
        raise EnvironmentProblem("the host has no env program (coreutils) to give the traced "
                                 "app its environment")
    programs["env"] = env
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
    if not (dest / "env").exists():
        raise EnvironmentProblem(f"the host's env ({env}) is not built for strace's loader")
    glibc = _copy_loader(loader.resolve(), dest / loader.name)
    for f in [dest, dest / "lib", *dest.rglob("*")]:
        f.chmod(0o755)
    return StraceBundle(dest, loader.name, has_setpriv=(dest / "setpriv").exists(),
                        has_dash=(dest / "dash").exists(),
                        loader_options=("--inhibit-cache",) if glibc else ())


PRELOAD_FILE = b"/etc/ld.so.preload"
# where the bundle's loader looks instead: inside the read-only bundle, never created
NO_PRELOAD_FILE = f"{BUNDLE_MOUNT}/nopreload".encode()
assert len(NO_PRELOAD_FILE) == len(PRELOAD_FILE)


def _copy_loader(src: Path, dest: Path) -> bool:
    """Copy the host's loader with its preload file moved into the bundle (module
    docstring); True for glibc's. glibc's loader names the file once, as a constant
    string; a loader that does not name it (musl's reads no such file) is copied as is."""
    data = src.read_bytes()
    text = PRELOAD_FILE + b"\0"
    if data.count(text) > 1:
        raise EnvironmentProblem(f"the host's loader {src} names {PRELOAD_FILE.decode()} "
                                 "more than once: tracer cannot keep the image's preload "
                                 "file out of strace")
    dest.write_bytes(data.replace(text, NO_PRELOAD_FILE + b"\0"))
    shutil.copystat(src, dest)
    return text in data
