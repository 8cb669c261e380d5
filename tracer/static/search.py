"""Finding a library name in a list of directories, in time linear in the input, on a budget.

Both loaders (glibc.py, musl.py) reduce each of their rules to "the first directory of
this list that holds a loadable NAME". Asked naively, that costs one probe per (directory,
name): an ELF with 3,000 RPATH entries and 3,000 DT_NEEDED names is nine million probes
and as many cached lookups. Here each directory of a list is resolved once, each real
directory is listed once per image, and an inverted index (name -> real directories
holding it) answers "where is NAME in this list" by looking only at the directories that
hold NAME. Only those candidates are opened (resolved in the image and parsed), with the
loader's checks: a file of another ELF class or machine is skipped, a symlink loop ends
the list (glibc's open_path stops at any error but ENOENT/EACCES), a corrupt file is
reported and skipped.

Some directories of a list are searched on some CPUs only (glibc-hwcaps and legacy hwcap
subdirectories, a `$PLATFORM` expansion: see abi.py). A hit in one of them does not end
the search: the lookup goes on to the first hit in a directory every CPU searches, and
answers with every hit on the way (Found.alternates), so the closure holds what the loader
maps on any CPU, not on this one.

Every step spends units of Budgets.resolver_work (a directory resolved or listed, a name
indexed, a list consulted, a candidate opened, an ELF entry read), so a crafted image
ends in BudgetExceeded naming the file being resolved instead of minutes and gigabytes;
everything cached here was paid for in those units, which bounds the memory too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from tracer.budgets import Budgets
from tracer.rootfs import Resolved, RootFS, SymlinkLoop
from tracer.static.closure import Closure
from tracer.static.elf import CorruptElf, ElfInfo, parse_elf

NAME_MAX = 255  # bytes of one path component: a longer name exists in no directory
PATH_MAX = 4096


class Work:
    """Units of work one Resolver has spent, checked against Budgets.resolver_work."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self.limit = budgets.resolver_work
        self.used = 0
        self.subject = ""  # the root being resolved, for the refusal's message
        self.at = ""  # the object whose dependencies are being looked up

    def spend(self, units: int = 1) -> None:
        self.used += units
        if self.used > self.limit:
            where = f" (at {self.at})" if self.at and self.at != self.subject else ""
            self.budgets.check("resolver_work", self.used,
                               f"static ELF resolution of {self.subject}{where}")


@dataclass(eq=False)
class Loaded:
    """One object in the simulated process (glibc's struct link_map, the parts we need)."""

    path: str  # the path it was found as: $ORIGIN is its directory
    real: str
    info: ElfInfo
    loader: Loaded | None  # the object whose DT_NEEDED (or preload) brought it in
    names: set[str]
    chain: tuple[str, ...]
    lists: dict[str, object] = field(default_factory=dict)  # the loader's per-object memo
    cpu: bool = False  # mapped on some CPUs only (see Found.certain)


@dataclass(frozen=True)
class Found:
    """A library the loader would map, as found, plus what another CPU would map instead.

    `certain`: the lookup ended in a directory every CPU searches, so no CPU looks
    further. The first hit is mapped on every CPU only when it is certain and has no
    alternates."""

    path: str
    resolved: Resolved
    info: ElfInfo
    alternates: tuple[tuple[str, Resolved], ...] = ()  # (path as found, resolved) each
    certain: bool = True

    @property
    def cpu_dependent(self) -> bool:
        """Whether some CPU maps another file than `resolved` for this lookup."""
        return bool(self.alternates) or not self.certain


def merge(hits: list[Found]) -> Found | None:
    """One answer from the hits of successive lookups of a name (each but the last one
    uncertain): the first hit, every other file as an alternate, the last one's certainty."""
    if not hits:
        return None
    first = hits[0]
    if len(hits) == 1:
        return first
    seen = {first.resolved.path}
    alts: list[tuple[str, Resolved]] = []
    for i, h in enumerate(hits):
        for path, res in (() if i == 0 else ((h.path, h.resolved),)) + h.alternates:
            if res.path not in seen:
                seen.add(res.path)
                alts.append((path, res))
    return Found(first.path, first.resolved, first.info, tuple(alts), hits[-1].certain)


