"""Python units outside the system package manager: distributions and stdlib packages.

- A distribution installed by pip (or any installer following the packaging spec) has
  `NAME-VERSION.dist-info/RECORD`: a CSV whose first column is a path relative to the site
  directory (the dist-info's parent), `../../../bin/tool` for scripts. Legacy setuptools
  installs have `NAME-VERSION[-pyX.Y].egg-info/installed-files.txt`, one path per line
  relative to the egg-info directory itself.
- The standard library (a `lib/pythonX.Y` directory holding `os.py`, e.g. the python:3.x
  images' /usr/local/lib/python3.11) has no manifest, so its directory structure is the
  unit: a package directory (`encodings/`, `json/`) is one unit, a top-level module
  (`csv.py` with its `__pycache__/csv.*.pyc`) is one, each `lib-dynload/` extension is
  one. Codec lookups, lazy imports and plugins stay within one such package, which is
  what makes it the right size. site-packages/dist-packages below it are not stdlib.

Both readers are one pass over the image's paths: a path finds its stdlib directory by a
walk down a trie of them (not by looking up each of its ancestors, which costs the square
of a deep path's length), and a manifest's entries are read and charged one at a time.
"""

from __future__ import annotations

import csv
import posixpath
import re
import stat
from collections.abc import Iterator, Sequence

from tracer.rootfs import normalize
from tracer.units.model import Unit
from tracer.units.reader import DbReader, DirTrie, components, lines

STDLIB_DIR = re.compile(r"^(.*/lib(?:64)?/python(\d+\.\d+)t?)/os\.py$")
OS_PY = "/os.py"
SITE_DIRS = ("site-packages", "dist-packages")


def dist_name(dirname: str, suffix: str) -> tuple[str, str | None]:
    """`requests-2.31.0.dist-info` -> (requests, 2.31.0); names there never hold '-'."""
    stem = dirname[: -len(suffix)]
    name, _, rest = stem.partition("-")
    version = rest.split("-", 1)[0] or None
    return name or stem, version


def _record_paths(text: str, base: str, where: str, reader: DbReader) -> Iterator[str]:
    """The paths a RECORD lists, absolute, one at a time (relative ones are below `base`)."""
    try:
        for row in csv.reader(lines(text)):
            if row and row[0]:
                p = row[0]
                yield p if p.startswith("/") else normalize(posixpath.join(base, p))
    except csv.Error as exc:
        reader.warn(f"{where}: not a valid RECORD ({exc}); read up to the error")


def _installed_files(text: str, directory: str) -> Iterator[str]:
    """The paths an egg-info's installed-files.txt lists, absolute, one at a time."""
    for line in lines(text):
        if line.strip():
            yield line if line.startswith("/") else normalize(posixpath.join(directory, line))


