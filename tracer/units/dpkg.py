"""Debian packages from the image's dpkg database.

- `/var/lib/dpkg/info/NAME.list` or `NAME:ARCH.list` (Multi-Arch: same) lists the paths
  dpkg unpacked for a package, one per line, as the .deb names them (`/lib/...` even on a
  merged-/usr image);
- `/var/lib/dpkg/status` says which packages are installed, with version and
  architecture; a .list of a package that status calls not-installed or config-files is a
  leftover and owns nothing. Without a readable status every .list counts (a warning says
  so), because images that strip status still have their files;
- `/var/lib/dpkg/diversions` (triples: path, diverted-to path, diverting package or `:`
  for a local diversion): a package other than the diverting one that lists the path
  really has its file at the diverted-to path, and the diverting package keeps the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tracer.units.model import Unit
from tracer.units.reader import DbReader, chunks, lines

INFO = "/var/lib/dpkg/info"
STATUS = "/var/lib/dpkg/status"
DIVERSIONS = "/var/lib/dpkg/diversions"

# dpkg's package states in which files are on disk (dpkg(1) "Package states").
PRESENT = {"installed", "half-installed", "unpacked", "half-configured", "triggers-awaited",
           "triggers-pending"}


# Relationship fields a walk of declared dependencies reads (granularity deps); dpkg
# writes each on one line, deb822 allows folding them, so continuation lines are joined.
RELATION_FIELDS = ("depends", "pre-depends", "provides")


@dataclass(frozen=True)
class StatusEntry:
    name: str
    arch: str | None
    version: str | None
    state: str
    essential: bool = False  # `Essential: yes`: never declared as a dependency by anyone
    depends: str = ""  # Pre-Depends and Depends, as written (tracer.units.relations)
    provides: str = ""


def parse_status(text: str, reader: DbReader) -> list[StatusEntry]:
    """Stanzas of the status file; malformed stanzas are skipped with one warning."""
    entries: list[StatusEntry] = []
    bad = 0
    for stanza in chunks(text, "\n\n"):
        fields: dict[str, str] = {}
        folded: dict[str, list[str]] = {}  # relation fields' continuation lines
        last = ""
        for line in lines(stanza):
            if line and line[0] in " \t" and last in RELATION_FIELDS:
                folded.setdefault(last, []).append(line.strip())
                continue
            if not line or line[0] in " \t" or ":" not in line:
                continue  # continuation lines (descriptions, conffiles) and garbage
            key, _, value = line.partition(":")
            last = key.strip().lower()
            if last in fields:
                last = ""  # a repeated field: the first one counts, and only it folds
                continue
            fields[last] = value.strip()
        if not fields:
            continue
        name = fields.get("package", "")
        status = fields.get("status", "").split()
        if not name or len(status) != 3:
            bad += 1
            continue
        reader.count(1, STATUS)
        for key, more in folded.items():
            fields[key] = " ".join([fields[key], *more])
        depends = ", ".join(v for k in ("pre-depends", "depends") if (v := fields.get(k)))
        entries.append(StatusEntry(name, fields.get("architecture") or None,
                                   fields.get("version") or None, status[2],
                                   fields.get("essential", "").lower() == "yes", depends,
                                   fields.get("provides", "")))
    if bad:
        reader.warn(f"{STATUS}: {bad} stanza(s) without Package or a valid Status; skipped")
    return entries


def read_status(reader: DbReader) -> list[StatusEntry] | None:
    """The status file's entries; None when the image has none (or it cannot be read)."""
    text = reader.text(STATUS)
    return None if text is None else parse_status(text, reader)


def parse_diversions(text: str, reader: DbReader) -> list[tuple[str, str, str]]:
    out = []
    triple: list[str] = []
    number = 0
    for number, line in enumerate(lines(text), 1):
        triple.append(line)
        if len(triple) < 3:
            continue
        source, target, package = triple
        triple = []
        reader.count(1, DIVERSIONS)
        if source.startswith("/") and target.startswith("/") and package:
            out.append((source, target, package))
        else:
            reader.warn(f"{DIVERSIONS}: malformed triple at line {number - 2}; ignored")
    if triple:
        reader.warn(f"{DIVERSIONS}: {number} lines is not a whole number of "
                    "(path, diverted-to, package) triples; the incomplete one is ignored")
    return out


def _list_paths(text: str) -> Iterator[str]:
    return (line for line in lines(text) if line.startswith("/") and line != "/.")


def read_dpkg(reader: DbReader) -> list[Unit]:
    """Installed Debian packages with their (diverted, canonical) paths; [] without dpkg."""
    root = reader.root
    if not root.is_dir(INFO):
        return []
    lists = [n for n in root.listdir(INFO) if n.endswith(".list") and len(n) > 5]
    if not lists:
        return []
    status = read_status(reader)
    if status is None:
        reader.warn(f"{STATUS} is missing or unreadable: every .list file counts as an "
                    "installed package, versions unknown")
    # the first entry with files on disk, by name and by (name, architecture)
    present: dict[tuple[str, str | None], StatusEntry] = {}
    for entry in status or ():
        if entry.state in PRESENT:
            present.setdefault((entry.name, None), entry)
            present.setdefault((entry.name, entry.arch), entry)

    raw: dict[str, tuple[str, str | None, str | None, list[str]]] = {}  # list file -> unit
    skipped = 0
    for filename in sorted(lists):
        stem = filename[:-5]
        name, _, arch = stem.partition(":")
        if not name:
            continue
        version: str | None = None
        if status is not None:
            found = present.get((name, arch or None))
            if found is None:
                skipped += 1
                continue
            version = found.version
        text = reader.text(f"{INFO}/{filename}")
        if text is None:
            continue
        paths = []
        for path in _list_paths(text):
            reader.count(1, f"{INFO}/{filename}")
            paths.append(path)
        raw[filename] = (name, arch or None, version, paths)
    if skipped:
        reader.warn(f"{INFO}: {skipped} .list file(s) of packages dpkg's status does not "
                    "call installed; ignored")

    diversions_text = reader.text(DIVERSIONS)
    diversions = parse_diversions(diversions_text, reader) if diversions_text else []
    diverted = {source: (target, package) for source, target, package in diversions}

    units: list[Unit] = []
    for filename, (name, arch, version, paths) in raw.items():
        owned: list[str] = []
        for path in paths:
            hit = diverted.get(path)
            if hit is not None and hit[1] != name:
                path = hit[0]  # dpkg put this package's copy at the diverted-to name
            canonical = reader.canonical(path, f"{INFO}/{filename}")
            if canonical is not None and canonical != "/":
                owned.append(canonical)
        units.append(Unit("dpkg", name, version, f"{INFO}/{filename}",
                          tuple(dict.fromkeys(owned)), arch))
    return units
