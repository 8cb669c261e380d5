"""Perl modules installed by ExtUtils::MakeMaker / Module::Build (cpan, cpanm): `.packlist`.

`.../auto/Foo/Bar/.packlist` lists, one per line, the absolute paths the installation of
Foo::Bar wrote (optionally followed by ` key=value` attributes, e.g. `type=link
from=...`). Modules installed by Debian packages have no .packlist; dpkg owns them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.units.model import Unit
from tracer.units.reader import DbReader

PACKLIST = re.compile(r"^.*/auto/(.+)/\.packlist$")
ATTRIBUTES = re.compile(r"^(/.*?)((?:\s+\w+=\S*)*)\s*$")


def read_perl(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    units: list[Unit] = []
    names: set[str] = set()
    for path in paths:
        m = PACKLIST.match(path)
        if m is None:
            continue
        text = reader.text(path)
        if text is None:
            continue
        listed = [a.group(1) for line in text.splitlines() if (a := ATTRIBUTES.match(line))]
        reader.count(len(listed), path)
        owned = {c for p in [*listed, path] if (c := reader.canonical(p)) is not None}
        owned.discard("/")
        name = m.group(1).replace("/", "::")
        if name in names:
            name = f"{name} ({path})"
        names.add(name)
        units.append(Unit("perl", name, None, path, tuple(sorted(owned))))
    return units
