"""From strace syscalls to file accesses: which path, resolved how, by which program.

The trace is interpreted per process: each pid has a cwd (chdir/fchdir, inherited over
fork/clone, corrected by every `-y` `AT_FDCWD</dir>` annotation) and a program (its last
successful execve), so relative names become absolute in-container paths and each access
says who made it. Paths are kept as the program named them (symlinks on the way are part
of what the image needs); mkdir/unlink-style targets are ignored (the app creates or
removes them, the image need not ship them); failed lookups are kept with their errno.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from tracer.trace.result import Access, dedupe
from tracer.trace.strace_syntax import Syscall, decode_string, fd_path, iter_syscalls, string_list

# syscall -> (index of the dirfd argument or None, index of the path argument)
PATH_CALLS: dict[str, tuple[int | None, int]] = {
    "open": (None, 0),
    "openat": (0, 1),
    "openat2": (0, 1),
    "execve": (None, 0),
    "execveat": (0, 1),
    "stat": (None, 0),
    "lstat": (None, 0),
    "stat64": (None, 0),
    "lstat64": (None, 0),
    "newfstatat": (0, 1),
    "fstatat64": (0, 1),
    "statx": (0, 1),
    "access": (None, 0),
    "faccessat": (0, 1),
    "faccessat2": (0, 1),
    "readlink": (None, 0),
    "readlinkat": (0, 1),
    "chdir": (None, 0),
    "chroot": (None, 0),
    "statfs": (None, 0),
    "getxattr": (None, 0),
    "lgetxattr": (None, 0),
    "listxattr": (None, 0),
    "llistxattr": (None, 0),
    "chmod": (None, 0),
    "chown": (None, 0),
    "lchown": (None, 0),
    "fchmodat": (0, 1),
    "fchownat": (0, 1),
    "utimensat": (0, 1),
    "utimes": (None, 0),
    "utime": (None, 0),
    "inotify_add_watch": (None, 1),
    "uselib": (None, 0),
    "name_to_handle_at": (0, 1),
}
# Calls on an fd whose -y path is the thing used (the directory listed, the new cwd).
FD_CALLS = {"getdents", "getdents64", "fchdir"}
FORK_CALLS = {"clone", "clone3", "fork", "vfork"}
EXEC_CALLS = {"execve", "execveat"}
# Everything with a name we do not record: targets the app creates, removes or renames.
IGNORED_CALLS = {
    "mkdir",
    "mkdirat",
    "unlink",
    "unlinkat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "mknod",
    "mknodat",
    "creat",
    "truncate",
}

INTERESTING = frozenset(PATH_CALLS) | FD_CALLS | FORK_CALLS


@dataclass
class _Proc:
    cwd: str
    program: str = ""
    cmdline: tuple[str, ...] = ()


@dataclass
class ParsedTrace:
    """What one trace file says: accesses (deduplicated) and programs exec'd successfully."""

    accesses: list[Access] = field(default_factory=list)
    execs: list[str] = field(default_factory=list)
    syscalls: int = 0


def normalize(path: str) -> str:
    """Lexically normalize an absolute path (`//a/./b/../c` -> `/a/c`)."""
    p = posixpath.normpath(path)
    return "/" + p.lstrip("/")


def excluder(prefixes: Iterable[str]) -> Callable[[str], bool]:
    """A predicate true for paths at or under any of the prefixes (/proc, tmpfs dirs, ...)."""
    norm = sorted({normalize(p) for p in prefixes})

    def excluded(path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in norm)

    return excluded


