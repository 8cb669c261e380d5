"""Ruby gems: `GEM_HOME/specifications/NAME-VERSION.gemspec` with `GEM_HOME/gems/NAME-VERSION/`.

A gem owns its gemspec, its gem directory and its compiled extensions
(`GEM_HOME/extensions/PLATFORM/ABI/NAME-VERSION/`). Default gems
(`specifications/default/`) are part of Ruby's stdlib and have no gem directory; a
gemspec without its gem directory (Debian's rubygems-integration) is left to the system
package that ships the code.

One pass over the image's paths: each path walks down a trie of the gem homes (a path
in a gem vendored inside another gem's directory belongs to both), so the cost is the
paths' length, not gem homes x paths (5,000 homes and 405,000 paths took six minutes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.units.model import Unit
from tracer.units.reader import DbReader, DirTrie, components

SPECS = "/specifications"
EXT = ".gemspec"


def gemspec(path: str) -> tuple[str, str] | None:
    """(gem home, full name) of `HOME/specifications/FULL.gemspec`; None for other paths."""
    directory, _, filename = path.rpartition("/")
    if not directory.endswith(SPECS) or not filename.endswith(EXT) or len(filename) == len(EXT):
        return None
    return directory[: -len(SPECS)], filename[: -len(EXT)]


def name_version(full: str) -> tuple[str, str | None]:
    """`rack-3.0.8` -> (rack, 3.0.8), `nokogiri-1.15.4-x86_64-linux` -> (nokogiri, 1.15.4-...).

    The version starts at the first `-` followed by a digit (not at the start); a full
    name without one, or whose version would end in a lone `-`, is all name.
    """
    cut = full.find("-", 1)
    while cut >= 0 and not (cut + 1 < len(full) and full[cut + 1].isdecimal()):
        cut = full.find("-", cut + 1)
    if cut < 0:
        return full, None
    version = full[cut + 1:]
    dash = version.find("-")
    if dash == len(version) - 1:
        return full, None
    return full[:cut], version


def read_gems(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    specs = [(*found, p) for p in paths if (found := gemspec(p)) is not None]
    if not specs:
        return []
    # gem home -> (home, the full names of its gems)
    homes: DirTrie[tuple[str, set[str]]] = DirTrie()
    for home, full, _ in specs:
        homes.setdefault(home, (home, set()))[1].add(full)
    members: dict[tuple[str, str], list[str]] = {}  # (home, full name) -> paths
    for path in paths:
        names = components(path)
        for depth, (home, fulls) in homes.ancestors(names):
            rest = names[depth:]
            if rest[0] == "gems" and len(rest) >= 2:
                full = rest[1]
            elif rest[0] == "extensions" and len(rest) >= 4:
                full = rest[3]
            else:
                continue
            if full in fulls:
                reader.count(1, f"{home}{SPECS}/{full}{EXT}")
                members.setdefault((home, full), []).append(path)
    units: list[Unit] = []
    taken: set[str] = set()
    for home, full, spec in sorted(specs):
        owned = members.get((home, full))
        if not owned:
            continue
        name, version = name_version(full)
        if name in taken:  # two versions, or two gem homes
            name = full if full not in taken else f"{full} ({home})"
        taken.add(name)
        reader.count(1, spec)
        units.append(Unit("gem", name, version, spec, tuple(sorted([spec, *owned]))))
    return units


# `s.add_runtime_dependency(%q<rack>.freeze, [">= 2"])`, `spec.add_dependency "rack"`;
# add_development_dependency is what a gem needs to be built or tested, not to run.
RUNTIME_DEPENDENCY = re.compile(  # one way to match each run of spaces: no backtracking
    r"\.add_(?:runtime_)?dependency\s*(?:\(\s*)?(?:%q<([^>\s]+)>|\"([^\"\s]+)\"|'([^'\s]+)')")


def read_runtime_dependencies(reader: DbReader, unit: Unit) -> list[str]:
    """Gem names the gemspec of gem unit `unit` declares as runtime dependencies."""
    text = reader.text(unit.source)
    if text is None:
        return []
    names = [next(g for g in m.groups() if g) for m in RUNTIME_DEPENDENCY.finditer(text)]
    return list(dict.fromkeys(n for n in names if len(n) <= 200))


def gem_name(spec: str) -> tuple[str, str] | None:
    """(GEM_HOME, gem name) of a path `GEM_HOME/specifications/NAME-VERSION.gemspec`."""
    found = gemspec(spec)
    if found is None:
        return None
    home, full = found
    return home, name_version(full)[0]
