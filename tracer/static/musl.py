"""musl's dynamic linker: where it looks for a library, one method per rule of its order.

musl's ldso/dynlink.c `load_library`, for a name without a slash, after the names musl's
loader is itself (libc, libpthread, libm, libdl, librt, libutil, libxnet: `lib` + one of
those + `.`):

1. LD_LIBRARY_PATH, split on `:` and newlines, empty elements skipped, no `$ORIGIN`;
2. DT_RUNPATH, else DT_RPATH, of the requester, then of the object that loaded it, up to
   the executable (musl inherits RUNPATH too, unlike glibc); only `$ORIGIN`/`${ORIGIN}`
   is expanded, and a list with any other `$` is not used;
3. the system path: the file PREFIX/etc/ld-musl-ARCH.path (PREFIX is the loader's path
   less its last two components, so /lib/ld-musl-x86_64.so.1 reads
   /etc/ld-musl-x86_64.path), else /lib:/usr/local/lib:/usr/lib.

The first file that opens ends the search: there are no hwcaps subdirectories, no class
or machine check on the way (a file musl cannot load is an error, not a reason to look
further), and an open error other than ENOENT/ENOTDIR/EACCES (a symlink loop) ends the
whole search, not one list. DT_NEEDED names are used as they are.
"""

from __future__ import annotations

import posixpath
import re

from tracer.rootfs import SymlinkLoop
from tracer.static.closure import Closure
from tracer.static.search import (
    STOP,
    DirSearch,
    Found,
    Loaded,
    SearchList,
    component_ok,
    inherited,
)

BUILTIN = re.compile(r"^lib(c|pthread|rt|m|dl|util|xnet)\.")
ORIGIN = re.compile(r"\$(ORIGIN|\{ORIGIN\})")
SYSTEM_PATH = "/lib:/usr/local/lib:/usr/lib"
MUSL_PRELOAD_SEPARATORS = re.compile("[ \t\n\v\f\r:]")
MAX_PATH_FILE_BYTES = 1 << 20


def is_musl(interp: str | None) -> bool:
    """Whether a PT_INTERP names musl's loader."""
    return bool(interp and posixpath.basename(interp).startswith("ld-musl-"))


class MuslLoader:
    """musl's search rules over one image root."""

    def __init__(self, search: DirSearch, env: dict[str, str]) -> None:
        self.search = search
        self.root = search.root
        self.env_library_path = env.get("LD_LIBRARY_PATH") or None
        self.env_preload = env.get("LD_PRELOAD") or None

    def find(self, name: str, req: Loaded, c: Closure) -> Found | None:
        """The file musl maps for `name` requested by `req`, or None (not found)."""
        key = req.info.abi_key
        if "/" in name:
            return self.search.open_path(name, key, c, first_file_wins=True)
        if not component_ok(name):
            return None  # musl: strlen(name) > NAME_MAX fails before any search
        for lists in (self.ld_library_path(), self.rpath_chain(req), self.system_path(req)):
            for lst in lists:
                hit = self.search.find(lst, name, key, c, first_file_wins=True)
                if hit is STOP:
                    return None
                if isinstance(hit, Found):
                    return hit
        return None

    def ld_library_path(self) -> tuple[SearchList, ...]:
        """Rule 1: LD_LIBRARY_PATH as it is (musl expands nothing in it)."""
        if not self.env_library_path:
            return ()
        return (self._list(self.env_library_path),)

    def rpath_chain(self, req: Loaded) -> tuple[SearchList, ...]:
        """Rule 2: DT_RUNPATH (else DT_RPATH) of the requester and each object above it."""
        return inherited(req, "musl:rpath", self._own_rpath)

    def system_path(self, req: Loaded) -> tuple[SearchList, ...]:
        """Rule 3: PREFIX/etc/ld-musl-ARCH.path, else musl's built-in default."""
        main = req
        while main.loader is not None:
            main = main.loader
        interp = main.info.interp or ""
        key = ("musl:system", interp)
        hit = self.search.memo.get(key)
        if hit is None:
            hit = self.search.memo[key] = self._list(self._read_path_file(interp))
        return (hit,)  # type: ignore[return-value]

    def preloads(self, c: Closure) -> list[tuple[str, str]]:
        """(name, "LD_PRELOAD"): musl's load_preload splits it at C isspace() characters
        and colons; musl reads no preload file."""
        return [(n, "LD_PRELOAD") for n in MUSL_PRELOAD_SEPARATORS.split(self.env_preload or "")
                if n]

    def needed_names(self, name: str, obj: Loaded) -> tuple[str, ...]:
        """musl expands nothing in a DT_NEEDED name."""
        return (name,)

    @staticmethod
    def builtin(name: str) -> bool:
        """A name musl's loader answers with itself (it is libc, libpthread, libm ...)."""
        return bool(BUILTIN.match(name))

    # -- helpers --------------------------------------------------------------------------
    def _own_rpath(self, obj: Loaded) -> SearchList | None:
        spec = obj.info.runpath if obj.info.runpath is not None else obj.info.rpath
        if spec is None:
            return None
        if "$" in spec:
            if "$" in ORIGIN.sub("", spec):
                return None  # fixup_rpath: a `$` other than $ORIGIN voids the list
            origin = posixpath.dirname(obj.path) or "."
            spec = ORIGIN.sub(lambda _m: origin, spec)
        return self._list(spec)

    def _list(self, spec: str) -> SearchList:
        """path_open's walk: elements between `:` and newlines, empty ones skipped."""
        key = ("musl:list", spec)
        hit = self.search.memo.get(key)
        if hit is None:
            dirs = []
            for element in spec.replace("\n", ":").split(":"):
                self.search.work.spend(1)
                if element:
                    dirs.append(self.search.absolute(element))
            hit = self.search.memo[key] = self.search.search_list(dirs)
        return hit  # type: ignore[return-value]

    def _read_path_file(self, interp: str) -> str:
        base = posixpath.basename(interp)
        arch = base[len("ld-musl-"):].split(".so", 1)[0]
        path = f"{_prefix(interp)}/etc/ld-musl-{arch}.path"
        try:
            if not self.root.exists(path):
                return SYSTEM_PATH
            with self.root.open(path) as fh:
                return fh.read(MAX_PATH_FILE_BYTES).decode("utf-8", "surrogateescape")
        except (OSError, SymlinkLoop):
            return ""  # musl: a path file that exists but cannot be read means no path


def _prefix(interp: str) -> str:
    """musl's prefix for its path file: the loader's path up to its second-to-last `/`."""
    if not interp.startswith("/"):
        return ""
    slashes = [i for i, ch in enumerate(interp) if ch == "/"]
    return interp[:slashes[-2]] if len(slashes) >= 2 else ""
