"""The granularity dial wired onto a keep-list builder: the one call the pipeline makes.

The file-level keep-list is built first (it is also what the report compares against).

`package`: every unit a kept file belongs to is added with a `package` reason; so are
the alternatives links whose current choice is a program of a kept unit
(tracer.units.alternatives, reason `alternatives`) and every message catalog of a
language in use, whichever package ships it (tracer.units.l10n, reason `l10n`). Then the
ELF closure runs again over what the units added (and what keep.packages and keep.paths
named, which no closure covered either), because an added program or plugin needs its
own libraries (`gconv/IBM1047.so` needs nothing, `/usr/bin/iconv` would need libc),
which may live in packages nothing pulled in. Only ELF files are closure roots: scripts
a package ships (`#! /usr/local/bin/python` in the stdlib's cgi.py) would otherwise pull
in interpreters the image does not have and report them missing.

`deps`: `package`, then every unit the declared dependencies of the kept units reach
(tracer.units.deps: dpkg Depends with the Essential set once a kept unit ships a script,
Requires-Dist, package.json, gemspecs), added whole with a `deps` reason naming the
chain, the alternatives of those units, and the ELF closure over what they added.

The builder then applies the profile's `exclude` and its closures as for any evidence; a
link a unit lists that leads to what the profile excludes is not added at all, since the
symlink closure would keep its target after all (tzdata's `Jamaica -> America/Jamaica`
under an exclude of `/usr/share/zoneinfo/America/**`).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis.keeplist import (
    EntryLike,
    KeepList,
    KeepListBuilder,
    Reason,
    compile_globs,
    first_match,
)
from tracer.analysis.policy import IMPLICIT_DLOPENS
from tracer.budgets import DEFAULT, Budgets
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.static import Closure, Resolver
from tracer.static.closure import first_needs
from tracer.static.elf import ELF_MAGIC
from tracer.units.alternatives import AlternativeLink, chosen_links, read_alternatives
from tracer.units.deps import DependencyGraph, Pull, Work, first_script, walk
from tracer.units.expand import (
    DEFAULT_EXCLUDES,
    LOCALE_RULE,
    Expansion,
    PulledUnit,
    add_units,
    expand,
)
from tracer.units.index import UnitIndex
from tracer.units.l10n import catalogs, language_sources
from tracer.units.model import Unit
from tracer.units.reader import DbReader
from tracer.units.sizes import SizeTable, unit_sizes

# Reasons of paths the profile names without a closure of their own (keep.binaries
# roots, traced programs and ELF dependencies have theirs from the file-level closure).
NAMED = ("keep.packages", "keep.paths")


@dataclass
class Widening:
    """What `widen` added: the units, their alternatives links, the catalogs of the
    languages in use, and the ELF closure over the added files."""

    expansion: Expansion
    closure: Closure
    alternatives: dict[str, str] = field(default_factory=dict)  # link -> reason detail
    catalogs: dict[str, str] = field(default_factory=dict)  # path -> reason detail
    languages: dict[str, str] = field(default_factory=dict)  # language -> why in use


@dataclass
class Deepening:
    """What `deepen` added on top of a widening: units the declared dependencies reach."""

    pulls: list[Pull]
    expansion: Expansion
    closure: Closure
    alternatives: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def essential_because(self) -> str | None:
        """Why the Essential set is in (`bzip2 ships the script /usr/bin/bzgrep ...`)."""
        return next((p.essential[1] for p in self.pulls if p.essential), None)

    def to_json(self) -> dict[str, Any]:
        return {"units": [p.to_json() for p in self.expansion.pulled],
                "added_paths": len(self.expansion.added),
                "essential_because": self.essential_because,
                "alternatives": dict(sorted(self.alternatives.items())),
                "unresolved_after_expansion": sorted(
                    f"{m.name} (needed by {' -> '.join(m.needed_by)})"
                    for m in self.closure.missing),
                "warnings": self.warnings}


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


def _link_excluded(builder: KeepListBuilder, index: UnitIndex,
                   before: KeepList) -> Callable[[str], str | None]:
    """The exclude rule a link leads to, unless `before` keeps the target anyway."""

    def rule_of(path: str) -> str | None:
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
            if rule is not None and hop not in before.kept:
                return rule
        return None

    return rule_of


def _alternatives(builder: KeepListBuilder, index: UnitIndex, links: list[AlternativeLink],
                  keys: set[str], globs: list[tuple[str, re.Pattern[str]]],
                  link_excluded: Callable[[str], str | None],
                  taken: Mapping[str, object]) -> dict[str, str]:
    """Add the alternatives links whose choice a unit in `keys` owns (not in `taken`)."""

    def kept_unit(path: str) -> Unit | None:
        unit = index.unit_of(path)
        return unit if unit is not None and unit.key in keys else None

    found = chosen_links(index.root, links, kept_unit)
    added: dict[str, str] = {}
    for link, detail in sorted(found.items()):
        if link in taken or first_match(link, globs) is not None or link_excluded(link):
            continue
        builder.add(link, Reason("alternatives", detail))
        added[link] = detail
    return added


def _close(builder: KeepListBuilder, index: UnitIndex, paths: Iterable[str],
           env: Mapping[str, str], resolver: Resolver | None, budgets: Budgets) -> Closure:
    """The ELF closure over `paths` the image keeps, added to `builder` as `elf`."""
    resolver = resolver or Resolver(index.root, env=env, dlopens=IMPLICIT_DLOPENS,
                                    budgets=budgets)
    roots = sorted({p for p in paths if builder.exclude_rule(p) is None})
    closure = resolver.closure(elf_roots(index.root, roots))
    for path, needs in closure.files.items():
        for need in first_needs(needs):
            builder.add(path, Reason("elf", " -> ".join(need.chain) or need.kind))
    return closure


def widen(builder: KeepListBuilder, file_level: KeepList, index: UnitIndex, *,
          env: Mapping[str, str] | None = None, excludes: Iterable[str] = DEFAULT_EXCLUDES,
          resolver: Resolver | None = None, budgets: Budgets = DEFAULT,
          alternatives: list[AlternativeLink] | None = None) -> Widening:
    """Add to `builder` what package granularity keeps beyond `file_level` (its build()).

    `builder` must be the builder `file_level` came from (or one holding the same
    evidence): call `builder.build()` afterwards for the package-level keep-list.
    `env` is the run's environment (image Env with the profile's run.env over it): the
    languages in use, and the loader's LD_LIBRARY_PATH for the closure. The closure
    starts from the added ELF files the profile's exclude leaves in the image, and spends
    `budgets.resolver_work` like the file-level one. Programs the profile keeps by name
    (keep.packages, keep.paths) are closed over too: with package granularity, a package's
    program needs its libraries whether a used file pulled the package in or the profile
    named it. `alternatives`: the image's alternatives links, when the caller read them.
    """
    env = dict(env or {})
    excludes = tuple(excludes)
    globs = compile_globs(excludes)
    link_excluded = _link_excluded(builder, index, file_level)
    expansion = expand(index, file_level.kept, env=env, excludes=excludes,
                       link_excluded=link_excluded)
    for path, text in expansion.added.items():
        builder.add(path, Reason("package", text))

    if alternatives is None:
        alternatives = read_alternatives(DbReader(index.root, budgets))
    keys = {p.unit.key for p in expansion.pulled}
    taken = {**file_level.kept, **expansion.added}
    links = _alternatives(builder, index, alternatives, keys, globs, link_excluded, taken)

    languages = language_sources(file_level.kept, env)
    files = (p for p, e in builder.entries.items() if e.kind != "dir")
    found: dict[str, str] = {}
    for path, detail in catalogs(files, languages, index.unit_of).items():
        if path in taken or link_excluded(path):
            continue
        builder.add(path, Reason("l10n", detail))
        found[path] = detail

    # what the units added, and what the profile named (keep.packages, keep.paths: a
    # program a unit adds and the same program named by the profile need the same
    # libraries); only what the image will keep: an excluded program needs nothing
    named = [p for p, reasons in file_level.kept.items()
             if any(r.kind in NAMED for r in reasons)]
    closure = _close(builder, index, [*expansion.added, *named], env, resolver, budgets)
    return Widening(expansion, closure, links, found, languages)


def deepen(builder: KeepListBuilder, package_level: KeepList, index: UnitIndex,
           widening: Widening, *, env: Mapping[str, str] | None = None,
           excludes: Iterable[str] = DEFAULT_EXCLUDES, budgets: Budgets = DEFAULT,
           alternatives: list[AlternativeLink] | None = None) -> Deepening:
    """Add to `builder` what deps granularity keeps beyond `package_level` (its build()
    after `widen`): the units the declared dependencies of the units `widening` pulled in
    reach, whole (minus the built-in default excludes), their alternatives links, and the
    ELF closure over what they added. `budgets.resolver_work` bounds the walk."""
    env = dict(env or {})
    excludes = tuple(excludes)
    globs = compile_globs(excludes)
    link_excluded = _link_excluded(builder, index, package_level)

    def keeps(path: str) -> bool:
        return first_match(path, globs) is None and builder.exclude_rule(path) is None

    graph = DependencyGraph(index, budgets)
    work = Work(budgets)
    roots = [p.unit for p in widening.expansion.pulled]
    pulls = walk(graph, roots, work, script=lambda u: first_script(index, u, work, keeps))
    expansion = Expansion(languages=sorted(widening.languages), rules=[*excludes, LOCALE_RULE])
    add_units(expansion, index,
              [PulledUnit(p.unit, p.chain[0], p.reason, chain=p.chain) for p in pulls],
              package_level.kept, languages=set(widening.languages), globs=globs,
              link_excluded=link_excluded)
    for path, text in expansion.added.items():
        builder.add(path, Reason("deps", text))
    if alternatives is None:
        alternatives = read_alternatives(DbReader(index.root, budgets))
    keys = {p.unit.key for p in pulls}
    taken = {**package_level.kept, **expansion.added}
    links = _alternatives(builder, index, alternatives, keys, globs, link_excluded, taken)
    closure = _close(builder, index, expansion.added, env, None, budgets)
    return Deepening(pulls, expansion, closure, links, graph.warnings)


@dataclass
class PackageGranularity:
    """Everything package (or deps) granularity produced for one image, for the keep-list
    and the report."""

    keeplist: KeepList  # the keep-list of the chosen position (exclude and closures applied)
    file_level: KeepList  # what file granularity keeps, for the price comparison
    widening: Widening
    sizes: SizeTable
    warnings: list[str]  # malformed package databases (the run goes on)
    package_level: KeepList | None = None  # with deps: what package granularity keeps
    deepening: Deepening | None = None  # with deps: what the dependency walk added

    @property
    def granularity(self) -> str:
        return "deps" if self.deepening is not None else "package"

    def to_json(self) -> dict[str, Any]:
        """The report's `package_granularity` section: price per unit and what was added
        (with deps, the `deps` part: units the dependencies pulled in, with their chains)."""
        out = {**self.sizes.to_json(), "expansion": self.widening.expansion.to_json(),
               "alternatives": dict(sorted(self.widening.alternatives.items())),
               "catalogs_of_languages_in_use": len(self.widening.catalogs),
               "languages_in_use": dict(sorted(self.widening.languages.items())),
               "unresolved_after_expansion": sorted(
                   f"{m.name} (needed by {' -> '.join(m.needed_by)})"
                   for m in self.widening.closure.missing),
               "warnings": self.warnings}
        if self.deepening is not None:
            out["deps"] = self.deepening.to_json()
        return out


def package_granularity(builder: KeepListBuilder, file_level: KeepList, root: RootFS,
                        entries: Mapping[str, EntryLike], *, env: Mapping[str, str] | None = None,
                        budgets: Budgets = DEFAULT, deps: bool = False) -> PackageGranularity:
    """Index the image, widen `builder` to whole units, build, and price it per unit;
    with `deps`, then deepen it to what the kept units declare they depend on, build
    again, and price all three positions.

    `builder` holds the file-level evidence and `file_level` is its build(); `entries` is
    the flattened image's index (every path, and sizes for the price).
    """
    index = UnitIndex.build(root, paths=entries, budgets=budgets)
    reader = DbReader(root, budgets)
    alternatives = read_alternatives(reader)
    widening = widen(builder, file_level, index, env=env, budgets=budgets,
                     alternatives=alternatives)
    package_level = builder.build()
    warnings = list(index.warnings) + reader.all_warnings()
    if not deps:
        sizes = unit_sizes(index, entries, file_level.kept, package_level.kept)
        return PackageGranularity(package_level, file_level, widening, sizes, warnings)
    deepening = deepen(builder, package_level, index, widening, env=env, budgets=budgets,
                       alternatives=alternatives)
    keeplist = builder.build()
    sizes = unit_sizes(index, entries, file_level.kept, package_level.kept, keeplist.kept)
    return PackageGranularity(keeplist, file_level, widening, sizes,
                              warnings + deepening.warnings, package_level, deepening)
