"""glibc's ld.so: where it looks for a library, one method per rule of ld.so(8).

ld.so(8), "Search order" (and elf/dl-load.c `_dl_map_object`), for a name without a slash:

1. DT_RPATH: of the requester, then of the object that loaded it, up to the executable;
   only when the requester has no DT_RUNPATH (and an object's DT_RPATH is void when it
   has a DT_RUNPATH);
2. LD_LIBRARY_PATH (the image's or profile's Env), `:` or `;` separated; its `$ORIGIN` is
   the executable's directory;
3. DT_RUNPATH of the requester only (not inherited);
4. /etc/ld.so.cache; for a requester with DF_1_NODEFLIB, entries in the default
   directories are skipped (tracer: an image without a cache has its ld.so.conf
   directories stand in for it, as the directories ldconfig would have indexed);
5. the default directories (/lib, /usr/lib, Debian's multiarch ones), unless the requester
   has DF_1_NODEFLIB.

A name with a slash is opened as it is. Each directory of rules 1, 2, 3 and 5 is tried
with its glibc-hwcaps (and legacy hwcap) subdirectories first; a file of another ELF class
or machine is skipped. `$ORIGIN`, `$LIB` and `$PLATFORM` are expanded in each element of a
path list and in DT_NEEDED names; `$ORIGIN` is the directory of the object whose list it
is (of the executable for LD_LIBRARY_PATH), as that object was found.

Subdirectories and `$PLATFORM` are those of every CPU of the ELF's architecture (abi.py),
and a hit that only some CPUs find does not end the search: the rules are followed on to
a hit every CPU finds, and every hit on the way is kept (search.py).

Before the executable's DT_NEEDED, ld.so maps the preloads (LD_PRELOAD, then
/etc/ld.so.preload), each looked up as if the executable needed it; one it cannot find
is reported and ignored: the program starts all the same.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import replace
from functools import lru_cache

from tracer.rootfs import SymlinkLoop
from tracer.static.abi import Abi, abi_for, default_dirs, lib_token
from tracer.static.closure import Closure
from tracer.static.ldcache import LdCacheEntry, LdCacheError, parse_ld_so_cache
from tracer.static.ldconf import read_ld_so_conf
from tracer.static.search import (
    DirSearch,
    Found,
    Loaded,
    SearchList,
    Variants,
    inherited,
    merge,
)

DST = re.compile(r"\$(\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")
LD_SO_CACHE = "/etc/ld.so.cache"
LD_SO_PRELOAD = "/etc/ld.so.preload"
MAX_CACHE_BYTES = 64 << 20  # real caches are well under 1 MiB
MAX_PRELOAD_BYTES = 1 << 20  # real files name a library or two
SECURE_PATH_LIMIT = 4096  # rtld.c: a longer LD_PRELOAD element is skipped
PRELOAD_FILE_SEPARATORS = b" \t\n:"


class GlibcLoader:
    """glibc's search rules over one image root (state: the image's cache, memoized lists)."""

    def __init__(self, search: DirSearch, env: dict[str, str]) -> None:
        self.search = search
        self.root = search.root
        self.env_library_path = env.get("LD_LIBRARY_PATH") or None
        self.env_preload = env.get("LD_PRELOAD") or None
        self._abis: dict[tuple[str, int, bool, int], Abi] = {}
        self._cache: dict[str, list[LdCacheEntry]] | None = None
        self._cache_error: str | None = None
        self._cache_read = False
        self._conf: tuple[str, ...] | None = None
        self._preload_file: list[str] | None = None
        self._preload_error: str | None = None

    # -- the search order -----------------------------------------------------------------
    def find(self, name: str, req: Loaded, c: Closure) -> Found | None:
        """The file ld.so maps for `name` requested by `req`, or None (not found); with
        what other CPUs map instead (the rules in order until a certain hit: search.py)."""
        if "/" in name:
            return self.search.open_path(name, req.info.abi_key, c)
        hits: list[Found] = []
        for hit in self._hits(name, req, c):
            hits.append(hit)
            if hit.certain:
                break
        return merge(hits)

    def _hits(self, name: str, req: Loaded, c: Closure) -> Iterator[Found]:
        """What each rule finds for `name`, in the search order."""
        key = req.info.abi_key
        for lists in (self.dt_rpath(req), self.ld_library_path(req), self.dt_runpath(req)):
            for lst in lists:
                hit = self.search.find(lst, name, key, c)
                if isinstance(hit, Found):
                    yield hit
                # None: not there; STOP: glibc's open_path gave up on this list only
        hit = self.ld_so_cache(name, req, c)
        if hit is not None:
            yield hit
        for lst in self.default_dirs(req):
            hit = self.search.find(lst, name, key, c)
            if isinstance(hit, Found):
                yield hit

    def dt_rpath(self, req: Loaded) -> tuple[SearchList, ...]:
        """Rule 1: DT_RPATH of the requester, then of its loader, ..., the executable."""
        if req.info.runpath is not None:
            return ()
        return inherited(req, "glibc:rpath", lambda o: self._own_list(o, o.info.rpath))

    def ld_library_path(self, req: Loaded) -> tuple[SearchList, ...]:
        """Rule 2: LD_LIBRARY_PATH, with `$ORIGIN` the executable's directory."""
        if not self.env_library_path:
            return ()
        main = req
        while main.loader is not None:
            main = main.loader
        return (self._list(self.env_library_path, main, ":;"),)

    def dt_runpath(self, req: Loaded) -> tuple[SearchList, ...]:
        """Rule 3: DT_RUNPATH of the requester only."""
        lst = self._own_list(req, req.info.runpath)
        return (lst,) if lst is not None else ()

    def ld_so_cache(self, name: str, req: Loaded, c: Closure) -> Found | None:
        """Rule 4: /etc/ld.so.cache, hwcaps entries best first (ld.so.conf dirs if none).

        With DF_1_NODEFLIB on the requester, an entry inside a default directory is not
        used (glibc compares the cached path with each system directory as a prefix).
        """
        abi = self.abi(req)
        system = tuple(d.rstrip("/") + "/" for d in default_dirs(self.root, abi))
        cache = self._read_cache(c)
        if cache is not None:
            entries = cache.get(name, ())
            if req.info.nodeflib:
                entries = [e for e in entries if not e.path.startswith(system)]
            return self._from_cache(entries, req, abi, c)
        dirs = [d for d in self._conf_dirs()
                if not (req.info.nodeflib and (d.rstrip("/") + "/").startswith(system))]
        hit = self.search.find(self._fixed_list(("glibc:conf", abi), dirs, abi), name,
                               req.info.abi_key, c)
        return hit if isinstance(hit, Found) else None

    def default_dirs(self, req: Loaded) -> tuple[SearchList, ...]:
        """Rule 5: the compiled-in system directories, unless DF_1_NODEFLIB."""
        if req.info.nodeflib:
            return ()
        abi = self.abi(req)
        dirs = list(default_dirs(self.root, abi))
        return (self._fixed_list(("glibc:default", abi), dirs, abi),)

    # -- what else ld.so reads --------------------------------------------------------------
    def preloads(self, c: Closure) -> list[tuple[str, str]]:
        """(name, where it came from): LD_PRELOAD, then /etc/ld.so.preload, as rtld.c
        reads them (see split_ld_preload and parse_ld_so_preload)."""
        names = [(n, "LD_PRELOAD") for n in split_ld_preload(self.env_preload or "")]
        if self._preload_file is None:
            self._preload_file = []
            if self.root.is_file(LD_SO_PRELOAD):
                try:
                    with self.root.open(LD_SO_PRELOAD) as fh:
                        data = fh.read(MAX_PRELOAD_BYTES + 1)
                    if len(data) > MAX_PRELOAD_BYTES:
                        self._preload_error = (f"{LD_SO_PRELOAD}: larger than "
                                               f"{MAX_PRELOAD_BYTES >> 20} MiB; not read")
                    else:
                        self._preload_file = parse_ld_so_preload(data)
                        self.search.work.spend(1 + len(self._preload_file))
                except (OSError, SymlinkLoop) as exc:
                    self._preload_error = f"{LD_SO_PRELOAD}: cannot read: {exc}"
        if self._preload_error:
            c.error(self._preload_error)
        return names + [(n, LD_SO_PRELOAD) for n in self._preload_file]

    def needed_names(self, name: str, obj: Loaded) -> tuple[str, ...]:
        """A DT_NEEDED name as ld.so looks it up, with its DSTs expanded: one name per
        value of $PLATFORM when it has one (each the name on some CPUs only)."""
        return self.expand(name, obj, self.abi(obj)) if "$" in name else (name,)

    def abi(self, obj: Loaded) -> Abi:
        info = obj.info
        key = (info.machine, info.elfclass, info.little_endian, info.e_flags)
        hit = self._abis.get(key)
        if hit is None:
            hit = self._abis[key] = abi_for(info)
        return hit

    def expand(self, text: str, obj: Loaded, abi: Abi) -> tuple[str, ...]:
        """`text` with `$ORIGIN` (obj's directory), `$LIB` and `$PLATFORM` substituted:
        one result per value $PLATFORM may take (abi.platforms), none when it has no value
        (glibc's _dl_dst_substitute then drops the element)."""
        origin = posixpath.dirname(obj.path) or "/"
        platforms = abi.platforms if "PLATFORM" in text else ("",)

        out: dict[str, None] = {}
        for platform in platforms:
            values = {"ORIGIN": origin, "PLATFORM": platform}

            def sub(m: re.Match[str], values: dict[str, str] = values) -> str:
                tok = m.group(2) or m.group(3)
                return lib_token(self.root, abi) if tok == "LIB" else values[tok]

            out[DST.sub(sub, text)] = None
        return tuple(out)

    # -- path lists ---------------------------------------------------------------------
    @staticmethod
    @lru_cache(maxsize=64)
    def _variants(abi: Abi) -> Variants:
        """The subdirectories of every CPU of `abi`: one object per Abi, as DirSearch
        memoizes what exists per (directory, Variants)."""
        return Variants(tuple(f"glibc-hwcaps/{h}" for h in abi.hwcaps), abi.legacy_slots())

    def _own_list(self, obj: Loaded, spec: str | None) -> SearchList | None:
        if spec is None:
            return None
        return self._list(spec, obj, ":")

    def _list(self, spec: str, obj: Loaded, seps: str) -> SearchList:
        """A path list as glibc's fillin_rpath splits it: elements split on `seps`, DSTs
        expanded per element, trailing slashes dropped, an empty element the working dir.
        An element with `$PLATFORM` stands for one directory per CPU: each of them is in
        the list, as one that only some CPUs search."""
        abi = self.abi(obj)
        origin = posixpath.dirname(obj.path) if "$" in spec else ""
        key = ("glibc:list", seps, spec, origin, abi)
        hit = self.search.memo.get(key)
        if hit is None:
            for s in seps[1:]:
                spec = spec.replace(s, seps[0])
            dirs: list[str] = []
            cpu: set[int] = set()
            for element in spec.split(seps[0]):
                self.search.work.spend(1)
                expanded = self.expand(element, obj, abi) if "$" in element else (element,)
                for one in expanded:
                    if len(expanded) > 1:
                        cpu.add(len(dirs))
                    if one != "/":
                        one = one.rstrip("/")
                    dirs.append(self.search.absolute(one) if one else self.search.cwd)
            hit = self.search.memo[key] = self.search.search_list(
                dirs, self._variants(abi), frozenset(cpu))
        return hit  # type: ignore[return-value]

    def _fixed_list(self, key: tuple, dirs: list[str], abi: Abi) -> SearchList:
        hit = self.search.memo.get(key)
        if hit is None:
            hit = self.search.memo[key] = self.search.search_list(
                [self.search.absolute(d) for d in dirs], self._variants(abi))
        return hit  # type: ignore[return-value]

    # -- the cache --------------------------------------------------------------------------
    def _read_cache(self, c: Closure) -> dict[str, list[LdCacheEntry]] | None:
        """The image's ld.so.cache by name, read once; None when it has no usable one."""
        if not self._cache_read:
            self._cache_read = True
            if self.root.is_file(LD_SO_CACHE):
                try:
                    with self.root.open(LD_SO_CACHE) as fh:
                        data = fh.read(MAX_CACHE_BYTES + 1)
                    if len(data) > MAX_CACHE_BYTES:
                        raise LdCacheError(f"larger than {MAX_CACHE_BYTES >> 20} MiB")
                    entries = parse_ld_so_cache(data)
                    self.search.work.spend(1 + len(entries))
                    table: dict[str, list[LdCacheEntry]] = {}
                    for e in entries:
                        table.setdefault(e.name, []).append(e)
                    self._cache = table
                except (OSError, SymlinkLoop, LdCacheError) as exc:
                    self._cache_error = f"{LD_SO_CACHE}: unreadable ld.so.cache: {exc}"
        if self._cache_error:
            c.error(self._cache_error)
        return self._cache

    def _from_cache(self, entries: list[LdCacheEntry], req: Loaded, abi: Abi,
                    c: Closure) -> Found | None:
        """The entries the loader may pick: the glibc-hwcaps subdirectories this ABI knows
        best first, then legacy-hwcap entries (each on some CPUs only), up to the first
        plain entry (on every CPU); an entry naming a subdirectory the loader does not know
        is never picked."""
        rank = {h: i for i, h in enumerate(abi.hwcaps)}
        legacy, plain = len(rank), len(rank) + 1

        def order(e: LdCacheEntry) -> int:
            if e.hwcaps is None:
                return plain
            return legacy if e.hwcaps == "legacy-hwcap" else rank[e.hwcaps]

        usable = [e for e in entries if e.hwcaps in rank or e.hwcaps in (None, "legacy-hwcap")]
        hits: list[Found] = []
        for e in sorted(usable, key=order):
            hit = self.search.open_path(e.path, req.info.abi_key, c)
            if hit is not None:
                if e.hwcaps is None:
                    hits.append(hit)  # certain: open_path's answer is a certain one
                    break
                hits.append(replace(hit, certain=False))
        return merge(hits)

    def _conf_dirs(self) -> tuple[str, ...]:
        if self._conf is None:
            self._conf = tuple(read_ld_so_conf(self.root))
            self.search.work.spend(1 + len(self._conf))
        return self._conf



