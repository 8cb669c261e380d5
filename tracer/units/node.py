"""Node packages: each directory npm installed under a `node_modules` directory.

A package is `.../node_modules/NAME` or `.../node_modules/@SCOPE/NAME` holding a
`package.json`; it owns everything below it except its own nested `node_modules/`, whose
packages are units of their own. A `package.json` deeper inside a package (`lib/esm/
package.json` saying `{"type": "module"}`) does not start a new unit: only the directory
npm installs into does. Name and version come from that package.json when it parses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.units.model import Unit
from tracer.units.reader import DbReader

MARK = "/node_modules/"
# a package name as a directory under node_modules: `name` or `@scope/name`, no `..`
NPM_NAME = re.compile(r"^(?:@[^/@\s.][^/@\s]*/)?[^/@\s.][^/@\s]*$")


def package_dir(path: str) -> str | None:
    """The package directory `path` belongs to (innermost node_modules), or None."""
    cut = path.rfind(MARK)
    if cut < 0:
        return None
    rest = path[cut + len(MARK):].split("/")
    if rest[0].startswith("@"):
        if len(rest) < 2 or not rest[1]:
            return None  # the scope directory itself
        name = rest[0] + "/" + rest[1]
    else:
        name = rest[0]
    if not name or name.startswith("."):
        return None  # .bin, .package-lock.json: npm's own, no package
    return path[: cut + len(MARK)] + name


def read_node(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    members: dict[str, list[str]] = {}
    for path in paths:
        if MARK not in path:
            continue
        directory = package_dir(path)
        if directory is not None:
            members.setdefault(directory, []).append(path)
    units: list[Unit] = []
    names: set[str] = set()
    for directory, owned in sorted(members.items()):
        manifest = directory + "/package.json"
        if manifest not in owned:
            continue
        doc = reader.json(manifest)
        name = directory.rpartition(MARK)[2]
        version = None
        if isinstance(doc, dict):
            if isinstance(doc.get("name"), str) and doc["name"]:
                name = doc["name"][:200]
            if isinstance(doc.get("version"), str):
                version = doc["version"][:100] or None
        if name in names:  # the same package at two places in the tree
            name = f"{name} ({directory})"
        names.add(name)
        reader.count(len(owned), manifest)
        units.append(Unit("node", name, version, manifest, tuple(sorted(owned))))
    return units


# What npm installs of a package's manifest: its dependencies, the optional ones that
# installed, and (npm 7 and later) its peers. devDependencies are never installed for a
# dependency, so they are not read.
DEPENDENCY_FIELDS = ("dependencies", "optionalDependencies", "peerDependencies")


def read_dependencies(reader: DbReader, unit: Unit) -> list[str]:
    """Package names the manifest of node unit `unit` depends on (see DEPENDENCY_FIELDS)."""
    doc = reader.json(unit.source)
    if not isinstance(doc, dict):
        return []
    names: list[str] = []
    for field_name in DEPENDENCY_FIELDS:
        deps = doc.get(field_name)
        if isinstance(deps, dict):
            names += [n for n in deps if isinstance(n, str) and len(n) <= 214
                      and NPM_NAME.match(n)]
    return list(dict.fromkeys(names))
