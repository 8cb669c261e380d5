"""What the trace interpreter keeps per traced process, bounded whatever the trace says.

A process's view of the file system is its root (chroot) and its cwd; both change only by
calls that succeeded, and threads made with CLONE_FS share them (a chdir in one thread
moves every thread's cwd). Names are resolved lexically against them (`..` stops at the
process's root, as the kernel's does), the way the program named them.

The trace is the app's to shape: a job that keeps `chdir`-ing one level deeper builds a
cwd far longer than any path an image can hold, and every relative name under it would
be a new string of that length. So a directory is held as the longest path within
`path_length` plus the number of names below it (`Dir.below`): no path longer than
`path_length` can be in the image (its index refuses them), and only `..` brings a name
back within reach, which needs their number, not their names. And every string and
record the interpreter keeps is charged to one `StateBudget` (strings are interned: the
same path used by a thousand processes is held once), so a trace of a few megabytes
cannot make gigabytes of derived state.
"""

from __future__ import annotations

from dataclasses import dataclass

# bytes charged per kept record, about what CPython spends on it (measured with
# tracemalloc): an Access with its dedup key and set entry, a process with its dict slot,
# an interned string's object header and dict entry (plus its characters)
ACCESS_COST = 400
PROC_COST = 300
STRING_COST = 100


@dataclass(frozen=True)
class Dir:
    """A directory as far as the trace tells: `path` (None: the trace does not say) and
    `below`, the number of names under it that would make the path longer than the limit
    (the module docstring says why their names are not needed)."""

    path: str | None
    below: int = 0

    @property
    def known(self) -> bool:
        """True when this is a path that can be named (known, within the limit)."""
        return self.path is not None and not self.below


UNKNOWN = Dir(None)
ROOT = Dir("/")


def walk(base: Dir, name: str, *, floor: str, limit: int) -> Dir:
    """`name` (relative, or absolute with `base` the process's root) resolved lexically
    from `base`: `.` stays, `..` goes up except at `floor` (the process's root), other
    names go down. Iterative and linear in `name`; a name longer than `limit` is unknown
    (the kernel refuses a name longer than PATH_MAX: only a forged trace has one)."""
    if base.path is None or len(name) > limit:
        return UNKNOWN
    path, below = base.path, base.below
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if below:
                below -= 1
            elif path != floor:
                path = path.rpartition("/")[0] or "/"
            continue
        if below:
            below += 1
            continue
        nxt = ("/" if path == "/" else path + "/") + comp
        if len(nxt) > limit:
            below = 1
        else:
            path = nxt
    return Dir(path, below)


def absolute(path: str | None, limit: int) -> Dir:
    """An absolute path the kernel gave (a `-y` fd annotation): normalized, or unknown if
    absent, relative or longer than `limit`."""
    if path is None or not path.startswith("/"):
        return UNKNOWN
    return walk(ROOT, path, floor="/", limit=limit)


@dataclass
class Fs:
    """What CLONE_FS shares between tasks: root and cwd (None root: not known)."""

    root: str | None
    cwd: Dir

    def copy(self) -> Fs:
        return Fs(self.root, self.cwd)


@dataclass
class Proc:
    """One traced task: its file system view (maybe shared) and the program it runs."""

    fs: Fs
    program: str = ""
    cmdline: tuple[str, ...] = ()

    def child(self, shares_fs: bool) -> Proc:
        """The task a clone/fork makes: same program; the same Fs with CLONE_FS, else a copy."""
        return Proc(self.fs if shares_fs else self.fs.copy(), self.program, self.cmdline)


class StateBudget:
    """Bytes of derived state one trace (or one run's traces) may keep; past it nothing
    more is kept (`full`), so what was kept stays consistent and the caller says so."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.spent = 0
        self.full = False
        self._strings: dict[str, str] = {}
        self._tuples: dict[tuple[str, ...], tuple[str, ...]] = {}

    def charge(self, n: int) -> bool:
        """Spend `n` bytes; False (and full from then on) when they do not fit."""
        if self.full:
            return False
        if self.limit is not None and self.spent + n > self.limit:
            self.full = True
            return False
        self.spent += n
        return True

    def string(self, text: str) -> str | None:
        """The one kept copy of `text` (charged when new); None when it does not fit."""
        kept = self._strings.get(text)
        if kept is not None:
            return kept
        if not self.charge(STRING_COST + len(text)):
            return None
        self._strings[text] = text
        return text

    def strings(self, items: tuple[str, ...]) -> tuple[str, ...] | None:
        """The one kept copy of a tuple of strings (an argv); None when it does not fit."""
        kept = self._tuples.get(items)
        if kept is not None:
            return kept
        if not self.charge(STRING_COST + sum(STRING_COST + len(s) for s in items)):
            return None
        self._tuples[items] = items
        return items
