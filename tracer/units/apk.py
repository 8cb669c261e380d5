"""Alpine packages from the image's apk database (`/lib/apk/db/installed`).

One record per package, records separated by a blank line; `P:` name, `V:` version, `F:` a
directory (relative to /), `R:` a file in the last `F:` directory. Other fields (checksums,
architecture, ACLs, dependencies) are ignored.

Read in one lazy pass: each `R:` line is joined to its directory, counted against the
entries budget and charged to package_db_bytes as it is read, so a 4,000-byte `F:` followed
by millions of one-letter `R:` lines trips a budget instead of growing gigabytes of paths.
"""

from __future__ import annotations

from tracer.units.model import Unit
from tracer.units.reader import DbReader, chunks, lines

INSTALLED = "/lib/apk/db/installed"


def _own(reader: DbReader, owned: list[str], path: str) -> None:
    c = reader.own(path, INSTALLED)
    if c is not None and c != "/":
        owned.append(c)


def read_apk(reader: DbReader) -> list[Unit]:
    text = reader.text(INSTALLED)
    if text is None:
        return []
    units: list[Unit] = []
    seen: set[str] = set()
    bad = 0
    for block in chunks(text, "\n\n"):
        name = version = None
        directory: str | None = None
        owned: list[str] = []
        for line in lines(block):
            key, sep, value = line.partition(":")
            if not sep or len(key) != 1:
                continue
            if key == "P":
                name = value
            elif key == "V":
                version = value
            elif key == "F":
                directory = value.strip("/")
                _own(reader, owned, "/" + directory)
            elif key == "R":
                if directory is None:
                    bad += 1  # a file before any directory: apk writes R: only after F:
                    directory = ""
                _own(reader, owned, f"/{directory}/{value}" if directory else f"/{value}")
        if not block.strip():
            continue
        if not name or name in seen:
            bad += 1
            continue
        seen.add(name)
        units.append(Unit("apk", name, version or None, INSTALLED, tuple(owned)))
    if bad:
        reader.warn(f"{INSTALLED}: {bad} malformed record(s) (no P: name, a duplicate name, "
                    "or R: before F:); their paths stay at file granularity")
    return units
