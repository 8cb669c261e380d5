"""The files an image's package database lists for a package (keep.packages).

Operators name packages (tzdata, ca-certificates) when they know an application needs
all of a package's data even if one smoke test touches only part of it. Both Debian's
dpkg database and Alpine's apk database are read from the image itself, never the host,
by the same bounded readers package granularity uses (tracer.units): dpkg's status
decides what is installed, diversions move files where dpkg put them, and paths come
back in the image's own names (merged /usr resolved).
"""

from __future__ import annotations

from collections.abc import Iterable

from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput
from tracer.rootfs import RootFS
from tracer.units.apk import read_apk
from tracer.units.dpkg import read_dpkg
from tracer.units.reader import DbReader


def package_files(root: RootFS, names: Iterable[str],
                  budgets: Budgets = DEFAULT) -> dict[str, list[str]]:
    """Map each package name to the paths its database lists; unknown packages are an error.

    A Debian name matches every installed architecture (`libc6`) or one (`libc6:amd64`).
    An unknown package is bad input (exit 2) rather than a silent no-op: a profile that
    asks to keep a package the image does not have is almost certainly a typo or the
    wrong image, and a nightly job should say so.
    """
    names = list(names)
    if not names:
        return {}
    reader = DbReader(root, budgets)
    units = read_dpkg(reader) + read_apk(reader)
    out: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in names:
        matches = [u for u in units if name in (u.name, f"{u.name}:{u.arch}")]
        if not matches:
            unknown.append(name)
            continue
        out[name] = list(dict.fromkeys(p for u in matches for p in u.paths))
    if unknown:
        raise BadInput(
            "keep.packages: not installed in the image (no dpkg .list file nor apk entry): "
            + ", ".join(unknown)
        )
    return out