def read_distributions(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    units: list[Unit] = []
    names: set[str] = set()
    for path in paths:
        directory, _, filename = path.rpartition("/")
        dirname = directory.rpartition("/")[2]
        if filename == "RECORD" and dirname.endswith(".dist-info"):
            text = reader.text(path)
            if text is None:
                continue
            listed = _record_paths(text, posixpath.dirname(directory), path, reader)
            name, version = dist_name(dirname, ".dist-info")
        elif filename == "installed-files.txt" and dirname.endswith(".egg-info"):
            text = reader.text(path)
            if text is None:
                continue
            listed = _installed_files(text, directory)
            name, version = dist_name(dirname, ".egg-info")
        else:
            continue
        owned = {c for p in listed if (c := reader.own(p, path)) is not None}
        owned.update(c for p in (directory, path) if (c := reader.canonical(p, path)) is not None)
        owned.discard("/")
        # two installs of one name (a venv and the system) are two units
        key_name = name if name not in names else f"{name} ({directory})"
        names.add(key_name)
        units.append(Unit("python-dist", key_name, version, path, tuple(sorted(owned))))
    return units


def read_stdlib(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    roots: DirTrie[tuple[str, str]] = DirTrie()  # stdlib directory -> (it, its version)
    for p in paths:
        if p.endswith(OS_PY) and (m := STDLIB_DIR.match(p)):
            roots.setdefault(m.group(1), (m.group(1), m.group(2)))
    if not roots:
        return []
    members: dict[str, tuple[str, str, list[str]]] = {}  # unit -> (base, version, paths)
    for path in paths:
        names = components(path)
        # the innermost stdlib directory this path is under, if any
        found = None
        for depth, root in roots.ancestors(names):
            if depth:
                found = depth, root
        if found is None:
            continue
        depth, (base, version) = found
        comps = names[depth:]
        first = comps[0]
        if first in SITE_DIRS:
            continue
        if first in ("__pycache__", "lib-dynload"):
            if len(comps) != 2:
                continue  # the directory itself: shared by every module
            stem = comps[1].split(".", 1)[0]
            unit = f"{base}/{stem}" if first == "__pycache__" else f"{base}/lib-dynload/{stem}"
        elif len(comps) == 1:
            st = reader.root.lstat(path)
            is_dir = st is not None and stat.S_ISDIR(st.st_mode)
            unit = f"{base}/{first}" if is_dir else f"{base}/{first.split('.', 1)[0]}"
        else:
            unit = f"{base}/{first}"
        reader.count(1, "python stdlib directories")
        members.setdefault(unit, (base, version, []))[2].append(path)
    return [Unit("python-stdlib", name, version, f"{base} (stdlib directory layout)",
                 tuple(sorted(owned)))
            for name, (base, version, owned) in sorted(members.items())]


# -- declared requirements (granularity deps) ---------------------------------------------

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_EXTRA = re.compile(r"\bextra\s*==")


def normalize_name(name: str) -> str:
    """PEP 503: `Foo_Bar.baz` and `foo-bar-baz` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(text: str, source: str, reader: DbReader) -> str | None:
    """The project a `Requires-Dist` value (PEP 508) names, unless it is an extra's.

    Requirements of an extra (`; extra == "socks"`) are left out: nothing says the extra
    was installed. Other markers (`python_version < "3.10"`, `platform_system ==
    "Windows"`) are not evaluated: a requirement the image's installer skipped is not
    installed, so taking it adds nothing, and one installed anyway is kept at the price
    of its size. Only the name is needed, so no full PEP 508 parser is: a value whose
    version part does not even balance its parentheses is taken by its name, with a
    warning.
    """
    spec, _, marker = text.partition(";")
    if _EXTRA.search(marker):
        return None
    m = _NAME.match(spec)
    if m is None:
        if text.strip():
            reader.warn(f"{source}: Requires-Dist {text[:80]!r} names no project; ignored")
        return None
    rest = spec[m.end():]
    if rest.count("(") != rest.count(")") or rest.count("[") != rest.count("]"):
        reader.warn(f"{source}: Requires-Dist {text[:80]!r} does not parse; taken by its "
                    "name")
    return normalize_name(m.group(1))


def read_requirements(reader: DbReader, unit: Unit) -> list[str]:
    """Normalized names of the projects distribution `unit` requires (PEP 508, see
    `_requirement_name`): `Requires-Dist` of a dist-info's METADATA, or the lines before
    the first `[section]` of an egg-info's requires.txt (the sections are extras or
    markers; a `[:marker]` section is taken when its marker may hold)."""
    directory = posixpath.dirname(unit.source)
    names: list[str] = []
    if directory.endswith(".dist-info"):
        text = reader.text(f"{directory}/METADATA")
        if text is None:
            return []
        for line in text.splitlines():
            if not line.strip():
                break  # the headers end here; the description follows
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == "requires-dist":
                name = _requirement_name(value.strip(), unit.source, reader)
                if name:
                    names.append(name)
    elif directory.endswith(".egg-info"):
        text = reader.text(f"{directory}/requires.txt")
        marker = ""
        for line in (text or "").splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
                marker = section[1:] if section.startswith(":") else "extra"
                continue
            if not line or line.startswith("#") or marker == "extra":
                continue
            name = _requirement_name(f"{line} ; {marker}" if marker else line, unit.source,
                                     reader)
            if name:
                names.append(name)
    return list(dict.fromkeys(names))
