"""Declared dependencies between units, and the walk `keep.granularity: deps` makes.

A kept program reaches more than the files of its own unit: ImageMagick's fonts are in
fonts-dejavu-core, which libmagickcore-6.q16-6 -> libfontconfig1 -> fontconfig-config
depends on; PHP's session store /var/lib/php/sessions is a directory of php-common, a
dependency of php8.2-common; a Python distribution imports what its Requires-Dist names.
Package managers write these edges down, so the walk reads them per unit kind:

- dpkg: `Pre-Depends` and `Depends` of the status file (tracer.units.relations). Of the
  alternatives `a | b` the first installed one that satisfies the version is taken; a
  virtual name is resolved to every installed package that Provides it; `:any` and
  `:native` qualifiers allow any architecture, an unqualified name prefers the
  depender's (or `all`). Essential packages (`Essential: yes`) are never declared, and
  every shell script may run them (`sed`, `grep`, `tar`), so the Essential set and its
  own dependencies are pulled in as soon as one walked unit ships a script: an
  executable regular file starting with `#!` (read through the image root, at most
  SCRIPT_HEAD bytes of it);
- Python distributions: `Requires-Dist` of METADATA (an egg-info's requires.txt), extras
  left out, markers evaluated for the image (tracer.units.python), resolved to a
  distribution of that name, in the same site directory first, including those a
  system package installed (a `.dist-info`/`.egg-info` directory it owns);
- Node packages: `dependencies`, `optionalDependencies` and `peerDependencies` of
  package.json, resolved the way Node resolves them: `node_modules/NAME` in the
  package's directory, then in every ancestor directory up to the root;
- gems: `add_runtime_dependency`/`add_dependency` of the gemspec, in the same GEM_HOME
  first, then any, then a gemspec a system package owns.

The walk is a breadth-first search from the kept units with one visited set, so every
unit is expanded once, a cycle ends, and each pulled unit has a shortest chain back to a
kept unit: that chain is its reason (`deps: package fonts-dejavu-core: imagemagick-6.q16
-> libmagickcore-6.q16-6 -> libfontconfig1 -> fontconfig-config -> fonts-dejavu-core`).
Every unit expanded, edge followed and file looked at for a script spends one unit of
`budgets.resolver_work`: a crafted graph costs at most that much, then it is bad input
naming the budget. Databases are read through one DbReader (package_db_bytes, warnings).
"""

from __future__ import annotations

import posixpath
import stat
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tracer.budgets import DEFAULT, Budgets
from tracer.rootfs import SymlinkLoop
from tracer.units.dpkg import PRESENT, StatusEntry, read_status
from tracer.units.index import UnitIndex
from tracer.units.model import Unit
from tracer.units.node import MARK, read_dependencies
from tracer.units.python import SITE_DIRS, dist_name, normalize_name, read_requirements
from tracer.units.reader import DbReader
from tracer.units.relations import Relation, parse_provides, parse_relations, satisfies
from tracer.units.ruby import gem_name, read_runtime_dependencies

SCRIPT_HEAD = 128  # bytes read of a file to see whether it is a #! script


