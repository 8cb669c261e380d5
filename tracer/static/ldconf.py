"""The image's /etc/ld.so.conf, with its `include` globs, read inside the image.

ld.so itself never reads this file: ldconfig turns it into /etc/ld.so.cache. The resolver
uses these directories only when the image has no usable cache, as the directories the
cache would have indexed (see resolver.py). Globs are matched against the image's own
directories through RootFS, never the host's.
"""

from __future__ import annotations

import fnmatch
import posixpath

from tracer.rootfs import RootFS, SymlinkLoop

MAX_INCLUDE_DEPTH = 16


def read_ld_so_conf(root: RootFS, path: str = "/etc/ld.so.conf") -> list[str]:
    """Directories listed by `path` and its includes, in order, without duplicates."""
    out: list[str] = []
    _read(root, path, out, set(), 0)
    seen: set[str] = set()
    return [d for d in out if not (d in seen or seen.add(d))]


def _read(root: RootFS, path: str, out: list[str], visited: set[str], depth: int) -> None:
    if depth > MAX_INCLUDE_DEPTH or path in visited or not root.is_file(path):
        return
    visited.add(path)
    try:
        with root.open(path) as fh:
            text = fh.read(1 << 20).decode("utf-8", "replace")
    except (OSError, SymlinkLoop):
        return
    base = posixpath.dirname(path)
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        if word == "include":
            for pattern in rest.split():
                if not pattern.startswith("/"):
                    pattern = posixpath.join(base, pattern)
                for inc in glob_in_image(root, pattern):
                    _read(root, inc, out, visited, depth + 1)
        elif word == "hwcap":
            continue
        else:
            # entries may be separated by spaces, tabs, commas or colons; "dir=TYPE" is old
            for item in line.replace(",", " ").replace(":", " ").replace("\t", " ").split():
                out.append(posixpath.normpath(item.split("=", 1)[0]))


def glob_in_image(root: RootFS, pattern: str) -> list[str]:
    """Expand a glob (wildcards in any component) against the image's directories."""
    paths = ["/"]
    for comp in [c for c in pattern.split("/") if c]:
        nxt: list[str] = []
        for p in paths:
            if any(ch in comp for ch in "*?["):
                nxt.extend(
                    posixpath.join(p, n)
                    for n in root.listdir(p)
                    if fnmatch.fnmatchcase(n, comp) and (comp[0] == "." or n[0] != ".")
                )
            else:
                nxt.append(posixpath.join(p, comp))
        paths = nxt
    return sorted(p for p in paths if root.exists(p))
