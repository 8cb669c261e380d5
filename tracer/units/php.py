"""PHP packages installed by Composer: `vendor/composer/installed.json`.

Composer 2 writes `{"packages": [...]}`, Composer 1 a bare list; each package has a
`name`, a `version` and (Composer 2) an `install-path` relative to vendor/composer/,
else it lives at vendor/NAME. The package's directory is the unit. PEAR's registry
(`.registry/*.reg`, PHP-serialized) is not read: PEAR is rare in images and its
packages are usually Debian php-* packages that dpkg already owns; PECL extensions are
single .so files that the ELF closure and the trace already keep.

A path finds the package directory it is in by one walk down a trie of those directories
(innermost wins), not by looking up each of its ancestors as a string.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from tracer.rootfs import normalize
from tracer.units.model import Unit
from tracer.units.reader import DbReader, DirTrie, components

INSTALLED = "/vendor/composer/installed.json"


def read_composer(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    manifests = [p for p in paths if p.endswith(INSTALLED)]
    if not manifests:
        return []
    wanted: dict[str, tuple[str, str | None, str]] = {}  # directory -> name, version, manifest
    for manifest in manifests:
        doc = reader.json(manifest)
        packages = doc.get("packages") if isinstance(doc, dict) else doc
        if not isinstance(packages, list):
            if doc is not None:
                reader.warn(f"{manifest}: no package list; ignored")
            continue
        composer_dir = posixpath.dirname(manifest)
        vendor = posixpath.dirname(composer_dir)
        for pkg in packages:
            if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str):
                continue
            name = pkg["name"][:200]
            version = pkg.get("version") if isinstance(pkg.get("version"), str) else None
            rel = pkg.get("install-path")
            directory = (normalize(posixpath.join(composer_dir, rel)) if isinstance(rel, str)
                         else normalize(f"{vendor}/{name}"))
            canonical = reader.own(directory, manifest)
            if canonical is not None and canonical != "/":
                wanted.setdefault(canonical, (name, version, manifest))
    directories: DirTrie[str] = DirTrie()
    for directory in wanted:
        directories.setdefault(directory, directory)
    members: dict[str, list[str]] = {}
    for path in paths:
        # the innermost package directory holding the path (or the path itself), below /X
        found = None
        for depth, directory in directories.ancestors(components(path), self_too=True):
            if depth >= 2:
                found = directory
        if found is not None:
            members.setdefault(found, []).append(path)
    units: list[Unit] = []
    names: set[str] = set()
    for directory, (name, version, manifest) in sorted(wanted.items()):
        owned = members.get(directory)
        if not owned:
            continue
        if name in names:
            name = f"{name} ({directory})"
        names.add(name)
        reader.count(len(owned), manifest)
        units.append(Unit("composer", name, (version or "")[:100] or None, manifest,
                          tuple(sorted(owned))))
    return units
