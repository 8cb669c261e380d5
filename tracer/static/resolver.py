"""The dynamic loader's search rules, simulated on an image root without running anything.

For each root the resolver simulates one process the way glibc's ld.so builds it
(elf/dl-deps.c, elf/dl-load.c): the main object, its PT_INTERP, preloads, then DT_NEEDED
breadth-first; a name already loaded (by requested name, path or DT_SONAME) is not searched
again, which is why a simulation per process, not a per-file lookup, gives the loader's
exact answer. Search order for a name without a slash (glibc `_dl_map_object`):

1. DT_RPATH of the requester, then of its loader, up to the executable - only when the
   requester has no DT_RUNPATH (and an object's RPATH is void when it has a RUNPATH);
2. LD_LIBRARY_PATH (the image's or profile's Env);
3. DT_RUNPATH of the requester only (not inherited);
4. /etc/ld.so.cache (unless DF_1_NODEFLIB); when the image has none, the ld.so.conf dirs;
5. the default directories for the requester's ABI (unless DF_1_NODEFLIB).

Each directory is tried with its glibc-hwcaps (and legacy hwcap) subdirectories first; a
candidate of another ELF class or machine is skipped, as ld.so does. musl (PT_INTERP
ld-musl-*) uses LD_LIBRARY_PATH, then RUNPATH-or-RPATH inherited up the chain, then
/etc/ld-musl-ARCH.path. `$ORIGIN`, `$LIB` and `$PLATFORM` are expanded in all path lists
and in DT_NEEDED names. ELF files are parsed once per Resolver (cache by resolved path).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.rootfs import Resolved, RootFS, SymlinkLoop
from tracer.static.abi import Abi, abi_for, default_dirs, lib_token
from tracer.static.elf import ELF_MAGIC, CorruptElf, ElfInfo, parse_elf
from tracer.static.ldcache import LdCacheEntry, LdCacheError, parse_ld_so_cache
from tracer.static.ldconf import read_ld_so_conf
from tracer.static.script import DEFAULT_PATH, parse_shebang, which

MAX_SHEBANG_DEPTH = 4  # the kernel's limit on nested #! interpreters
MUSL_BUILTIN = re.compile(r"^lib(c|pthread|rt|m|dl|util|xnet)\.so(\.|$)")
DST = re.compile(r"\$(\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


@dataclass(frozen=True)
class Need:
    """Why one in-image path is kept: its kind and the chain of requesters leading to it."""

    path: str
    kind: str  # "root" | "interp" | "needed" | "symlink" | "shebang"
    chain: tuple[str, ...]


@dataclass
class Missing:
    """A name the loader would not find; the program would fail to start."""

    name: str
    needed_by: tuple[str, ...]


@dataclass
class Closure:
    """Everything the given roots need, with reasons, plus what could not be found."""

    files: dict[str, list[Need]] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _seen: set[Need] = field(default_factory=set, repr=False, compare=False)

    def add(self, need: Need) -> None:
        if need not in self._seen:
            self._seen.add(need)
            self.files.setdefault(need.path, []).append(need)

    def error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)

    def miss(self, name: str, needed_by: tuple[str, ...]) -> None:
        if not any(m.name == name and m.needed_by == needed_by for m in self.missing):
            self.missing.append(Missing(name, needed_by))


class _StopList(Exception):
    """Ends the search of one path list, as ld.so does after an ELOOP-like open error."""


@dataclass(eq=False)
class _Loaded:
    """One object in the simulated process (glibc's struct link_map, the parts we need)."""

    path: str  # the path it was found as: $ORIGIN is its directory
    real: str
    info: ElfInfo
    loader: _Loaded | None
    names: set[str]
    chain: tuple[str, ...]


@dataclass(frozen=True)
class _Found:
    path: str
    resolved: Resolved
    info: ElfInfo
    alternates: tuple[tuple[str, Resolved], ...] = ()  # other hwcaps variants in that dir


# Libraries a library dlopen()s by itself, unseen by DT_NEEDED: glibc loads libgcc_s for
# pthread_cancel/pthread_exit unwinding and backtrace(), often only at a thread's exit, so a
# smoke test rarely sees it. Kept when present (optional: never reported missing).
IMPLICIT_DLOPENS: dict[str, tuple[str, ...]] = {"libc.so.6": ("libgcc_s.so.1",)}


class Resolver:
    """Static ELF/#! closure of programs inside one image root.

    `implicit_dlopens=True` adds IMPLICIT_DLOPENS (what a minimizer wants); the default
    False answers exactly what ld.so maps at start-up (what `ldd` and the oracle compare).
    """

    def __init__(
        self, root: RootFS, env: dict[str, str] | None = None, *, cwd: str = "/",
        implicit_dlopens: bool = False,
    ) -> None:
        env = env or {}
        self.implicit_dlopens = implicit_dlopens
        self.root = root
        self.cwd = cwd
        self.path_env = env.get("PATH", DEFAULT_PATH)
        self.ld_library_path = env.get("LD_LIBRARY_PATH") or None
        self.ld_preload = env.get("LD_PRELOAD") or None
        self._elf: dict[str, ElfInfo | CorruptElf] = {}
        self._ldcache: dict[str, list[LdCacheEntry]] | None = None
        self._ldcache_error: str | None = None
        self._ldconf: tuple[str, ...] | None = None
        self._search_memo: dict[tuple, tuple[_Found | None, tuple[str, ...]]] = {}
        self._variants_memo: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._musl_path: dict[str, tuple[str, ...]] = {}

    # -- public -------------------------------------------------------------------------
    def closure(self, roots: Iterable[str]) -> Closure:
        """Closure of every root (in-image path, or bare name looked up on PATH)."""
        c = Closure()
        for r in roots:
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
        for link in res.links:
            c.add(Need(link, "symlink", chain))
        if not res.exists:
            c.miss(path, missing_by)
            return None
        c.add(Need(res.path, kind, chain))
        return res

    # -- ELF parsing (once per file) --------------------------------------------------------
    def _parse(self, real: str) -> ElfInfo | CorruptElf:
        hit = self._elf.get(real)
        if hit is None:
            try:
                hit = parse_elf(self.root, real)
            except CorruptElf as exc:
                hit = exc
            self._elf[real] = hit
        return hit

    # -- one simulated process ------------------------------------------------------------
    def _process(self, path: str, res: Resolved, c: Closure, chain: tuple[str, ...]) -> None:
        info = self._parse(res.path)
        if isinstance(info, CorruptElf):
            c.error(str(info))
            return
        main = _Loaded(res.path, res.path, info, None, {path, res.path}, chain)
        if info.soname:
            main.names.add(info.soname)
        loaded = [main]
        by_real = {res.path: main}
        musl = bool(info.interp and posixpath.basename(info.interp).startswith("ld-musl-"))
        skip: set[int] = set()
        if info.interp:
            ichain = chain + (info.interp,)
            ires = self._keep(info.interp, "interp", ichain, c, missing_by=chain)
            if ires is not None:
                iinfo = self._parse(ires.path)
                if isinstance(iinfo, CorruptElf):
                    c.error(str(iinfo))
                else:
                    obj = _Loaded(info.interp, ires.path, iinfo, None, {info.interp}, ichain)
                    if iinfo.soname:
                        obj.names.add(iinfo.soname)
                    obj.names.add(posixpath.basename(info.interp))
                    skip.add(len(loaded))
                    loaded.append(obj)
                    by_real[ires.path] = obj
        if not (info.needed or info.interp):
            return  # static executable, or a library without dependencies
        for name in self._preloads(musl):
            self._load(name, main, loaded, by_real, c, musl)
        i = 0
        while i < len(loaded):
            obj = loaded[i]
            if i not in skip:
                for name in obj.info.needed:
                    self._load(name, obj, loaded, by_real, c, musl)
                if self.implicit_dlopens:
                    for name in IMPLICIT_DLOPENS.get(obj.info.soname or "", ()):
                        if self._find(name, obj, abi_for(obj.info), musl, c) is not None:
                            self._load(name, obj, loaded, by_real, c, musl)
            i += 1

    def _preloads(self, musl: bool) -> list[str]:
        names: list[str] = []
        if self.ld_preload:
            names += self.ld_preload.replace(":", " ").split()
        if not musl and self.root.is_file("/etc/ld.so.preload"):
            try:
                with self.root.open("/etc/ld.so.preload") as fh:
                    names += fh.read(1 << 16).decode("utf-8", "replace").replace(":", " ").split()
            except (OSError, SymlinkLoop):
                pass
        return names

    def _load(
        self,
        name: str,
        requester: _Loaded,
        loaded: list[_Loaded],
        by_real: dict[str, _Loaded],
        c: Closure,
        musl: bool,
    ) -> None:
        if musl and MUSL_BUILTIN.match(name):
            return  # musl's ld.so is libc, libpthread, libm... itself
        abi = abi_for(requester.info)
        want = self._expand(name, requester, abi) if "$" in name else name
        for obj in loaded:
            if want in obj.names or name in obj.names:
                return
        found = self._find(want, requester, abi, musl, c)
        chain = requester.chain + (name,)
        if found is None:
            c.miss(name, requester.chain)
            return
        for link in found.resolved.links:
            c.add(Need(link, "symlink", chain))
        c.add(Need(found.resolved.path, "needed", chain))
        for alt_path, alt in found.alternates:
            for link in alt.links:
                c.add(Need(link, "symlink", chain + (alt_path,)))
            c.add(Need(alt.path, "needed", chain + (alt_path,)))
        existing = by_real.get(found.resolved.path)
        if existing is not None:
            existing.names.add(want)
            return
        obj = _Loaded(found.path, found.resolved.path, found.info, requester, {want, found.path},
                      chain)
        if found.info.soname:
            obj.names.add(found.info.soname)
        loaded.append(obj)
        by_real[found.resolved.path] = obj
        for alt_path, alt in found.alternates:
            # another CPU would load this variant instead: follow its DT_NEEDED too, but it
            # answers no name lookups (names=set()), so the simulated process is unchanged
            alt_info = self._parse(alt.path)
            if isinstance(alt_info, ElfInfo) and alt.path not in by_real:
                alt_obj = _Loaded(alt_path, alt.path, alt_info, requester, set(),
                                  chain + (alt_path,))
                loaded.append(alt_obj)
                by_real[alt.path] = alt_obj

    # -- search rules ---------------------------------------------------------------------
    def _find(
        self, name: str, req: _Loaded, abi: Abi, musl: bool, c: Closure
    ) -> _Found | None:
        key_abi = req.info.abi_key
        if "/" in name:
            path = name if name.startswith("/") else posixpath.join(self.cwd, name)
            return self._candidate(path, key_abi, c)
        lists: list[tuple[str, ...]] = []
        if musl:
            if self.ld_library_path:
                lists.append(self._dirs(self.ld_library_path, req, abi, ":\n"))
            obj: _Loaded | None = req
            while obj is not None:
                rp = obj.info.runpath or obj.info.rpath
                if rp:
                    lists.append(self._dirs(rp, obj, abi, ":"))
                obj = obj.loader
            lists.append(self._musl_sys_path(req, abi))
            for dirs in lists:
                hit = self._search(dirs, name, key_abi, (), c)
                if hit:
                    return hit
            return None
        variants = abi.hwcaps, abi.legacy
        if req.info.runpath is None:
            obj = req
            while obj is not None:
                if obj.info.rpath:
                    lists.append(self._dirs(obj.info.rpath, obj, abi, ":"))
                obj = obj.loader
        if self.ld_library_path:
            main = req
            while main.loader is not None:
                main = main.loader
            lists.append(self._dirs(self.ld_library_path, main, abi, ":;"))
        if req.info.runpath:
            lists.append(self._dirs(req.info.runpath, req, abi, ":"))
        for dirs in lists:
            hit = self._search(dirs, name, key_abi, variants, c)
            if hit:
                return hit
        if req.info.nodeflib:
            return None
        cache = self._cache(c)
        if cache is not None:
            hit = self._from_cache(cache.get(name, ()), key_abi, abi, c)
            if hit:
                return hit
        else:
            hit = self._search(self._conf_dirs(), name, key_abi, variants, c)
            if hit:
                return hit
        return self._search(default_dirs(self.root, abi), name, key_abi, variants, c)

    def _expand(self, text: str, obj: _Loaded, abi: Abi) -> str:
        origin = posixpath.dirname(obj.path) or "/"

        def sub(m: re.Match[str]) -> str:
            tok = m.group(2) or m.group(3)
            if tok == "ORIGIN":
                return origin
            if tok == "LIB":
                return lib_token(self.root, abi)
            return abi.platform

        return DST.sub(sub, text)

    def _dirs(self, spec: str, obj: _Loaded, abi: Abi, seps: str) -> tuple[str, ...]:
        """Split a path list, expand DSTs, make entries absolute (empty = working dir)."""
        if "$" in spec:
            spec = self._expand(spec, obj, abi)
        for s in seps[1:]:
            spec = spec.replace(s, seps[0])
        out = []
        for d in spec.split(seps[0]):
            out.append(posixpath.normpath(posixpath.join(self.cwd, d)) if d else self.cwd)
        return tuple(out)

    def _variants(
        self, d: str, variants: tuple[tuple[str, ...], tuple[str, ...]]
    ) -> tuple[str, ...]:
        """Existing hwcaps subdirectories of `d`, best first, then `d` itself."""
        key = (d, variants[0] + ("|",) + variants[1])
        hit = self._variants_memo.get(key)
        if hit is None:
            subs = [f"glibc-hwcaps/{h}" for h in variants[0]] + list(variants[1])
            hit = tuple(f"{d}/{s}" for s in subs if self.root.is_dir(f"{d}/{s}")) + (d,)
            self._variants_memo[key] = hit
        return hit

    def _search(
        self,
        dirs: tuple[str, ...],
        name: str,
        key_abi: tuple[int, bool, str],
        variants: tuple,
        c: Closure,
    ) -> _Found | None:
        memo_key = (dirs, name, key_abi, variants)
        if memo_key in self._search_memo:
            result, errors = self._search_memo[memo_key]
            for e in errors:
                c.error(e)
            return result
        local = Closure()  # errors met on this search, replayed when the memo answers
        result = None
        for d in dirs:
            cands = self._variants(d, variants) if variants else (d,)
            try:
                hits = [h for v in cands if (h := self._candidate(f"{v}/{name}", key_abi, local,
                                                                  True))]
            except _StopList:
                break  # glibc open_path: an error other than ENOENT/EACCES ends this path list
            if hits:
                first = hits[0]
                alts = tuple((h.path, h.resolved) for h in hits[1:])
                result = _Found(first.path, first.resolved, first.info, alts)
                break
        self._search_memo[memo_key] = (result, tuple(local.errors))
        for e in local.errors:
            c.error(e)
        return result

    def _candidate(
        self, path: str, key_abi: tuple[int, bool, str], c: Closure, in_list: bool = False
    ) -> _Found | None:
        """`path` if it is a loadable ELF object of the requester's ABI (ld.so open_verify).

        A corrupt file is reported and skipped (ld.so would abort the program there; the
        report says so instead of hiding the rest of the closure).
        """
        try:
            res = self.root.resolve(path, cwd=self.cwd)
        except SymlinkLoop as exc:
            c.error(str(exc))
            if in_list:
                raise _StopList from exc
            return None
        if not res.exists or not self.root.is_file(res.path):
            return None
        info = self._parse(res.path)
        if isinstance(info, CorruptElf):
            c.error(str(info))
            return None
        if info.abi_key != key_abi:
            return None  # wrong class or machine: ld.so skips it and keeps searching
        return _Found(path, res, info)

    # -- system configuration ---------------------------------------------------------------
    def _cache(self, c: Closure) -> dict[str, list[LdCacheEntry]] | None:
        if self._ldcache is None and self._ldcache_error is None:
            path = "/etc/ld.so.cache"
            if not self.root.is_file(path):
                self._ldcache_error = ""
            else:
                try:
                    with self.root.open(path) as fh:
                        entries = parse_ld_so_cache(fh.read())
                    table: dict[str, list[LdCacheEntry]] = {}
                    for e in entries:
                        table.setdefault(e.name, []).append(e)
                    self._ldcache = table
                except (OSError, SymlinkLoop, LdCacheError) as exc:
                    self._ldcache_error = f"{path}: unreadable ld.so.cache: {exc}"
        if self._ldcache_error:
            c.error(self._ldcache_error)
        return self._ldcache

    def _from_cache(
        self, entries: Iterable[LdCacheEntry], key_abi: tuple[int, bool, str], abi: Abi,
        c: Closure,
    ) -> _Found | None:
        rank = {h: i for i, h in enumerate(abi.hwcaps)}
        ordered = sorted(entries, key=lambda e: rank.get(e.hwcaps, len(rank)) if e.hwcaps else
                         len(rank) + 1)
        hits = [(e, h) for e in ordered if (h := self._candidate(e.path, key_abi, c))]
        if not hits:
            return None
        first_entry, first = hits[0]
        # Keep the other variants the loader could pick on another CPU: the hwcaps ones, and
        # the plain one when the first choice was a hwcaps variant.
        alts: list[tuple[str, Resolved]] = []
        seen = {first.resolved.path}
        for e, h in hits[1:]:
            if h.resolved.path in seen or not (e.hwcaps or first_entry.hwcaps):
                continue
            seen.add(h.resolved.path)
            alts.append((h.path, h.resolved))
            if not e.hwcaps:
                break
        return _Found(first.path, first.resolved, first.info, tuple(alts))

    def _conf_dirs(self) -> tuple[str, ...]:
        if self._ldconf is None:
            self._ldconf = tuple(read_ld_so_conf(self.root))
        return self._ldconf

    def _musl_sys_path(self, req: _Loaded, abi: Abi) -> tuple[str, ...]:
        main = req
        while main.loader is not None:
            main = main.loader
        interp = main.info.interp or ""
        arch = posixpath.basename(interp)[len("ld-musl-"):].split(".so")[0] or abi.musl_arch or ""
        hit = self._musl_path.get(arch)
        if hit is None:
            path = f"/etc/ld-musl-{arch}.path"
            hit = ("/lib", "/usr/local/lib", "/usr/lib")
            if self.root.is_file(path):
                try:
                    with self.root.open(path) as fh:
                        text = fh.read(1 << 16).decode("utf-8", "replace")
                    hit = tuple(
                        d for d in text.replace("\n", ":").split(":") if d.strip()
                    )
                except (OSError, SymlinkLoop):
                    pass
            self._musl_path[arch] = hit
        return hit