class Work:
    """Steps of one dependency walk, counted against budgets.resolver_work."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self.used = 0

    def spend(self, n: int = 1) -> None:
        self.used += n
        self.budgets.check("resolver_work", self.used,
                           "the dependency walk of granularity deps (units, edges, scripts)")


@dataclass(frozen=True)
class Pull:
    """A unit the walk pulled in, and the shortest chain of declared dependencies to it."""

    unit: Unit
    chain: tuple[str, ...]  # unit names: a kept unit, ..., this unit
    # through the Essential set: (the Essential unit on the chain, the script that needs it)
    essential: tuple[str, str] | None = None

    @property
    def reason(self) -> str:
        """The keep-list reason detail of every path the unit adds."""
        text = f"{self.unit.label}: {' -> '.join(self.chain)}"
        if self.essential is not None:
            name, script = self.essential
            text += f" ({name} is Essential and {script})"
        return text


def first_script(index: UnitIndex, unit: Unit, work: Work,
                 keep: Callable[[str], bool] = lambda _p: True) -> str | None:
    """`ships the script /usr/bin/bzgrep (#!/bin/sh)` for the first executable `#!` file
    of `unit` that `keep(path)` says the image keeps; None when it ships none."""
    root = index.root
    for path in unit.paths:
        work.spend()
        if not keep(path):
            continue
        try:
            st = root.lstat(path)
            if st is None or not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111 \
                    or st.st_size < 2:
                continue
            with root.open(path) as f:
                head = f.read(SCRIPT_HEAD)
        except (OSError, SymlinkLoop):
            continue
        if head.startswith(b"#!"):
            line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
            return f"{unit.name} ships the script {path}" + (f" (#!{line})" if line else "")
    return None


class DependencyGraph:
    """The declared dependencies of the units of one image, read on demand."""

    def __init__(self, index: UnitIndex, budgets: Budgets = DEFAULT) -> None:
        self.index = index
        self.reader = DbReader(index.root, budgets)
        self._dpkg: _Dpkg | None = None
        self._dists: dict[str, list[tuple[str, Unit]]] | None = None
        self._node_dirs: dict[str, Unit] | None = None
        self._gems: dict[str, list[tuple[str, Unit]]] | None = None

    @property
    def warnings(self) -> list[str]:
        return self.reader.all_warnings()

    def dpkg(self) -> _Dpkg:
        if self._dpkg is None:
            self._dpkg = _Dpkg(self.index, read_status(self.reader) or [])
        return self._dpkg

    def essential(self) -> list[Unit]:
        """Installed Essential packages (none on an image without dpkg)."""
        if not any(u.kind == "dpkg" for u in self.index.units.values()):
            return []
        return self.dpkg().essential()

    def requires(self, unit: Unit, work: Work) -> list[Unit]:
        """The units `unit` declares it needs, resolved in this image (see module doc);
        every candidate looked at spends `work`."""
        if unit.kind == "dpkg":
            return self.dpkg().requires(unit, work)
        if unit.kind == "python-dist":
            return self._python(unit, work)
        if unit.kind == "node":
            return self._node(unit, work)
        if unit.kind == "gem":
            return self._gem(unit, work)
        return []

    # -- python -------------------------------------------------------------------------
    def _python(self, unit: Unit, work: Work) -> list[Unit]:
        if self._dists is None:
            self._dists = {}
            for path, keys in self.index.owners.items():
                directory, _, name = path.rpartition("/")
                if posixpath.basename(directory) not in SITE_DIRS:
                    continue
                for suffix in (".dist-info", ".egg-info"):
                    if name.endswith(suffix) and keys:
                        project = normalize_name(dist_name(name, suffix)[0])
                        owner = self.index.units[keys[0]]
                        self._dists.setdefault(project, []).append((directory, owner))
        site = posixpath.dirname(posixpath.dirname(unit.source))
        out: list[Unit] = []
        for project in read_requirements(self.reader, unit):
            found = self._dists.get(project, [])
            work.spend(1 + len(found))
            same = [u for d, u in found if d == site]
            out += same or [u for _, u in found]
        return out

    # -- node ---------------------------------------------------------------------------
    def _node(self, unit: Unit, work: Work) -> list[Unit]:
        if self._node_dirs is None:
            self._node_dirs = {posixpath.dirname(u.source): u for u in self.index.units.values()
                               if u.kind == "node"}
        out: list[Unit] = []
        for name in read_dependencies(self.reader, unit):
            directory = posixpath.dirname(unit.source)
            while True:
                work.spend()
                if posixpath.basename(directory) != "node_modules":
                    candidate = directory.rstrip("/") + MARK + name
                    if candidate in self._node_dirs:
                        out.append(self._node_dirs[candidate])
                        break
                if directory == "/":
                    break
                directory = posixpath.dirname(directory)
        return out

    # -- gems ---------------------------------------------------------------------------
    def _gem(self, unit: Unit, work: Work) -> list[Unit]:
        if self._gems is None:
            self._gems = {}
            for path, keys in self.index.owners.items():
                found = gem_name(path) if keys else None
                if found is not None:
                    home, name = found
                    self._gems.setdefault(name, []).append((home, self.index.units[keys[0]]))
        here = gem_name(unit.source)
        home = here[0] if here else ""
        out: list[Unit] = []
        for name in read_runtime_dependencies(self.reader, unit):
            found = self._gems.get(name, [])
            work.spend(1 + len(found))
            gems = [(h, u) for h, u in found if u.kind == "gem"]
            same = [u for h, u in gems if h == home]
            out += same or [u for _, u in gems] or [u for _, u in found]
        return out


class _Dpkg:
    """Depends, Pre-Depends, Provides and Essential of the installed Debian packages."""

    def __init__(self, index: UnitIndex, status: Sequence[StatusEntry]) -> None:
        self.index = index
        self.by_name: dict[str, list[StatusEntry]] = {}
        self.providers: dict[str, list[tuple[StatusEntry, Relation]]] = {}
        for entry in status:
            if entry.state not in PRESENT:
                continue
            self.by_name.setdefault(entry.name, []).append(entry)
            for provided in parse_provides(entry.provides):
                self.providers.setdefault(provided.name, []).append((entry, provided))

    def unit_of(self, entry: StatusEntry) -> Unit | None:
        units = self.index.units
        return units.get(f"dpkg:{entry.name}:{entry.arch}") or units.get(f"dpkg:{entry.name}")

    def entry_of(self, unit: Unit) -> StatusEntry | None:
        for entry in self.by_name.get(unit.name, ()):
            if unit.arch is None or entry.arch == unit.arch:
                return entry
        return None

    def essential(self) -> list[Unit]:
        found = {u.key: u for entries in self.by_name.values() for e in entries
                 if e.essential and (u := self.unit_of(e)) is not None}
        return [found[k] for k in sorted(found)]

    def requires(self, unit: Unit, work: Work) -> list[Unit]:
        entry = self.entry_of(unit)
        if entry is None or not entry.depends:
            return []
        out: list[Unit] = []
        for group in parse_relations(entry.depends):
            for alternative in group:
                chosen = self._resolve(alternative, entry.arch, work)
                if chosen:
                    out += chosen
                    break
        return out

    def _resolve(self, relation: Relation, arch: str | None, work: Work) -> list[Unit]:
        """The installed units satisfying one alternative: the real package of that name
        if one satisfies it, else every package providing it (versioned: with a version
        that satisfies it)."""
        named = self.by_name.get(relation.name, ())
        provided = self.providers.get(relation.name, ())
        work.spend(1 + len(named) + len(provided))
        real = [e for e in named if satisfies(e.version, relation.op, relation.version)]
        if relation.arch not in ("any", "native", None):
            real = [e for e in real if e.arch in (relation.arch, "all")]
        elif relation.arch is None and len(real) > 1:
            real = [e for e in real if e.arch in (arch, "all")] or real
        for entry in real:
            unit = self.unit_of(entry)
            if unit is not None:
                return [unit]
        out: list[Unit] = []
        for entry, version in provided:
            if relation.op is not None and not (
                    version.op == "=" and satisfies(version.version, relation.op,
                                                    relation.version)):
                continue
            unit = self.unit_of(entry)
            if unit is not None and unit not in out:
                out.append(unit)
        return sorted(out, key=lambda u: u.key)


def walk(graph: DependencyGraph, roots: Iterable[Unit], work: Work, *,
         script: Callable[[Unit], str | None] | None = None) -> list[Pull]:
    """Every unit the declared dependencies of `roots` reach, each once, by a shortest
    chain; `roots` themselves are not in the result.

    `script(unit)` says whether a unit ships a script (`first_script`): the first walked
    unit (roots first, in their order) that does pulls in the Essential set, whose
    dependencies the walk then follows as well.
    """
    roots = list(dict.fromkeys(roots))
    seen = {u.key for u in roots}
    queue: deque[tuple[Unit, tuple[str, ...], tuple[str, str] | None]] = deque(
        (u, (u.name,), None) for u in roots)
    essential = graph.essential() if script is not None else []
    pulls: list[Pull] = []

    def pull(unit: Unit, chain: tuple[str, ...], why: tuple[str, str] | None) -> None:
        work.spend()
        if unit.key in seen:
            return
        seen.add(unit.key)
        found = Pull(unit, (*chain, unit.name), why)
        pulls.append(found)
        queue.append((unit, found.chain, why))

    while queue:
        unit, chain, why = queue.popleft()
        work.spend()
        for dep in graph.requires(unit, work):
            pull(dep, chain, why)
        if essential and script is not None and (shipped := script(unit)) is not None:
            for dep in essential:
                pull(dep, chain, (dep.name, shipped))
            essential = []  # once: every Essential unit is now walked
    return pulls
