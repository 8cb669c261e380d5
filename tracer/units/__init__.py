"""Package units of an image and the granularity dial (`package`, `deps`) built on them.

`UnitIndex.build(root)` reads the image's package databases (dpkg, apk, Python
distributions and stdlib layout, Node packages, gems, Perl .packlists, Composer) and
answers `unit_of(path)` (a unit lists its own `paths`); `expand()` turns a file-level
keep-list into the units it pulls in; `widen()` adds those to a keep-list builder with their
alternatives links, the message catalogs of the languages in use and the ELF closure
over them; `deepen()` adds what their declared dependencies reach (`DependencyGraph`,
`walk`); `unit_sizes()` is the price per unit and position; `package_granularity()` does
all of it for the pipeline in one call.
"""

from tracer.units.deps import DependencyGraph, Pull, Work, walk
from tracer.units.expand import DEFAULT_EXCLUDES, LOCALE_RULE, Expansion, PulledUnit, expand
from tracer.units.index import UnitIndex
from tracer.units.model import Unit
from tracer.units.sizes import NO_UNIT, SizeTable, UnitSize, unit_sizes
from tracer.units.widen import (
    Deepening,
    PackageGranularity,
    Widening,
    deepen,
    elf_roots,
    package_granularity,
    widen,
)

__all__ = [
    "DEFAULT_EXCLUDES",
    "LOCALE_RULE",
    "NO_UNIT",
    "Deepening",
    "DependencyGraph",
    "Expansion",
    "PackageGranularity",
    "Pull",
    "PulledUnit",
    "SizeTable",
    "Unit",
    "UnitIndex",
    "UnitSize",
    "Widening",
    "Work",
    "deepen",
    "elf_roots",
    "expand",
    "package_granularity",
    "unit_sizes",
    "walk",
    "widen",
]