def split_ld_preload(value: str) -> list[str]:
    """LD_PRELOAD as rtld.c's handle_preload_list splits it: at each space and colon only
    (a tab or newline stays part of a name, which then names no file); empty elements and
    elements of SECURE_PATH_LIMIT bytes or more are skipped.

    (For an AT_SECURE program, a setuid one run by another user, glibc also skips names
    with a slash; they are kept here all the same: keeping one more file is harmless.)
    """
    return [n for n in re.split("[ :]", value)
            if n and len(n.encode("utf-8", "surrogateescape")) < SECURE_PATH_LIMIT]


def parse_ld_so_preload(data: bytes) -> list[str]:
    """The names in /etc/ld.so.preload, exactly as glibc 2.36's rtld.c reads the file.

    Names are separated by spaces, tabs, newlines or colons, and `#` starts a comment up
    to the end of its line, with rtld.c's quirk kept: its comment loop never advances its
    start pointer while it shrinks the length left, so after a comment it only looks for
    the next `#` in the first (file size - end of that comment) bytes. A later `#` is then
    part of a name: "# note\n#libx.so\n" preloads a file called `#libx.so`, and
    "#a\nlibx.so #b\n" preloads libx.so and `b` (checked against the real loader by
    tests/test_static_gcc.py). A NUL byte ends the names before it except for the last
    name, which rtld.c copies on its own.
    """
    if not data:
        return []  # rtld.c: an empty file is not mapped
    buf = bytearray(data)
    # Eliminate comments (rtld.c): every '#' before `at` has been blanked, so searching on
    # from `at` finds what memchr from the file's start finds, in linear time.
    rest, at = len(buf), 0
    while rest > 0:
        comment = buf.find(b"#", at, rest)
        if comment < 0:
            break
        rest -= comment
        while True:
            buf[comment] = 0x20
            rest -= 1
            if rest <= 0:
                break
            comment += 1
            if buf[comment] == 0x0A:
                break
        at = comment
    names: list[bytes] = []
    last: bytes | None = None  # rtld.c's "problem": a name not followed by a separator
    if buf[-1] in PRELOAD_FILE_SEPARATORS:
        head = bytes(buf[:-1])
    else:
        start = len(buf)
        while start > 0 and buf[start - 1] not in PRELOAD_FILE_SEPARATORS:
            start -= 1
        last = bytes(buf[start:])
        head = bytes(buf[:start - 1]) if start > 0 else b""
    names += re.split(rb"[ \t\n:]", head.split(b"\0", 1)[0])
    if last is not None:
        names.append(last.split(b"\0", 1)[0])
    return [n.decode("utf-8", "surrogateescape") for n in names if n]
