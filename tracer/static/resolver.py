"""The processes an image's programs would start, simulated without running anything.

For each root the resolver simulates one process the way the image's loader builds it
(glibc elf/dl-deps.c, musl ldso/dynlink.c): the main object, its PT_INTERP, preloads,
then DT_NEEDED breadth-first; a name already loaded (by requested name, path or
DT_SONAME) is not searched again, which is why a simulation per process, not a per-file
lookup, gives the loader's exact answer. Where each name is searched is the loader's own
business: glibc.py and musl.py hold their search orders, one method per rule, and the
process's PT_INTERP picks one. `#!` scripts are followed to their interpreters.

What the loader never sees is not simulated here: libraries a library dlopen()s by itself
are a keep-list policy (tracer.analysis.policy), passed in as `dlopens`.

All work is counted against Budgets.resolver_work (see search.py), so a crafted image
ends in BudgetExceeded naming the file instead of unbounded time and memory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence

from tracer.budgets import DEFAULT, Budgets
from tracer.rootfs import Resolved, RootFS, SymlinkLoop
from tracer.static.abi import VARIANT_NAMES
from tracer.static.closure import Closure, Missing, Need
from tracer.static.elf import ELF_MAGIC, CorruptElf, ElfInfo
from tracer.static.glibc import GlibcLoader
from tracer.static.musl import MuslLoader, is_musl
from tracer.static.script import DEFAULT_PATH, parse_shebang, which
from tracer.static.search import DirSearch, Found, Loaded, Work

MAX_SHEBANG_DEPTH = 4  # the kernel's limit on nested #! interpreters

__all__ = ["Closure", "Missing", "Need", "Resolver"]


class Resolver:
    """Static ELF/#! closure of programs inside one image root.

    `dlopens` maps a DT_SONAME to libraries that object loads by itself at run time; they
    are kept when present and never reported missing. The default (none) answers exactly
    what the loader maps at start-up, which is what `ldd` shows. `budgets.resolver_work`
    bounds the work of this Resolver over all its closures.
    """

    def __init__(
        self, root: RootFS, env: dict[str, str] | None = None, *, cwd: str = "/",
        dlopens: Mapping[str, Sequence[str]] | None = None, budgets: Budgets = DEFAULT,
    ) -> None:
        env = env or {}
        self.root = root
        self.cwd = cwd
        self.path_env = env.get("PATH", DEFAULT_PATH)
        self.dlopens: Mapping[str, Sequence[str]] = dlopens or {}
        self.work = Work(budgets)
        self.search = DirSearch(root, cwd, self.work, watched=VARIANT_NAMES)
        self.glibc = GlibcLoader(self.search, env)
        self.musl = MuslLoader(self.search, env)

    # -- public -------------------------------------------------------------------------
    def closure(self, roots: Iterable[str]) -> Closure:
        """Closure of every root (in-image path, or bare name looked up on PATH)."""
        c = Closure()
        for r in roots:
            self.work.subject = self.work.at = r
            self.work.spend(1)
            self._root(r, c, (), "root", 0)
        return c

    # -- roots, scripts -------------------------------------------------------------------
    def _root(self, name: str, c: Closure, prefix: tuple[str, ...], kind: str, depth: int) -> None:
        path = name
        if "/" not in name:
            found = which(self.root, name, self.path_env)
            if found is None:
                c.miss(name, prefix)
                return
            path = found
        elif not name.startswith("/"):
            path = posixpath.join(self.cwd, name)
        chain = prefix + (path,)
        res = self._keep(path, kind, chain, c, missing_by=prefix)
        if res is None or not self.root.is_file(res.path):
            return  # a directory or special file root: kept as it is, nothing to follow
        try:
            with self.root.open(res.path) as fh:
                head = fh.read(256)
        except OSError as exc:
            c.error(f"{path}: cannot read: {exc.strerror or exc}")
            return
        if head.startswith(ELF_MAGIC):
            self._process(path, res, c, chain)
            return
        bang = parse_shebang(head)
        if bang is None:
            return  # a data file: only the file itself (and its links) is needed
        if depth >= MAX_SHEBANG_DEPTH:
            c.error(f"{path}: more than {MAX_SHEBANG_DEPTH} nested #! interpreters")
            return
        interp = bang.interpreter  # the kernel takes it literally: no PATH lookup
        if "/" not in interp:
            interp = posixpath.join(self.cwd, interp)
        self._root(interp, c, chain, "shebang", depth + 1)
        prog = bang.env_program()
        if prog is not None:
            self._root(prog, c, chain + (bang.interpreter,), "shebang", depth + 1)

    def _keep(
        self, path: str, kind: str, chain: tuple[str, ...], c: Closure, missing_by: tuple[str, ...]
    ) -> Resolved | None:
        """Record `path`, every link crossed to reach it, and its target."""
        try:
            res = self.root.resolve(path, cwd=self.cwd)
        except SymlinkLoop as exc:
            c.error(str(exc))
            return None
        except OSError as exc:  # a path the host cannot even look up (name too long)
            c.error(f"{path}: cannot look up inside the image: {exc.strerror or exc}")
            return None
        for link in res.links:
            c.add(Need(link, "symlink", chain))
        if not res.exists:
            c.miss(path, missing_by)
            return None
        c.add(Need(res.path, kind, chain))
        return res

    # -- one simulated process ------------------------------------------------------------
    def _process(self, path: str, res: Resolved, c: Closure, chain: tuple[str, ...]) -> None:
        info = self.search.parse(res.path)
        if isinstance(info, CorruptElf):
            c.error(str(info))
            return
        main = Loaded(res.path, res.path, info, None, {path, res.path}, chain)
        proc = _Process(self, c, is_musl(info.interp), main)
        if info.interp:
            proc.add_interp(info.interp, chain)
        if not (info.needed or info.interp):
            return  # static executable, or a library without dependencies
        for name, where in proc.loader.preloads(c):
            # the loader maps preloads for the main program (its RPATH applies) and, when
            # one is not found, says so and starts the program all the same
            if not proc.load(name, main, optional=True, via=where):
                c.error(f"{where}: {name} cannot be preloaded: not found (the loader "
                        "ignores it)")
        proc.run()


class _Process:
    """The objects of one simulated process, in load order, and how names map to them."""

    def __init__(self, r: Resolver, c: Closure, musl: bool, main: Loaded) -> None:
        self.r, self.c, self.musl = r, c, musl
        self.loader: GlibcLoader | MuslLoader = r.musl if musl else r.glibc
        self.loaded: list[Loaded] = []
        self.by_real: dict[str, Loaded] = {}
        self.by_name: dict[str, Loaded] = {}  # every name that finds a loaded object
        self.skip: set[int] = set()  # objects whose DT_NEEDED the loader never processes
        self._add(main)

    def _add(self, obj: Loaded, *, answers: bool = True) -> None:
        """Append `obj`; unless it is an alternate (`answers` False), its names and
        DT_SONAME find it from now on."""
        self.loaded.append(obj)
        self.by_real.setdefault(obj.real, obj)
        if answers:
            if obj.info.soname:
                obj.names.add(obj.info.soname)
            for n in obj.names:
                self.by_name.setdefault(n, obj)

    def _name(self, obj: Loaded, name: str) -> None:
        obj.names.add(name)
        self.by_name.setdefault(name, obj)

    def add_interp(self, interp: str, chain: tuple[str, ...]) -> None:
        ichain = chain + (interp,)
        ires = self.r._keep(interp, "interp", ichain, self.c, missing_by=chain)
        if ires is None:
            return
        iinfo = self.r.search.parse(ires.path)
        if isinstance(iinfo, CorruptElf):
            self.c.error(str(iinfo))
            return
        obj = Loaded(interp, ires.path, iinfo, None, {interp, posixpath.basename(interp)}, ichain)
        self.skip.add(len(self.loaded))
        self._add(obj)

    def run(self) -> None:
        """DT_NEEDED breadth-first, as the loader's dependency walk does."""
        i = 0
        while i < len(self.loaded):
            obj = self.loaded[i]
            if i not in self.skip:
                self.r.work.at = obj.path
                for name in obj.info.needed:
                    self.load(name, obj)
                for name in self.r.dlopens.get(obj.info.soname or "", ()):
                    self.load(name, obj, optional=True)
            i += 1

    def load(self, name: str, requester: Loaded, optional: bool = False,
             via: str | None = None) -> bool:
        """Map `name` for `requester` unless an object answers to it already; whether it
        is mapped (on some CPU at least). A name not found is missing unless `optional`.
        `via` (a preload's source) goes into the chain between the requester and the name.

        The process simulated is the one of the loader's first pick at each lookup; what
        other CPUs map instead is followed too (`cpu` objects), without answering names
        for objects every CPU maps: a name first answered by such an object is looked up
        again for a requester every CPU maps (on the other CPUs, that lookup happens).
        """
        self.r.work.spend(1)
        if self.musl and MuslLoader.builtin(name):
            return True  # musl's ld.so is libc, libpthread, libm... itself
        chain = requester.chain + ((via,) if via else ()) + (name,)
        wants = self.loader.needed_names(name, requester)
        mapped = False
        for want in wants:  # one per $PLATFORM value: each the name on some CPUs only
            existing = self.by_name.get(want) or self.by_name.get(name)
            if existing is not None:
                mapped = True
                if requester.cpu or not existing.cpu:
                    continue
            found = self.loader.find(want, requester, self.c)
            if found is None:
                continue
            mapped = True
            # on some CPUs only: a $PLATFORM name, a variant, or another file than the
            # one that answers the name where the object answering it is mapped
            cpu = (requester.cpu or len(wants) > 1 or found.cpu_dependent
                   or (existing is not None and existing.real != found.resolved.path))
            self._map(found, want, requester, chain, cpu, answers=existing is None)
        if not mapped and not optional:
            self.c.miss(name, requester.chain)
        return mapped

    def _map(self, found: Found, want: str, requester: Loaded, chain: tuple[str, ...],
             cpu: bool, answers: bool) -> None:
        """Record `found` (and its alternates) and add what is not loaded yet."""
        self._record(found, chain, cpu)
        existing = self.by_real.get(found.resolved.path)
        if existing is not None:
            if answers:
                self._name(existing, want)
            if not cpu:
                existing.cpu = False  # mapped on every CPU after all
        else:
            self.r.work.spend(len(chain))
            self._add(Loaded(found.path, found.resolved.path, found.info, requester,
                             {want, found.path} if answers else set(), chain, cpu=cpu),
                      answers=answers)
        for alt_path, alt in found.alternates:
            # another CPU maps this one instead: follow its DT_NEEDED too, but it answers
            # no name lookups, so the simulated process stays the one of the first pick
            alt_info = self.r.search.parse(alt.path)
            if isinstance(alt_info, ElfInfo) and alt.path not in self.by_real:
                self._add(Loaded(alt_path, alt.path, alt_info, requester, set(),
                                 chain + (alt_path,), cpu=True), answers=False)

    def _record(self, found: Found, chain: tuple[str, ...], cpu: bool) -> None:
        """Keep the file found, the links crossed to it, and its alternates."""
        for link in found.resolved.links:
            self.c.add(Need(link, "symlink", chain, cpu))
        self.c.add(Need(found.resolved.path, "needed", chain, cpu))
        for alt_path, alt in found.alternates:
            for link in alt.links:
                self.c.add(Need(link, "symlink", chain + (alt_path,), True))
            self.c.add(Need(alt.path, "needed", chain + (alt_path,), True))
