"""Package granularity wired onto a keep-list builder: the one call the pipeline makes.

The file-level keep-list is built first (it is also what the report compares against);
then every unit a kept file belongs to is added with a `package` reason, and the ELF
closure runs again over what the units added (and what keep.packages and keep.paths
named, which no closure covered either), because an added program or plugin needs
its own libraries (`gconv/IBM1047.so` needs nothing, `/usr/bin/iconv` would need libc),
which may live in packages nothing pulled in. Only ELF files are closure roots: scripts
a package ships (`#! /usr/local/bin/python` in the stdlib's cgi.py) would otherwise pull
in interpreters the image does not have and report them missing. The builder then
applies the profile's `exclude` and its closures as for any evidence; a link a unit lists
that leads to what the profile excludes is not added at all, since the symlink closure
would keep its target after all (tzdata's `Jamaica -> America/Jamaica` under an exclude
of `/usr/share/zoneinfo/America/**`).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tracer.analysis.keeplist import EntryLike, KeepList, KeepListBuilder, Reason
from tracer.analysis.policy import IMPLICIT_DLOPENS
from tracer.budgets import DEFAULT, Budgets
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.static import Closure, Resolver
from tracer.static.elf import ELF_MAGIC
from tracer.units.expand import DEFAULT_EXCLUDES, Expansion, expand
from tracer.units.index import UnitIndex
from tracer.units.sizes import SizeTable, unit_sizes

# Reasons of paths the profile names without a closure of their own (keep.binaries
# roots, traced programs and ELF dependencies have theirs from the file-level closure).
NAMED = ("keep.packages", "keep.paths")


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
          resolver: Resolver | None = None, budgets: Budgets = DEFAULT) -> Widening:
    """Add to `builder` what package granularity keeps beyond `file_level` (its build()).

    `builder` must be the builder `file_level` came from (or one holding the same
    evidence): call `builder.build()` afterwards for the package-level keep-list.
    `env` is the run's environment (image Env with the profile's run.env over it): the
    languages in use, and the loader's LD_LIBRARY_PATH for the closure. The closure
    starts from the added ELF files the profile's exclude leaves in the image, and spends
    `budgets.resolver_work` like the file-level one. Programs the profile keeps by name
    (keep.packages, keep.paths) are closed over too: with package granularity, a package's
    program needs its libraries whether a used file pulled the package in or the profile
    named it.
    """
    env = dict(env or {})

    def link_excluded(path: str) -> str | None:
        """The exclude rule a link leads to, unless file level keeps the target anyway."""
        try:
            st = index.root.lstat(path)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return None
            full = index.root.resolve(path, follow_last=True)
        except (OSError, SymlinkLoop):
            return None
        way = [p for p in full.links if p != path] + ([full.path] if full.exists else [])
        for hop in way:
            rule = builder.exclude_rule(hop)
            if rule is not None and hop not in file_level.kept:
                return rule
        return None

    expansion = expand(index, file_level.kept, env=env, excludes=tuple(excludes),
                       link_excluded=link_excluded)
    for path, text in expansion.added.items():
        builder.add(path, Reason("package", text))
    resolver = resolver or Resolver(index.root, env=env, dlopens=IMPLICIT_DLOPENS,
                                    budgets=budgets)
    # what the units added, and what the profile named (keep.packages, keep.paths: a
    # program a unit adds and the same program named by the profile need the same
    # libraries); only what the image will keep: an excluded program needs nothing
    named = [p for p, reasons in file_level.kept.items()
             if any(r.kind in NAMED for r in reasons)]
    roots = [p for p in [*expansion.added, *named] if builder.exclude_rule(p) is None]
    closure = resolver.closure(elf_roots(index.root, roots))
    for path, needs in closure.files.items():
        for need in needs[:3]:
            builder.add(path, Reason("elf", " -> ".join(need.chain) or need.kind))
    return Widening(expansion, closure)


@dataclass
class PackageGranularity:
    """Everything package granularity produced for one image, for the keep-list and report."""

    keeplist: KeepList  # the package-level keep-list (profile exclude and closures applied)
    file_level: KeepList  # what file granularity keeps, for the price comparison
    widening: Widening
    sizes: SizeTable
    warnings: list[str]  # malformed package databases (the run goes on)

    def to_json(self) -> dict[str, Any]:
        """The report's `package_granularity` section: price per unit and what was added."""
        return {**self.sizes.to_json(), "expansion": self.widening.expansion.to_json(),
                "unresolved_after_expansion": sorted(
                    f"{m.name} (needed by {' -> '.join(m.needed_by)})"
                    for m in self.widening.closure.missing),
                "warnings": self.warnings}


def package_granularity(builder: KeepListBuilder, file_level: KeepList, root: RootFS,
                        entries: Mapping[str, EntryLike], *, env: Mapping[str, str] | None = None,
                        budgets: Budgets = DEFAULT) -> PackageGranularity:
    """Index the image, widen `builder` to whole units, build, and price it per unit.

    `builder` holds the file-level evidence and `file_level` is its build(); `entries` is
    the flattened image's index (every path, and sizes for the price).
    """
    index = UnitIndex.build(root, paths=entries, budgets=budgets)
    widening = widen(builder, file_level, index, env=env, budgets=budgets)
    keeplist = builder.build()
    sizes = unit_sizes(index, entries, file_level.kept, keeplist.kept)
    return PackageGranularity(keeplist, file_level, widening, sizes, list(index.warnings))
