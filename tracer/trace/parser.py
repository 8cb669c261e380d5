"""From strace syscalls to path uses: which path, meaning what, by which program.

The trace is interpreted per process: each pid has a cwd (chdir/fchdir, inherited over
fork/clone, corrected by every `-y` `AT_FDCWD</dir>` annotation) and a program (its last
successful execve: a failed one, such as a PATH search miss, changes nothing), so relative
names become absolute in-container paths and each access says who made it. Paths are kept
as the program named it (symlinks on the way are part of what the image needs).

Every syscall that names a path counts, with its meaning (`result.Meaning`): opens read,
execve execs, stat/access/readlink need the entry, getdents lists, and calls that make,
reach or remove a name at run time (openat with O_CREAT, mkdir, mknod, bind/connect of a
unix socket, the new name of rename/link/symlink, unlink) need the directory they act in.
Failed calls are kept with their errno: they are what a diagnosis needs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO

from tracer.trace.result import Access, Meaning
from tracer.trace.strace_syntax import Syscall, decode_string, fd_path, iter_syscalls, string_list

READ, EXEC, ENTRY, CREATE = Meaning.READ, Meaning.EXEC, Meaning.ENTRY, Meaning.CREATE
REMOVE = Meaning.REMOVE


@dataclass(frozen=True)
class PathArg:
    """One path a syscall names: its dirfd argument (None: relative to the cwd), its path
    argument, and what the call does with it. `meaning=None`: an open, decided by flags."""

    dirfd: int | None
    path: int
    meaning: Meaning | None


def _args(*specs: tuple[int | None, int, Meaning | None]) -> tuple[PathArg, ...]:
    return tuple(PathArg(d, p, m) for d, p, m in specs)


# syscall -> every path it names. Calls of %file not listed (mount, swapon, acct, ...)
# name nothing an application image must ship.
PATH_CALLS: dict[str, tuple[PathArg, ...]] = {
    "open": _args((None, 0, None)),
    "openat": _args((0, 1, None)),
    "openat2": _args((0, 1, None)),
    "creat": _args((None, 0, CREATE)),
    "truncate": _args((None, 0, READ)),
    "uselib": _args((None, 0, READ)),
    "execve": _args((None, 0, EXEC)),
    "execveat": _args((0, 1, EXEC)),
    **{name: _args((None, 0, ENTRY)) for name in (
        "stat", "lstat", "stat64", "lstat64", "access", "readlink", "chdir", "chroot",
        "statfs", "statfs64", "getxattr", "lgetxattr", "listxattr", "llistxattr",
        "setxattr", "lsetxattr", "removexattr", "lremovexattr", "chmod", "chown", "lchown",
        "utimes", "utime")},
    **{name: _args((0, 1, ENTRY)) for name in (
        "newfstatat", "fstatat64", "statx", "faccessat", "faccessat2", "readlinkat",
        "fchmodat", "fchmodat2", "fchownat", "utimensat", "futimesat", "name_to_handle_at")},
    "inotify_add_watch": _args((None, 1, ENTRY)),
    "mkdir": _args((None, 0, CREATE)),
    "mkdirat": _args((0, 1, CREATE)),
    "mknod": _args((None, 0, CREATE)),
    "mknodat": _args((0, 1, CREATE)),
    "link": _args((None, 0, ENTRY), (None, 1, CREATE)),
    "linkat": _args((0, 1, ENTRY), (2, 3, CREATE)),
    "symlink": _args((None, 1, CREATE)),  # argument 0 is the link's text, not a lookup
    "symlinkat": _args((1, 2, CREATE)),
    "rename": _args((None, 0, REMOVE), (None, 1, CREATE)),
    "renameat": _args((0, 1, REMOVE), (2, 3, CREATE)),
    "renameat2": _args((0, 1, REMOVE), (2, 3, CREATE)),
    "unlink": _args((None, 0, REMOVE)),
    "unlinkat": _args((0, 1, REMOVE)),
    "rmdir": _args((None, 0, REMOVE)),
}
# Calls on an fd whose -y path is the thing used (the directory listed, the new cwd).
FD_CALLS = {"getdents": Meaning.LIST, "getdents64": Meaning.LIST, "fchdir": ENTRY}
# Unix sockets by name: strace shows the address as `{sa_family=AF_UNIX, sun_path="..."}`
# (abstract sockets as `sun_path=@"..."`: no file, nothing to keep).
SOCKET_CALLS = {"bind": CREATE, "connect": Meaning.CONNECT}
FORK_CALLS = {"clone", "clone3", "fork", "vfork"}
EXEC_CALLS = {"execve", "execveat"}
OPEN_FLAGS_ARG = {"open": 1, "openat": 2, "openat2": 2}
_SUN_PATH = re.compile(r'sun_path=("(?:[^"\\]|\\.)*"(?:\.\.\.)?)')

INTERESTING = frozenset(PATH_CALLS) | frozenset(FD_CALLS) | frozenset(SOCKET_CALLS) | FORK_CALLS


def open_meaning(flags: str) -> Meaning:
    """An open's meaning from its flags: O_TMPFILE names the directory an unnamed file is
    made in (the directory itself is used), O_CREAT may make the name, else a read."""
    if "O_TMPFILE" in flags:
        return ENTRY
    if "O_CREAT" in flags:
        return CREATE
    return READ


@dataclass
class _Proc:
    cwd: str
    program: str = ""
    cmdline: tuple[str, ...] = ()


MAX_LINE = 32 << 20  # characters of one trace line: strace's longest (an execve's argv
# under -s 4096 -xx, within the kernel's 6 MiB for argv and environment) stays below


@dataclass
class ParsedTrace:
    """What one trace file says: accesses (deduplicated) and programs exec'd successfully.

    `dropped` counts uses not kept because the trace named more distinct uses than the
    cap it was parsed with; `long_lines` counts lines over MAX_LINE, skipped unread.
    """

    accesses: list[Access] = field(default_factory=list)
    execs: list[str] = field(default_factory=list)
    dropped: int = 0
    long_lines: int = 0


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
        max_accesses: int | None = None,
    ) -> None:
        self.step_of = step_of
        self.excluded = excluded
        self.initial_cwd = normalize(initial_cwd or "/")
        self.parents = parents or {}
        self.procs: dict[int, _Proc] = {}
        # deduplicated as they come (a loop of one stat is one use, not millions), at
        # most `max_accesses` distinct ones: memory must not grow with the trace
        self.accesses: list[Access] = []
        self._seen: set[tuple] = set()
        self.max_accesses = max_accesses
        self.dropped = 0
        self.execs: list[str] = []
        self._exec_set: set[str] = set()

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

    def _record(self, sc: Syscall, proc: _Proc, path: str, meaning: Meaning) -> None:
        if self.excluded(path):
            return
        access = Access(
            path=path,
            syscall=sc.name,
            ok=sc.ok,
            errno=sc.errno,
            pid=sc.pid,
            program=proc.program,
            cmdline=proc.cmdline,
            step=self.step_of(sc.ts),
            meaning=meaning,
        )
        key = access.key
        if key in self._seen:
            return
        if self.max_accesses is not None and len(self.accesses) >= self.max_accesses:
            self.dropped += 1
            return
        self._seen.add(key)
        self.accesses.append(access)

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
            self._fd_call(sc, proc)
        elif sc.name in SOCKET_CALLS:
            self._socket_call(sc, proc)
        elif sc.name in PATH_CALLS:
            for arg in PATH_CALLS[sc.name]:
                self._path_arg(sc, proc, arg)

    def _fd_call(self, sc: Syscall, proc: _Proc) -> None:
        path = fd_path(sc.args[0]) if sc.args else None
        if path is None:
            return
        path = normalize(path)
        if sc.name == "fchdir" and sc.ok:
            proc.cwd = path
        self._record(sc, proc, path, FD_CALLS[sc.name])

    def _socket_call(self, sc: Syscall, proc: _Proc) -> None:
        m = _SUN_PATH.search(sc.args[1]) if len(sc.args) > 1 else None
        dec = decode_string(m.group(1)) if m else None
        if dec is None or not dec[0] or dec[1]:  # no name, or cut short: nothing certain
            return
        path = self._resolve(proc, None, dec[0])
        if path is not None:
            self._record(sc, proc, path, SOCKET_CALLS[sc.name])

    def _path_arg(self, sc: Syscall, proc: _Proc, arg: PathArg) -> None:
        if len(sc.args) <= arg.path:
            return
        dec = decode_string(sc.args[arg.path])
        if dec is None:  # NULL or an address: no name to record
            return
        name = dec[0]
        flags = " ".join(sc.args[arg.path + 1 :])
        if name == "" and "AT_EMPTY_PATH" in flags and sc.name not in EXEC_CALLS:
            return  # the call acts on an fd already opened (and recorded) by name
        dirfd = sc.args[arg.dirfd] if arg.dirfd is not None else None
        path = self._resolve(proc, dirfd, name)
        if path is None:
            return
        meaning = arg.meaning
        if meaning is None:
            i = OPEN_FLAGS_ARG[sc.name]
            meaning = open_meaning(sc.args[i] if len(sc.args) > i else "")
        self._record(sc, proc, path, meaning)
        if sc.name == "chdir" and sc.ok:
            proc.cwd = path
        if sc.name in EXEC_CALLS and sc.ok:  # a failed execve runs nothing
            argv_i = arg.path + 1
            proc.program = path
            proc.cmdline = tuple(string_list(sc.args[argv_i])) if len(sc.args) > argv_i else ()
            if not self.excluded(path) and path not in self._exec_set:
                self._exec_set.add(path)
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


class _Lines:
    """The lines of a trace, any number of times over, none longer than MAX_LINE.

    A trace file is read again from its start for each pass (nothing of it is held in
    memory); a line over MAX_LINE (only a process writing into the trace FIFO itself makes
    one) is skipped without ever being held whole.
    """

    def __init__(self, lines: Iterable[str] | IO[str], max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.long_lines = 0
        self._file = lines if hasattr(lines, "readline") and hasattr(lines, "seek") else None
        if self._file is None:
            # a list can be iterated again; a one-shot iterator (tests) is kept as a list
            self._lines = lines if isinstance(lines, list | tuple) else list(lines)

    def __iter__(self) -> Iterator[str]:
        self.long_lines = 0  # of this pass
        if self._file is None:
            for line in self._lines:
                if len(line) > self.max_line:
                    self.long_lines += 1
                    continue
                yield line
            return
        f = self._file
        f.seek(0)
        while True:
            line = f.readline(self.max_line + 1)
            if not line:
                return
            if len(line) <= self.max_line:
                yield line
                continue
            self.long_lines += 1
            while line and not line.endswith("\n"):  # the rest of it, in bounded pieces
                line = f.readline(self.max_line + 1)


def parse_trace(
    lines: Iterable[str] | IO[str],
    *,
    step_of: Callable[[float | None], str] | None = None,
    excluded: Callable[[str], bool] | None = None,
    initial_cwd: str = "/",
    max_accesses: int | None = None,
) -> ParsedTrace:
    """Parse strace output (`-f -y -ttt`, `-xx` recommended) into deduplicated accesses.

    `execs` lists the programs exec'd successfully, in order; failed execve calls (a PATH
    search trying each directory) are accesses with ok=False and never an exec.

    The trace is streamed twice (fork parents, then the calls), so memory grows with the
    distinct uses it names, not with its size; past `max_accesses` distinct uses the rest
    are counted in `dropped`, not kept. A file (anything with `seek`) is read from its
    start for each pass.
    """
    source = _Lines(lines)
    interp = TraceInterpreter(
        step_of=step_of or (lambda _ts: "run"),
        excluded=excluded or (lambda _p: False),
        initial_cwd=initial_cwd,
        parents=fork_parents(iter_syscalls(source, FORK_CALLS)),
        max_accesses=max_accesses,
    )
    for sc in iter_syscalls(source, INTERESTING):
        interp.feed(sc)
    return ParsedTrace(interp.accesses, interp.execs, interp.dropped, source.long_lines)
