"""From strace syscalls to path uses: which path, meaning what, by which program.

The trace is interpreted per process: each pid has a root (chroot) and a cwd (chdir,
fchdir, inherited over fork/clone, shared by CLONE_FS threads, corrected by every `-y`
`AT_FDCWD</dir>` annotation) and a program (its last successful execve). Only a call that
succeeded changes them: a failed chdir, chroot or execve (a PATH search miss) changes
nothing, and one that succeeded on a directory the trace cannot name makes it unknown, so
later relative names are never resolved against a stale one. Relative names become
absolute in-container paths and each access says who made it. Paths are kept as the
program named it (symlinks on the way are part of what the image needs). What the
interpreter holds is bounded (`proc_state`): no path over the path limit, one copy of
each string, a byte budget over all of it, and no recursion on anything the trace nests.

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
from dataclasses import dataclass, field
from typing import IO

from tracer.trace.proc_state import (
    ACCESS_COST,
    PROC_COST,
    UNKNOWN,
    Dir,
    Fs,
    Proc,
    StateBudget,
    absolute,
    walk,
)
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
_SUN_PATH = re.compile(r'sun_path=("[^"\\]*+(?:\\.[^"\\]*+)*+"(?:\.\.\.)?)')

# unshare(CLONE_FS) gives a thread its own root and cwd
INTERESTING = (frozenset(PATH_CALLS) | frozenset(FD_CALLS) | frozenset(SOCKET_CALLS)
               | FORK_CALLS | {"unshare"})


def open_meaning(flags: str) -> Meaning:
    """An open's meaning from its flags: O_TMPFILE names the directory an unnamed file is
    made in (the directory itself is used), O_CREAT may make the name, else a read."""
    if "O_TMPFILE" in flags:
        return ENTRY
    if "O_CREAT" in flags:
        return CREATE
    return READ


MAX_LINE = 32 << 20  # characters of one trace line: strace's longest (an execve's argv
# under -s 4096 -xx, within the kernel's 6 MiB for argv and environment) stays below
PATH_LIMIT = 4096  # Budgets.path_length: no longer path can be in an image
_CLONE_FS = re.compile(r"\bCLONE_FS\b")


@dataclass
class ParsedTrace:
    """What one trace file says: accesses (deduplicated) and programs exec'd successfully.

    `dropped` counts uses not kept because the trace named more distinct uses than the
    cap it was parsed with; `long_lines` counts lines over MAX_LINE, skipped unread;
    `unresolved` counts uses of a name longer than the path limit or relative to a
    directory the trace does not name; `refused` counts calls not interpreted because the
    derived state reached its byte budget (`state_bytes` were spent).
    """

    accesses: list[Access] = field(default_factory=list)
    execs: list[str] = field(default_factory=list)
    dropped: int = 0
    long_lines: int = 0
    unresolved: int = 0
    refused: int = 0
    state_bytes: int = 0


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
    """Turns a stream of syscalls into Access records, tracking each process's root, cwd
    and program (`proc_state`: bounded, iterative, changed only by calls that succeeded).

    `step_of` maps a syscall's timestamp to the smoke step label during which it ran;
    `initial_cwd` is the cwd of a pid never seen being forked (the first traced process).
    `parents` (child -> (parent, shares its fs)) lets a child whose first line comes before
    its parent's `clone resumed` inherit the parent's state. Everything kept is charged to
    `budget` (`state_bytes`); `path_limit` is the longest path that can be recorded.
    """

    def __init__(
        self,
        *,
        step_of: Callable[[float | None], str],
        excluded: Callable[[str], bool],
        initial_cwd: str = "/",
        parents: dict[int, tuple[int, bool]] | None = None,
        max_accesses: int | None = None,
        path_limit: int = PATH_LIMIT,
        budget: StateBudget | None = None,
    ) -> None:
        self.step_of = step_of
        self.excluded = excluded
        self.limit = path_limit
        self.budget = budget or StateBudget(None)
        self.initial_cwd = absolute(initial_cwd or "/", path_limit)
        self.parents = parents or {}
        self.procs: dict[int, Proc] = {}
        # deduplicated as they come (a loop of one stat is one use, not millions), at
        # most `max_accesses` distinct ones: memory must not grow with the trace
        self.accesses: list[Access] = []
        self._seen: set[tuple] = set()
        self.max_accesses = max_accesses
        self.dropped = 0
        self.unresolved = 0
        self.refused = 0
        self.execs: list[str] = []
        self._exec_set: set[str] = set()

    # -- state ----------------------------------------------------------------------------

    def _proc(self, pid: int) -> Proc | None:
        """The state of `pid`, made from its nearest known ancestor (iteratively: a chain
        of thousands of vforks is a list here, not a recursion); None when the budget is
        spent."""
        proc = self.procs.get(pid)
        if proc is not None:
            return proc
        chain: list[tuple[int, bool]] = []  # (pid, shares its parent's fs), child first
        seen = {pid}
        cur, shares = pid, False
        base: Proc | None = None
        while True:
            link = self.parents.get(cur)
            chain.append((cur, shares))
            if link is None or link[0] in seen:  # the first process, or a forged cycle
                break
            (cur, shares), parent_state = link, self.procs.get(link[0])
            if parent_state is not None:
                base = parent_state
                break
            seen.add(cur)
        for child, child_shares in reversed(chain):
            if not self.budget.charge(PROC_COST):
                return None
            base = base.child(child_shares) if base is not None else \
                Proc(Fs("/", self.initial_cwd))
            self.procs[child] = base
        return base

    def _keep_dir(self, where: Dir) -> Dir | None:
        """`where` with its path interned (charged); None when the budget is spent."""
        if where.path is None:
            return where
        path = self.budget.string(where.path)
        return None if path is None else Dir(path, where.below)

    def _resolve(self, proc: Proc, dirfd: str | None, name: str) -> Dir:
        """Where `name` (with its dirfd token, None: the cwd) points, lexically."""
        fs = proc.fs
        if name.startswith("/"):
            base = Dir(fs.root) if fs.root is not None else UNKNOWN
            return walk(base, name, floor=fs.root or "/", limit=self.limit)
        if dirfd is None or dirfd.startswith("AT_FDCWD"):
            annotated = fd_path(dirfd) if dirfd is not None else None
            if annotated is not None and annotated != fs.cwd.path:
                # -y tells us the cwd: trust it over our own bookkeeping
                told = self._keep_dir(absolute(annotated, self.limit))
                if told is not None and told.known:
                    fs.cwd = told
            base = fs.cwd
        else:
            base = absolute(fd_path(dirfd), self.limit)
        return walk(base, name, floor=fs.root or "/", limit=self.limit)

    # -- records --------------------------------------------------------------------------

    def _record(self, sc: Syscall, proc: Proc, where: Dir, meaning: Meaning) -> None:
        if not where.known:
            self.unresolved += 1
            return
        assert where.path is not None
        if self.excluded(where.path):
            return
        step = self.step_of(sc.ts)
        key = (where.path, sc.name, sc.ok, sc.errno, proc.program, step,
               str(Meaning.EXEC if sc.name in EXEC_CALLS else meaning))
        if key in self._seen:
            return
        if self.max_accesses is not None and len(self.accesses) >= self.max_accesses:
            self.dropped += 1
            return
        path = self.budget.string(where.path)
        if path is None or not self.budget.charge(ACCESS_COST):
            self.refused += 1
            return
        access = Access(path=path, syscall=sc.name, ok=sc.ok, errno=sc.errno, pid=sc.pid,
                        program=proc.program, cmdline=proc.cmdline, step=step,
                        meaning=meaning)
        self._seen.add(access.key)
        self.accesses.append(access)

    def feed(self, sc: Syscall) -> None:
        if not sc.finished:
            return
        if self.budget.full:
            self.refused += 1
            return
        proc = self._proc(sc.pid)
        if proc is None:
            self.refused += 1
            return
        if sc.name in FORK_CALLS:
            child = sc.ret_int()
            if child and child > 0 and child not in self.procs:
                if self.budget.charge(PROC_COST):
                    self.procs[child] = proc.child(_shares_fs(sc))
                else:
                    self.refused += 1
            return
        if sc.name == "unshare":
            if sc.ok and sc.args and _CLONE_FS.search(sc.args[0]):
                proc.fs = proc.fs.copy()  # its own from now on
            return
        if sc.name in FD_CALLS:
            self._fd_call(sc, proc)
        elif sc.name in SOCKET_CALLS:
            self._socket_call(sc, proc)
        elif sc.name in PATH_CALLS:
            for arg in PATH_CALLS[sc.name]:
                self._path_arg(sc, proc, arg)

    def _fd_call(self, sc: Syscall, proc: Proc) -> None:
        where = absolute(fd_path(sc.args[0]) if sc.args else None, self.limit)
        if sc.name == "fchdir" and sc.ok:
            # a directory strace could not name is still the new cwd: not known from here
            kept = self._keep_dir(where)
            if kept is None:
                self.refused += 1
                return
            proc.fs.cwd = kept
        if where.path is None:
            return  # no name to record (a pipe, a socket, an fd strace did not annotate)
        self._record(sc, proc, where, FD_CALLS[sc.name])

    def _socket_call(self, sc: Syscall, proc: Proc) -> None:
        m = _SUN_PATH.search(sc.args[1]) if len(sc.args) > 1 else None
        dec = decode_string(m.group(1)) if m else None
        if dec is None or not dec[0] or dec[1]:  # no name, or cut short: nothing certain
            return
        self._record(sc, proc, self._resolve(proc, None, dec[0]), SOCKET_CALLS[sc.name])

    def _path_arg(self, sc: Syscall, proc: Proc, arg: PathArg) -> None:
        if len(sc.args) <= arg.path:
            return
        dec = decode_string(sc.args[arg.path])
        if dec is None or dec[1]:  # NULL, an address, or cut short: no name to record
            if sc.ok and sc.name in STATE_CALLS:
                self._moved(sc, proc, UNKNOWN)
            return
        name = dec[0]
        flags = " ".join(sc.args[arg.path + 1 :])
        if name == "" and "AT_EMPTY_PATH" in flags and sc.name not in EXEC_CALLS:
            return  # the call acts on an fd already opened (and recorded) by name
        dirfd = sc.args[arg.dirfd] if arg.dirfd is not None else None
        where = self._resolve(proc, dirfd, name)
        meaning = arg.meaning
        if meaning is None:
            i = OPEN_FLAGS_ARG[sc.name]
            meaning = open_meaning(sc.args[i] if len(sc.args) > i else "")
        self._record(sc, proc, where, meaning)
        if sc.ok and sc.name in STATE_CALLS:
            self._moved(sc, proc, where)
        if sc.name in EXEC_CALLS and sc.ok:  # a failed execve runs nothing
            self._exec(sc, proc, arg, where)

    def _moved(self, sc: Syscall, proc: Proc, where: Dir) -> None:
        """A chdir or chroot that succeeded: the process's cwd or root is `where` now (not
        known when the trace does not name it: later relative names are then unresolved,
        never resolved against the old directory)."""
        kept = self._keep_dir(where)
        if kept is None:
            self.refused += 1
            return
        if sc.name == "chdir":
            proc.fs.cwd = kept
        else:  # chroot: the cwd stays where it was, absolute names start from the new root
            proc.fs.root = kept.path if kept.known else None

    def _exec(self, sc: Syscall, proc: Proc, arg: PathArg, where: Dir) -> None:
        argv_i = arg.path + 1
        argv = tuple(string_list(sc.args[argv_i])) if len(sc.args) > argv_i else ()
        program = self.budget.string(where.path) if where.known and where.path else ""
        cmdline = self.budget.strings(argv)
        if program is None or cmdline is None:
            self.refused += 1
            return
        proc.program, proc.cmdline = program, cmdline
        if program and not self.excluded(program) and program not in self._exec_set:
            self._exec_set.add(program)
            self.execs.append(program)


STATE_CALLS = {"chdir", "chroot"}  # path calls that move a process's cwd or root


def _shares_fs(sc: Syscall) -> bool:
    """True for a clone that shares root and cwd with its parent (threads: CLONE_FS)."""
    return sc.name in ("clone", "clone3") and any(_CLONE_FS.search(a) for a in sc.args)


def fork_parents(calls: Iterable[Syscall], budget: StateBudget | None = None
                 ) -> dict[int, tuple[int, bool]]:
    """Child pid -> (parent pid, shares its fs), from clone/fork returns, so a child whose
    first line comes before its parent's `clone resumed` still inherits the parent's
    state. Each entry is charged to `budget`; past it the rest are not learnt."""
    parents: dict[int, tuple[int, bool]] = {}
    for sc in calls:
        if sc.name in FORK_CALLS and sc.ok:
            child = sc.ret_int()
            if child and child > 0 and child not in parents:
                if budget is not None and not budget.charge(PROC_COST):
                    break
                parents[child] = (sc.pid, _shares_fs(sc))
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
    path_limit: int = PATH_LIMIT,
    budget: StateBudget | None = None,
) -> ParsedTrace:
    """Parse strace output (`-f -y -ttt`, `-xx` recommended) into deduplicated accesses.

    `execs` lists the programs exec'd successfully, in order; failed execve calls (a PATH
    search trying each directory) are accesses with ok=False and never an exec.

    The trace is streamed twice (fork parents, then the calls), so memory grows with the
    distinct uses it names, not with its size; past `max_accesses` distinct uses the rest
    are counted in `dropped`, not kept. Everything derived (paths, processes, command
    lines) is charged to `budget` (one for all traces of a run: pass the same one), and
    no path longer than `path_limit` is kept. A file (anything with `seek`) is read from
    its start for each pass.
    """
    source = _Lines(lines)
    budget = budget or StateBudget(None)
    spent_before = budget.spent
    interp = TraceInterpreter(
        step_of=step_of or (lambda _ts: "run"),
        excluded=excluded or (lambda _p: False),
        initial_cwd=initial_cwd,
        parents=fork_parents(iter_syscalls(source, FORK_CALLS), budget),
        max_accesses=max_accesses,
        path_limit=path_limit,
        budget=budget,
    )
    for sc in iter_syscalls(source, INTERESTING):
        interp.feed(sc)
    return ParsedTrace(interp.accesses, interp.execs, interp.dropped, source.long_lines,
                       interp.unresolved, interp.refused, budget.spent - spent_before)
