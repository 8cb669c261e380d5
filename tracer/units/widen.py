"""Package granularity wired onto a keep-list builder: the one call the pipeline makes.

The file-level keep-list is built first (it is also what the report compares against);
then every unit a kept file belongs to is added with a `package` reason, and the ELF
closure runs again over what the units added, because an added program or plugin needs
its own libraries (`gconv/IBM1047.so` needs nothing, `/usr/bin/iconv` would need libc),
which may live in packages nothing pulled in. Only ELF files are closure roots: scripts
a package ships (`#! /usr/local/bin/python` in the stdlib's cgi.py) would otherwise pull
in interpreters the image does not have and report them missing. The builder then
applies the profile's `exclude` and its closures as for any evidence.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tracer.keeplist import KeepList, KeepListBuilder, Reason
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.static import Closure, Resolver
from tracer.static.elf import ELF_MAGIC
from tracer.units.expand import DEFAULT_EXCLUDES, Expansion, expand
from tracer.units.index import UnitIndex


@dataclass
class Widening:
    """What `widen` added: the expansion, and the ELF closure over the added files."""

    expansion: Expansion
    closure: Closure


def elf_roots(root: RootFS, paths: Iterable[str]) -> list[str]:
    """The regular files among `paths` that start with the ELF magic."""
    out = []
    for path in paths:
        try:
            st = root.lstat(path)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_size < 4:
                continue
            with root.open(path) as f:
                if f.read(4) == ELF_MAGIC:
                    out.append(path)
        except (OSError, SymlinkLoop):
            continue
    return out


def widen(builder: KeepListBuilder, file_level: KeepList, index: UnitIndex, *,
          env: Mapping[str, str] | None = None, excludes: Iterable[str] = DEFAULT_EXCLUDES,
          resolver: Resolver | None = None) -> Widening:
    """Add to `builder` what package granularity keeps beyond `file_level` (its build()).

    `builder` must be the builder `file_level` came from (or one holding the same
    evidence): call `builder.build()` afterwards for the package-level keep-list.
    `env` is the run's environment (image Env with the profile's run.env over it): the
    languages in use, and the loader's LD_LIBRARY_PATH for the closure.
    """
    env = dict(env or {})
    expansion = expand(index, file_level.kept, env=env, excludes=tuple(excludes))
    for path, text in expansion.added.items():
        builder.add(path, Reason("package", text), follow=False)
    resolver = resolver or Resolver(index.root, env=env, implicit_dlopens=True)
    closure = resolver.closure(elf_roots(index.root, expansion.added))
    for path, needs in closure.files.items():
        for need in needs[:3]:
            builder.add(path, Reason("elf", " -> ".join(need.chain) or need.kind), follow=False)
    return Widening(expansion, closure)
