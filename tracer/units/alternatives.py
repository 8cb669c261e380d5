"""dpkg's alternatives: `/usr/bin/NAME -> /etc/alternatives/NAME -> the chosen program`.

Debian lets several packages provide one command (`awk` by mawk or gawk, `php` by
php8.2 or php8.3, `identify` by ImageMagick 6 or 7). update-alternatives(1) makes the
command a link to `/etc/alternatives/NAME`, itself a link to the chosen program. Both
links are made by a maintainer script, so they are in no package's .list file: at
package granularity the package of the program is kept and the command is not, and
`identify` fails with "not found" although identify-im6.q16 is in the image.

The administrative directory `/var/lib/dpkg/alternatives/` has one file per group
(update-alternatives(1), "FILES"): the mode (`auto` or `manual`), the master link, then
pairs of lines (slave name, slave link) up to an empty line, then the choices. Which
choice is current is where `/etc/alternatives/NAME` points, so that link is what this
module reads: a link (master or slave) is kept when the program its `/etc/alternatives`
link leads to belongs to a unit the dial keeps, and the link really leads there.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tracer.rootfs import RootFS, SymlinkLoop
from tracer.units.model import Unit
from tracer.units.reader import DbReader

ADMIN_DIR = "/var/lib/dpkg/alternatives"
LINK_DIR = "/etc/alternatives"


@dataclass(frozen=True)
class AlternativeLink:
    """One link an alternatives group manages: the command and its /etc/alternatives name."""

    name: str  # the name in /etc/alternatives (the group's own, or a slave's)
    link: str  # the path programs use: /usr/bin/identify
    group: str  # the group (master) name


def read_alternatives(reader: DbReader) -> list[AlternativeLink]:
    """Every master and slave link of the image's alternatives database; [] without one.

    A file that does not have the documented shape is skipped with a warning.
    """
    root = reader.root
    if not root.is_dir(ADMIN_DIR):
        return []
    names = [n for n in root.listdir(ADMIN_DIR) if not n.startswith(".")]
    reader.count(len(names), ADMIN_DIR)
    links: list[AlternativeLink] = []
    bad = 0
    for name in names:
        text = reader.text(f"{ADMIN_DIR}/{name}")
        if text is None:
            continue
        lines = text.split("\n")
        if len(lines) < 2 or lines[0] not in ("auto", "manual") or not lines[1].startswith("/"):
            bad += 1
            continue
        found = [AlternativeLink(name, lines[1], name)]
        i = 2
        while i + 1 < len(lines) and lines[i]:
            slave, path = lines[i], lines[i + 1]
            if path.startswith("/") and "/" not in slave:
                found.append(AlternativeLink(slave, path, name))
            i += 2
        reader.count(len(found), f"{ADMIN_DIR}/{name}")
        links += found
    if bad:
        reader.warn(f"{ADMIN_DIR}: {bad} file(s) without a mode and a master link; ignored")
    return links


def chosen_links(root: RootFS, links: Iterable[AlternativeLink],
                 kept_unit: Callable[[str], Unit | None]) -> dict[str, str]:
    """`link -> reason detail` for every link whose current choice belongs to a kept unit.

    `kept_unit(path)` answers the kept unit that owns `path` (None: no kept unit does).
    A link is taken only when the image has it as a symlink that resolves, through
    `/etc/alternatives/NAME`, to that choice (an operator may have replaced the command
    with a file of their own: then it is not this mechanism's to keep).
    """
    out: dict[str, str] = {}
    for alt in links:
        hop = f"{LINK_DIR}/{alt.name}"
        try:
            st = root.lstat(alt.link)
            if st is None or not stat.S_ISLNK(st.st_mode):
                continue
            choice = root.resolve(hop, follow_last=True)
            through = root.resolve(alt.link, follow_last=True)
        except (OSError, SymlinkLoop):
            continue
        if not choice.exists or through.path != choice.path:
            continue
        if root.resolve(hop, follow_last=False).path not in through.links:
            continue  # it reaches the program some other way: not the alternative's link
        unit = kept_unit(choice.path)
        if unit is not None:
            out[alt.link] = (f"{alt.link} -> {hop} -> {choice.path}, the current choice of "
                             f"alternative {alt.group} ({unit.label})")
    return out
