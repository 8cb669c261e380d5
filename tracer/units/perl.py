"""Perl modules installed by ExtUtils::MakeMaker / Module::Build (cpan, cpanm): `.packlist`.

`.../auto/Foo/Bar/.packlist` lists, one per line, the absolute paths the installation of
Foo::Bar wrote (optionally followed by ` key=value` attributes, e.g. `type=link
from=...`). Modules installed by Debian packages have no .packlist; dpkg owns them.

Both the file name and the lines are taken apart by hand, in one pass each: the regular
expressions this replaced (`^.*/auto/(.+)/\\.packlist$` on every path of the image, a lazy
path followed by repeated attributes on every line) backtracked over each `/auto/` of a
path and each `key=` of a line, so 10,000 image paths of `/auto/auto/...` took minutes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.units.model import Unit
from tracer.units.reader import DbReader, lines

SUFFIX = "/.packlist"
MARK = "/auto/"
SPACE = re.compile(r"(\s+)")  # one match per run of white space: linear
ATTRIBUTE = re.compile(r"\w+=\S*")  # fullmatch on one word: linear


def module_name(path: str) -> str | None:
    """`/usr/lib/perl5/auto/Foo/Bar/.packlist` -> `Foo::Bar`; None for any other path.

    The module directory is what follows the last `/auto/` that leaves a non-empty name.
    """
    if not path.endswith(SUFFIX):
        return None
    stem = path[: -len(SUFFIX)]
    cut = stem.rfind(MARK)
    while cut >= 0:
        rest = stem[cut + len(MARK):]
        if rest:
            return rest.replace("/", "::")
        cut = stem.rfind(MARK, 0, cut + len(MARK) - 1)  # occurrences may share a "/"
    return None


def listed_path(line: str) -> str | None:
    """The path a .packlist line names: the line without its trailing ` key=value` words.

    None for a line that does not start with `/`.
    """
    if not line.startswith("/"):
        return None
    parts = SPACE.split(line.rstrip())  # words and the white space between them, alternating
    while len(parts) >= 3 and ATTRIBUTE.fullmatch(parts[-1]):
        del parts[-2:]
    return "".join(parts)


def read_perl(reader: DbReader, paths: Sequence[str]) -> list[Unit]:
    units: list[Unit] = []
    names: set[str] = set()
    for path in paths:
        name = module_name(path)
        if name is None:
            continue
        text = reader.text(path)
        if text is None:
            continue
        owned = {c for line in lines(text)
                 if (p := listed_path(line)) is not None and (c := reader.own(p, path)) is not None}
        own = reader.canonical(path, path)
        if own is not None:
            owned.add(own)
        owned.discard("/")
        if name in names:
            name = f"{name} ({path})"
        names.add(name)
        units.append(Unit("perl", name, None, path, tuple(sorted(owned))))
    return units
