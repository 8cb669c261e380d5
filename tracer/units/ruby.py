"""Ruby gems: `GEM_HOME/specifications/NAME-VERSION.gemspec` with `GEM_HOME/gems/NAME-VERSION/`.

A gem owns its gemspec, its gem directory and its compiled extensions
(`GEM_HOME/extensions/PLATFORM/ABI/NAME-VERSION/`). Default gems
(`specifications/default/`) are part of Ruby's stdlib and have no gem directory; a
gemspec without its gem directory (Debian's rubygems-integration) is left to the system
package that ships the code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.units.model import Unit
from tracer.units.reader import DbReader

GEMSPEC = re.compile(r"^(.*)/specifications/([^/]+)\.gemspec$")
VERSION = re.compile(r"^(.+?)-(\d[^-]*(?:-.+)?)$")  # name-1.2.3 or name-1.2.3-x86_64-linux


def read_gems(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    specs = [(m.group(1), m.group(2), p) for p in paths if (m := GEMSPEC.match(p))]
    if not specs:
        return []
    homes = {home for home, _, _ in specs}
    # gem directory / extension directory -> the gem (full name) it belongs to
    gem_of: dict[str, str] = {}
    for home, full, _ in specs:
        gem_of[f"{home}/gems/{full}"] = full
    members: dict[str, list[str]] = {}
    for path in paths:
        for home in homes:
            if not path.startswith(home + "/"):
                continue
            comps = path[len(home) + 1:].split("/")
            if comps[0] == "gems" and len(comps) >= 2:
                full = gem_of.get(f"{home}/gems/{comps[1]}")
            elif comps[0] == "extensions" and len(comps) >= 4:
                full = gem_of.get(f"{home}/gems/{comps[3]}")
            else:
                full = None
            if full is not None:
                members.setdefault(f"{home}/{full}", []).append(path)
    units: list[Unit] = []
    names: set[str] = set()
    for home, full, spec in sorted(specs):
        owned = members.get(f"{home}/{full}")
        if not owned:
            continue
        m = VERSION.match(full)
        name, version = (m.group(1), m.group(2)) if m else (full, None)
        if name in names:  # two versions, or two gem homes
            name = full if full not in names else f"{full} ({home})"
        names.add(name)
        reader.count(len(owned) + 1, spec)
        units.append(Unit("gem", name, version, spec, tuple(sorted([spec, *owned]))))
    return units


# `s.add_runtime_dependency(%q<rack>.freeze, [">= 2"])`, `spec.add_dependency "rack"`;
# add_development_dependency is what a gem needs to be built or tested, not to run.
RUNTIME_DEPENDENCY = re.compile(
    r"\.add_(?:runtime_)?dependency\s*\(?\s*(?:%q<([^>\s]+)>|\"([^\"\s]+)\"|'([^'\s]+)')")


def read_runtime_dependencies(reader: DbReader, unit: Unit) -> list[str]:
    """Gem names the gemspec of gem unit `unit` declares as runtime dependencies."""
    text = reader.text(unit.source)
    if text is None:
        return []
    names = [next(g for g in m.groups() if g) for m in RUNTIME_DEPENDENCY.finditer(text)]
    return list(dict.fromkeys(n for n in names if len(n) <= 200))


def gem_name(spec: str) -> tuple[str, str] | None:
    """(GEM_HOME, gem name) of a path `GEM_HOME/specifications/NAME-VERSION.gemspec`."""
    m = GEMSPEC.match(spec)
    if m is None:
        return None
    v = VERSION.match(m.group(2))
    return m.group(1), v.group(1) if v else m.group(2)
