"""Debian relationship fields and version order, as dpkg reads them (deb-control(5)).

`Depends: libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any` is a list of
groups, all of which must hold; a group is a list of alternatives, one of which must
hold; an alternative is a package name, optionally qualified by an architecture
(`:any`, `:native`, `:amd64`) and a version constraint (`<<`, `<=`, `=`, `>=`, `>>`).
Build-dependency syntax (`[amd64]`, `<!nocheck>`) never appears in an installed
package's fields; it is skipped should it appear. `Provides: awk, php-cli (= 8.2)`
names virtual packages, optionally with a version.

The text comes from the image's dpkg status file: hostile input. Parsing is linear in
its length and never fails; what does not parse is left out, and the caller's walk then
simply finds less.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `name:arch (op version)`; names per Debian policy 5.6.1 (lowercase, digits, + - .)
_ALTERNATIVE = re.compile(
    r"^\s*([a-z0-9][a-z0-9+.\-]*)(?::([a-z0-9\-]+))?\s*"
    r"(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?\s*(?:\[[^\]]*\]\s*)?(?:<[^>]*>\s*)*$")
OPERATORS = {"<": "<=", ">": ">="}  # the obsolete forms mean what dpkg still reads them as


@dataclass(frozen=True)
class Relation:
    """One alternative of a relationship field: a name and what it asks of it."""

    name: str
    arch: str | None = None  # any | native | an architecture name; None: the depender's
    op: str | None = None  # << <= = >= >>
    version: str | None = None

    def __str__(self) -> str:
        text = self.name + (f":{self.arch}" if self.arch else "")
        return text + (f" ({self.op} {self.version})" if self.op else "")


def parse_relations(text: str) -> list[list[Relation]]:
    """`a (>= 1) | b, c` -> [[a >= 1, b], [c]]; unparseable alternatives are left out."""
    groups: list[list[Relation]] = []
    for group in text.split(","):
        alternatives: list[Relation] = []
        for alternative in group.split("|"):
            m = _ALTERNATIVE.match(alternative)
            if m is None:
                continue
            name, arch, op, version = m.groups()
            alternatives.append(Relation(name, arch, OPERATORS.get(op, op) if op else None,
                                         version))
        if alternatives:
            groups.append(alternatives)
    return groups


def parse_provides(text: str) -> list[Relation]:
    """`awk, php-cli (= 8.2)` -> the virtual names provided, with their versions."""
    return [r for group in parse_relations(text) for r in group[:1]]


# -- version order (deb-version(7)) -----------------------------------------------------


def _digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _order(ch: str) -> int:
    """dpkg's weight of one non-digit character: ~ sorts before everything, even the end."""
    if ch == "~":
        return -1
    if ch.isascii() and ch.isalpha():
        return ord(ch)
    return ord(ch) + 256


def _compare_part(a: str, b: str) -> int:
    """Compare an upstream version or a Debian revision the way dpkg's verrevcmp does."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not _digit(a[i])) or (j < len(b) and not _digit(b[j])):
            ac = _order(a[i]) if i < len(a) and not _digit(a[i]) else 0
            bc = _order(b[j]) if j < len(b) and not _digit(b[j]) else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and _digit(a[i]) and j < len(b) and _digit(b[j]):
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and _digit(a[i]):
            return 1
        if j < len(b) and _digit(b[j]):
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "0", version
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, ""
    return (int(epoch) if epoch.isdigit() and len(epoch) < 10 else 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions `a` and `b` (epoch, upstream, revision)."""
    ea, ua, ra = _split(a.strip())
    eb, ub, rb = _split(b.strip())
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def satisfies(installed: str | None, op: str | None, wanted: str | None) -> bool:
    """Does version `installed` satisfy `op wanted`? No constraint: yes; no version: no."""
    if op is None or wanted is None:
        return True
    if installed is None:
        return False
    c = compare_versions(installed, wanted)
    return {"<<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">>": c > 0}[op]