@dataclass(frozen=True)
class Variants:
    """Subdirectories the loader tries in each directory before the directory itself,
    each on some CPUs only: `fixed` ones (glibc-hwcaps/x86-64-v3, best first), and
    `slots` for legacy hwcap subdirectories: optional components in path order (at most
    one name of each slot), tried in glibc's power-set order."""

    fixed: tuple[str, ...] = ()
    slots: tuple[tuple[str, ...], ...] = ()

    def names(self) -> frozenset[str]:
        """Every name that can begin one of these subdirectories' paths."""
        out = {sub.split("/", 1)[0] for sub in self.fixed}
        for slot in self.slots:
            out.update(slot)
        return frozenset(out)


NO_VARIANTS = Variants()


@dataclass(frozen=True)
class Dir:
    """One directory of a search list as the loader opens it."""

    path: str  # as written after DST expansion, absolute; $ORIGIN of what is found there
    real: str | None  # resolved in the image; None when missing or not a directory
    loop: bool = False  # resolving it loops: every open in it fails with ELOOP
    cpu: bool = False  # searched on some CPUs only


@dataclass
class SearchList:
    """A loader path list (an RPATH, LD_LIBRARY_PATH, ...), ready for lookups.

    Each directory becomes a group: its existing hwcaps subdirectories best first, then
    itself. `pos` maps each real directory to its first (group, rank, Dir), and when that
    one is searched on some CPUs only, also to its first occurrence every CPU searches; no
    later occurrence can give another answer. `stop` is the first directory that loops
    (on every CPU): a lookup that reaches it ends the list.
    """

    pos: dict[str, tuple[tuple[int, int, Dir], ...]]
    stop: Dir | None
    stop_at: int


class Stop:
    """find()'s answer when the loader would give up on the list (an error, not ENOENT)."""


STOP = Stop()


class _Loop(Exception):
    pass


class _Unloadable(Exception):
    pass


def component_ok(name: str) -> bool:
    """Whether `name` can name a directory entry at all (NAME_MAX bytes at most)."""
    return len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX


