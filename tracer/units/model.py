"""What a package unit is, and where each kind of ownership sits in an image.

A unit is the smallest set of files that someone installed together and that a program
may use in part today and in another part tomorrow: a Debian or Alpine package, a Python
distribution, a directory-level stdlib package, a Node package, a gem, a Perl module with
its .packlist, a Composer package. The package granularity keeps every unit a kept file
belongs to, so it needs to know which unit owns a path (`UnitIndex.unit_of`) and what else
that unit owns (`Unit.paths`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Which owner wins when several units list the same path: the system package manager is
# the authority on what was installed together (Debian's libpython3.11-stdlib owns all of
# /usr/lib/python3.11), then language manifests, then directory conventions (a stdlib
# directory, a node_modules package directory) for what no manifest claims.
PRIORITY = {
    "dpkg": 0,
    "apk": 0,
    "python-dist": 1,
    "gem": 1,
    "perl": 1,
    "composer": 1,
    "node": 2,
    "python-stdlib": 3,
}

# How a unit kind is named in keep-list reasons and reports.
_LABEL = {
    "dpkg": "package",
    "apk": "package",
    "python-dist": "python distribution",
    "gem": "gem",
    "perl": "perl module",
    "composer": "composer package",
    "node": "node package",
    "python-stdlib": "python stdlib",
}


@dataclass(frozen=True, eq=False)
class Unit:
    """One installed unit: what it is, the in-image paths it owns and who said so.

    `paths` are canonical in-image paths (parent directories resolved through the image's
    symlinks, the last component not followed), so `/lib/x86_64-linux-gnu/libc.so.6` from
    a .list file is stored as `/usr/lib/x86_64-linux-gnu/libc.so.6` on a merged-/usr image.
    They include directories the database lists and paths the image no longer has: the
    index reports what the database says, the expansion checks what exists. Equality and
    hashing use `key` only, so a unit is cheap to put in sets and dicts.
    """

    kind: str  # dpkg | apk | python-dist | python-stdlib | node | gem | perl | composer
    name: str
    version: str | None
    source: str  # the file (or directory rule) the ownership came from
    paths: tuple[str, ...] = field(repr=False)
    arch: str | None = None  # dpkg multi-arch packages: the architecture of the .list file

    @property
    def key(self) -> str:
        """Unique within one image: kind, name and (dpkg) architecture."""
        return f"{self.kind}:{self.name}" + (f":{self.arch}" if self.arch else "")

    @property
    def label(self) -> str:
        """How reasons name it: `package libc6`, `python stdlib encodings`, `gem rack 3.0.8`."""
        text = f"{_LABEL.get(self.kind, self.kind)} {self.name}"
        if self.version and self.kind not in ("dpkg", "apk", "python-stdlib"):
            text += f" {self.version}"
        return text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unit) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)
