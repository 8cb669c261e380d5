"""`keep.binaries` entries turned into the in-image programs they name.

An operator writes what they would type: a path (`/usr/bin/memcached`), a glob
(`/usr/bin/memc*`, `/opt/app/**/bin/*`), or a bare program name (`memcflush`). A glob
used to be handed to the resolver as a literal path, matched nothing, and kept nothing
without a word; here each entry is expanded inside the image, and an entry that matches
nothing is reported so the caller can refuse it by name.

Globs follow keep.paths' rules (`tracer.analysis.keeplist.compile_globs`: `*`, `?` and `[...]`
within a name, `**` across directories) and are matched against the image's paths as the
pattern spells them: the literal directory before the first wildcard is resolved in the
image (so `/bin/gz*` works under merged /usr), and below it the tree is walked without
following directory links (so a link loop cannot make the walk endless). A match must be
a regular file once its links are followed in the image (a program, a library or a
script; not a directory). Bare names are looked up on the image's PATH as execvp does; a
bare glob (`memc*`) matches the executables of every PATH directory, a name in an earlier
directory hiding the same name in a later one. Nothing here looks at the host.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.analysis.keeplist import compile_globs
from tracer.errors import BadInput
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.static.script import DEFAULT_PATH, which

WILDCARDS = "*?["


@dataclass
class BinaryMatches:
    """What each keep.binaries entry names in the image, in the order they were given."""

    matched: dict[str, list[str]] = field(default_factory=dict)  # entry -> in-image paths

    @property
    def unmatched(self) -> list[str]:
        """Entries that name nothing in the image (a typo, or a program not installed)."""
        return [entry for entry, paths in self.matched.items() if not paths]

    def paths(self) -> list[str]:
        """Every matched path once, in entry order: the resolver's roots."""
        return list(dict.fromkeys(p for paths in self.matched.values() for p in paths))

    def require_all(self, where: str = "keep.binaries") -> None:
        """Raise BadInput naming every entry that matched nothing."""
        if self.unmatched:
            names = ", ".join(repr(e) for e in self.unmatched)
            raise BadInput(f"{where}: {names} matches nothing in the image; fix or remove it "
                           "(a path or glob is matched inside the image, a bare name on its "
                           "PATH; `tracer ldd IMAGE NAME` shows what a name resolves to)")


def expand_binaries(root: RootFS, entries: Iterable[str], path_env: str | None = None,
                    cwd: str = "/") -> BinaryMatches:
    """Expand keep.binaries `entries` inside `root` (see the module docstring).

    `path_env` is the container's PATH (None: the default a shell would use); `cwd` its
    working directory, for relative paths.
    """
    path_env = path_env if path_env is not None else DEFAULT_PATH
    out = BinaryMatches()
    for entry in entries:
        if entry in out.matched:
            continue
        if "/" not in entry:
            out.matched[entry] = _on_path(root, entry, path_env)
            continue
        path = entry if entry.startswith("/") else posixpath.join(cwd, entry)
        if any(ch in path for ch in WILDCARDS):
            out.matched[entry] = _glob(root, path)
        else:
            out.matched[entry] = [path] if _is_file(root, path) else []
    return out


def _is_file(root: RootFS, path: str) -> bool:
    st = root.stat(path)  # links followed inside the image; a loop is None
    return st is not None and stat.S_ISREG(st.st_mode)


def _on_path(root: RootFS, name: str, path_env: str) -> list[str]:
    if not any(ch in name for ch in WILDCARDS):
        found = which(root, name, path_env)
        return [found] if found else []
    [(_, rx)] = compile_globs([name])
    seen: dict[str, str] = {}
    for d in path_env.split(":"):
        d = d or "/"  # an empty element is the working directory: "/" in a container
        for n in root.listdir(d):
            if n not in seen and rx.fullmatch(n) and (hit := which(root, n, d)):
                seen[n] = hit
    return sorted(seen.values())


def _literal_dir(pattern: str) -> str:
    """The directory part of a glob before its first wildcard (`/a/b/*.so` -> `/a/b`)."""
    cut = min(i for i, ch in enumerate(pattern) if ch in WILDCARDS)
    return pattern[:cut].rsplit("/", 1)[0] or "/"


def _glob(root: RootFS, pattern: str) -> list[str]:
    [(_, rx)] = compile_globs([pattern])
    top = _literal_dir(pattern)
    try:
        real_top = root.resolve(top).path
    except SymlinkLoop:
        return []
    if not root.is_dir(real_top):
        return []
    rest = pattern[len(top):].strip("/")
    depth = None if "**" in rest else rest.count("/") + 1  # levels below `top` to look at
    found: list[str] = []
    todo: list[tuple[str, str, int]] = [(top.rstrip("/"), real_top, 0)]
    while todo:
        shown, real, level = todo.pop()
        for name in root.listdir(real):
            path, real_path = f"{shown}/{name}", f"{real.rstrip('/')}/{name}"
            st = root.lstat(real_path)
            if st is None:
                continue
            if rx.fullmatch(path) and _is_file(root, real_path):
                found.append(path)
            if stat.S_ISDIR(st.st_mode) and (depth is None or level + 1 < depth):
                todo.append((path, real_path, level + 1))
    return sorted(found)