class DirSearch:
    """Directory lookups and ELF parsing for one image root, cached for a Resolver's life."""

    def __init__(self, root: RootFS, cwd: str, work: Work,
                 watched: Iterable[str] = ()) -> None:
        """`watched`: every name a Variants may begin with (abi.VARIANT_NAMES); which
        directories hold them is recorded as they are listed."""
        self.root, self.cwd, self.work = root, cwd, work
        self.memo: dict[tuple, object] = {}  # the loaders' per-image memo (lists by spec)
        self._elf: dict[str, ElfInfo | CorruptElf] = {}
        self._dirs: dict[str, Dir] = {}
        self._variants: dict[tuple[str, Variants], tuple[tuple[str, str], ...]] = {}
        self._listed: set[str] = set()
        self._where: dict[str, list[str]] = {}  # name -> real directories holding it
        self._watched = frozenset(watched)
        self._holds: dict[str, frozenset[str]] = {}  # real directory -> watched names in it

    # -- ELF files ------------------------------------------------------------------------
    def parse(self, real: str) -> ElfInfo | CorruptElf:
        """The ELF facts of the resolved file `real` (parsed once), or why it is corrupt."""
        hit = self._elf.get(real)
        if hit is None:
            self.work.spend(1)
            try:
                hit = parse_elf(self.root, real)
            except CorruptElf as exc:
                hit = exc
            self.work.spend(len(hit.needed) if isinstance(hit, ElfInfo) else 0)
            self._elf[real] = hit
        return hit

    # -- search lists ---------------------------------------------------------------------
    def absolute(self, path: str) -> str:
        """`path` as the loader opens it: relative paths are relative to the working dir."""
        return path if path.startswith("/") else posixpath.join(self.cwd, path)

    def search_list(self, paths: list[str], variants: Variants = NO_VARIANTS,
                    cpu: frozenset[int] = frozenset()) -> SearchList:
        """A SearchList of `paths` (absolute, as the loader writes them), each with the
        `variants` subdirectories that exist, best first. `cpu`: indexes of the paths
        that only some CPUs search (a `$PLATFORM` expansion)."""
        pos: dict[str, tuple[tuple[int, int, Dir], ...]] = {}
        for g, path in enumerate(paths):
            self.work.spend(1)
            d = self.dir(path)
            if g in cpu:
                if d.loop:
                    continue  # only the CPUs that search it give up the list there
                d = replace(d, cpu=True)
            if d.loop:
                return SearchList(pos, d, g)
            if d.real is None:
                continue
            self._index(d.real)
            members = [(real, Dir(f"{d.path.rstrip('/')}/{sub}", real, cpu=True))
                       for sub, real in self.variant_dirs(d.real, variants)] + [(d.real, d)]
            for rank, (real, m) in enumerate(members):
                have = pos.get(real)
                if have is None:
                    pos[real] = ((g, rank, m),)
                    self._index(real)
                elif len(have) == 1 and have[0][2].cpu and not m.cpu:
                    pos[real] = have + ((g, rank, m),)
        return SearchList(pos, None, len(paths))

    def dir(self, path: str) -> Dir:
        hit = self._dirs.get(path)
        if hit is None:
            hit = Dir(path, None)
            if len(path.encode("utf-8", "surrogateescape")) < PATH_MAX and all(
                    component_ok(p) for p in path.split("/")):
                try:
                    res = self.root.resolve(path, cwd=self.cwd)
                    if res.exists and self.root.is_dir(res.path):
                        hit = Dir(path, res.path)
                except SymlinkLoop:
                    hit = Dir(path, None, loop=True)
                except OSError:
                    pass  # e.g. a name too long for the host: no such directory
            self._dirs[path] = hit
        return hit

    def variant_dirs(self, real: str, variants: Variants) -> tuple[tuple[str, str], ...]:
        """(subdirectory, its real path) for each of `variants` that exists in `real`, in
        the loader's order; only names that the listing of a directory holds are probed."""
        if variants is NO_VARIANTS:
            return ()
        key = (real, variants)
        hit = self._variants.get(key)
        if hit is None:
            self._index(real)
            found: list[tuple[str, str]] = []
            for sub in variants.fixed:
                self.work.spend(1)
                if sub.split("/", 1)[0] not in self._holds.get(real, ()):
                    continue
                d = self.dir(f"{real}/{sub}")
                if d.real is not None:
                    found.append((sub, d.real))
            if variants.slots:
                self._legacy(real, "", 0, variants.slots, found)
            # a platform named like a hwcap bit (x86_64) gives some paths twice: the first
            # place is where the loader tries them
            hit = self._variants[key] = tuple(dict.fromkeys(found))
        return hit

    def _legacy(self, real: str, sub: str, slot: int, slots: tuple[tuple[str, ...], ...],
                out: list[tuple[str, str]]) -> None:
        """Append every existing legacy subdirectory below `real`/`sub` that uses slots
        `slot`... : depth first, a component before its absence, which is glibc's order
        (its power set counts down from all components present, the first slot the most
        significant)."""
        if slot == len(slots):
            if sub:
                out.append((sub, real))
            return
        for name in slots[slot]:
            self.work.spend(1)
            if name in self._holds.get(real, ()):
                d = self.dir(f"{real}/{name}")
                if d.real is not None:
                    self._index(d.real)
                    self._legacy(d.real, f"{sub}/{name}" if sub else name, slot + 1, slots,
                                 out)
        self._legacy(real, sub, slot + 1, slots, out)

    def _index(self, real: str) -> None:
        if real in self._listed:
            return
        self._listed.add(real)
        names = self.root.listdir(real)
        self.work.spend(1 + len(names))
        for name in names:
            self._where.setdefault(name, []).append(real)
        held = self._watched.intersection(names)
        if held:
            self._holds[real] = held

    # -- lookups --------------------------------------------------------------------------
    def find(self, lst: SearchList, name: str, key_abi: tuple[int, bool, str], c: Closure,
             *, first_file_wins: bool = False) -> Found | Stop | None:
        """The first loadable `name` in `lst`, the way ld.so's open_path walks it.

        glibc skips a file of another class or machine and goes on; musl takes the first
        file that opens (`first_file_wins`) and fails if it cannot load it (Stop). A hit
        in a directory some CPUs only search is kept and the walk goes on (module
        docstring); the answer is certain when it reached a directory every CPU searches.
        """
        holders = self._where.get(name, ())
        self.work.spend(1 + len(holders))
        places = sorted((p for real in holders for p in lst.pos.get(real, ())),
                        key=lambda p: p[:2])
        hits: list[Found] = []
        certain = False
        for g, _rank, d in places:
            if g >= lst.stop_at:
                break
            try:
                found = self.candidate(f"{d.path.rstrip('/')}/{name}", key_abi, c,
                                       first_file_wins)
            except _Loop:
                if d.cpu:
                    continue  # only the CPUs that search `d` give up the list here
                if hits:
                    break  # CPUs that took an earlier variant never get here
                return STOP
            except _Unloadable:
                return STOP
            if found is not None:
                hits.append(found)
                if not d.cpu:
                    certain = True
                    break
        if lst.stop is not None and not certain:
            c.error(str(SymlinkLoop(f"{lst.stop.path.rstrip('/')}/{name}")))
            if not hits:
                return STOP
        if not hits:
            return None
        found = merge(hits) or hits[0]  # each hit is a certain Found: say if this one is
        return found if certain else replace(found, certain=False)

    def open_path(self, path: str, key_abi: tuple[int, bool, str], c: Closure,
                  first_file_wins: bool = False) -> Found | None:
        """`path` itself (a name with a slash, a cache entry), if the loader can load it."""
        self.work.spend(1)
        try:
            return self.candidate(path, key_abi, c, first_file_wins)
        except (_Loop, _Unloadable):
            return None

    def candidate(self, path: str, key_abi: tuple[int, bool, str], c: Closure,
                  first_file_wins: bool = False) -> Found | None:
        """`path` if it is a loadable ELF object of the requester's ABI (ld.so open_verify).

        A corrupt file is reported and skipped (ld.so would abort the program there; the
        report says so instead of hiding the rest of the closure). Raises _Loop for a
        symlink loop, and, with `first_file_wins`, _Unloadable for an existing file that
        cannot be loaded.
        """
        self.work.spend(1)
        try:
            res = self.root.resolve(self.absolute(path), cwd=self.cwd)
        except SymlinkLoop as exc:
            c.error(str(exc))
            raise _Loop from exc
        except OSError:
            return None
        if not res.exists or not self.root.is_file(res.path):
            return None
        info = self.parse(res.path)
        if isinstance(info, CorruptElf):
            c.error(str(info))
            if first_file_wins:
                raise _Unloadable
            return None
        if info.abi_key != key_abi:
            if first_file_wins:
                c.error(f"{path}: ELF class or machine {info.elfclass}-bit {info.machine} "
                        "cannot be loaded by this program's loader")
                raise _Unloadable
            return None  # wrong class or machine: ld.so skips it and keeps searching
        return Found(path, res, info)


def inherited(obj: Loaded, key: str,
              own: Callable[[Loaded], SearchList | None]) -> tuple[SearchList, ...]:
    """`own(o)` for `obj` and each object up its loader chain, nearest first, skipping None.

    Memoized on each object (the chain of a child extends its loader's), iteratively, so a
    deep chain costs neither recursion nor a walk per lookup.
    """
    todo: list[Loaded] = []
    o: Loaded | None = obj
    while o is not None and key not in o.lists:
        todo.append(o)
        o = o.loader
    chain: tuple[SearchList, ...] = o.lists[key] if o is not None else ()  # type: ignore[assignment]
    for o in reversed(todo):
        lst = own(o)
        if lst is not None:
            chain = (lst,) + chain
        o.lists[key] = chain
    return chain