class TraceInterpreter:
    """Turns a stream of syscalls into Access records, tracking each process's cwd/program.

    `step_of` maps a syscall's timestamp to the smoke step label during which it ran;
    `initial` is the state of a pid never seen being forked (the first traced process).
    """

    def __init__(
        self,
        *,
        step_of: Callable[[float | None], str],
        excluded: Callable[[str], bool],
        initial_cwd: str = "/",
        parents: dict[int, int] | None = None,
    ) -> None:
        self.step_of = step_of
        self.excluded = excluded
        self.initial_cwd = normalize(initial_cwd or "/")
        self.parents = parents or {}
        self.procs: dict[int, _Proc] = {}
        self.accesses: list[Access] = []
        self.execs: list[str] = []

    def _proc(self, pid: int) -> _Proc:
        proc = self.procs.get(pid)
        if proc is None:
            parent = self.parents.get(pid)
            if parent is not None and parent != pid:
                proc = replace(self._proc(parent))
            else:
                proc = _Proc(self.initial_cwd)
            self.procs[pid] = proc
        return proc

    def _resolve(self, proc: _Proc, dirfd: str | None, path: str) -> str | None:
        if path.startswith("/"):
            return normalize(path)
        if dirfd is None or dirfd.startswith("AT_FDCWD"):
            if dirfd is not None:
                cwd = fd_path(dirfd)
                if cwd:  # -y tells us the cwd: trust it over our own bookkeeping
                    proc.cwd = normalize(cwd)
            base: str | None = proc.cwd
        else:
            base = fd_path(dirfd)
        if base is None:
            return None
        return normalize(posixpath.join(base, path)) if path else normalize(base)

    def _record(self, sc: Syscall, proc: _Proc, path: str) -> None:
        if self.excluded(path):
            return
        self.accesses.append(
            Access(
                path=path,
                syscall=sc.name,
                ok=sc.ok,
                errno=sc.errno,
                pid=sc.pid,
                program=proc.program,
                cmdline=proc.cmdline,
                step=self.step_of(sc.ts),
            )
        )

    def feed(self, sc: Syscall) -> None:
        if not sc.finished:
            return
        proc = self._proc(sc.pid)
        if sc.name in FORK_CALLS:
            child = sc.ret_int()
            if child and child > 0 and child not in self.procs:
                self.procs[child] = replace(proc)
            return
        if sc.name in FD_CALLS:
            path = fd_path(sc.args[0]) if sc.args else None
            if path is None:
                return
            path = normalize(path)
            if sc.name == "fchdir" and sc.ok:
                proc.cwd = path
            self._record(sc, proc, path)
            return
        spec = PATH_CALLS.get(sc.name)
        if spec is None:
            return
        dirfd_i, path_i = spec
        if len(sc.args) <= path_i:
            return
        dec = decode_string(sc.args[path_i])
        if dec is None:  # NULL or an address: no name to record
            return
        name = dec[0]
        flags = " ".join(sc.args[path_i + 1 :])
        if name == "" and "AT_EMPTY_PATH" in flags and sc.name not in EXEC_CALLS:
            return  # fstat on an fd already opened (and recorded) by name
        dirfd = sc.args[dirfd_i] if dirfd_i is not None else None
        path = self._resolve(proc, dirfd, name)
        if path is None:
            return
        self._record(sc, proc, path)
        if sc.name == "chdir" and sc.ok:
            proc.cwd = path
        if sc.name in EXEC_CALLS and sc.ok:
            argv_i = path_i + 1
            proc.program = path
            proc.cmdline = tuple(string_list(sc.args[argv_i])) if len(sc.args) > argv_i else ()
            if not self.excluded(path) and path not in self.execs:
                self.execs.append(path)


def fork_parents(calls: Iterable[Syscall]) -> dict[int, int]:
    """Child pid -> parent pid, from clone/fork returns, so a child whose first line comes
    before its parent's `clone resumed` still inherits the parent's cwd and program."""
    parents: dict[int, int] = {}
    for sc in calls:
        if sc.name in FORK_CALLS and sc.ok:
            child = sc.ret_int()
            if child and child > 0:
                parents.setdefault(child, sc.pid)
    return parents


def parse_trace(
    lines: Iterable[str],
    *,
    step_of: Callable[[float | None], str] | None = None,
    excluded: Callable[[str], bool] | None = None,
    initial_cwd: str = "/",
) -> ParsedTrace:
    """Parse strace output (`-f -y -ttt`, `-xx` recommended) into deduplicated accesses."""
    calls = list(iter_syscalls(lines, INTERESTING))
    interp = TraceInterpreter(
        step_of=step_of or (lambda _ts: "run"),
        excluded=excluded or (lambda _p: False),
        initial_cwd=initial_cwd,
        parents=fork_parents(calls),
    )
    for sc in calls:
        interp.feed(sc)
    return ParsedTrace(dedupe(interp.accesses), interp.execs, len(calls))
