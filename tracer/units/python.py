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
"""

from __future__ import annotations

import csv
import posixpath
import re
import stat
from collections.abc import Sequence

from tracer.rootfs import normalize
from tracer.units.model import Unit
from tracer.units.reader import DbReader

STDLIB_DIR = re.compile(r"^(.*/lib(?:64)?/python(\d+\.\d+)t?)/os\.py$")
SITE_DIRS = ("site-packages", "dist-packages")


def dist_name(dirname: str, suffix: str) -> tuple[str, str | None]:
    """`requests-2.31.0.dist-info` -> (requests, 2.31.0); names there never hold '-'."""
    stem = dirname[: -len(suffix)]
    name, _, rest = stem.partition("-")
    version = rest.split("-", 1)[0] or None
    return name or stem, version


def _record_paths(text: str, base: str, where: str, reader: DbReader) -> list[str]:
    out: list[str] = []
    try:
        for row in csv.reader(text.splitlines()):
            if row and row[0]:
                out.append(row[0])
    except csv.Error as exc:
        reader.warn(f"{where}: not a valid RECORD ({exc}); read up to the error")
    return [p if p.startswith("/") else normalize(posixpath.join(base, p)) for p in out]


def read_distributions(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    units: list[Unit] = []
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
            listed = [line if line.startswith("/") else normalize(posixpath.join(directory, line))
                      for line in text.splitlines() if line.strip()]
            name, version = dist_name(dirname, ".egg-info")
        else:
            continue
        reader.count(len(listed), path)
        owned = {c for p in [*listed, directory, path] if (c := reader.canonical(p)) is not None}
        owned.discard("/")
        # two installs of one name (a venv and the system) are two units
        key_name = name if not any(u.name == name for u in units) else f"{name} ({directory})"
        units.append(Unit("python-dist", key_name, version, path, tuple(sorted(owned))))
    return units


def read_stdlib(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    roots = {m.group(1): m.group(2) for p in paths if (m := STDLIB_DIR.match(p))}
    if not roots:
        return []
    members: dict[str, list[str]] = {}
    for path in paths:
        # the stdlib directory this path is under, if any (a few ancestors to check)
        parent = path
        base = None
        while "/" in parent.strip("/"):
            parent = parent.rpartition("/")[0]
            if parent in roots:
                base = parent
                break
        if base is None:
            continue
        comps = path[len(base) + 1:].split("/")
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
        members.setdefault(unit, []).append(path)
    reader.count(sum(len(v) for v in members.values()), "python stdlib directories")
    units = []
    for name, owned in sorted(members.items()):
        base = next(b for b in roots if name.startswith(b + "/"))
        units.append(Unit("python-stdlib", name, roots[base], f"{base} (stdlib directory layout)",
                          tuple(sorted(owned))))
    return units


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
