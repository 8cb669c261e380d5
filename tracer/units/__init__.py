"""Package units of an image and the package granularity built on them.

`UnitIndex.build(root)` reads the image's package databases (dpkg, apk, Python
distributions and stdlib layout, Node packages, gems, Perl .packlists, Composer) and
answers `unit_of(path)` / `files_of(unit)`; `expand()` turns a file-level keep-list into
the units it pulls in; `widen()` adds those to a keep-list builder with the ELF closure
over them; `unit_sizes()` is the price per unit; `package_granularity()` does all of it
for the pipeline in one call.
"""

from tracer.units.expand import DEFAULT_EXCLUDES, LOCALE_RULE, Expansion, PulledUnit, expand
from tracer.units.index import UnitIndex
from tracer.units.model import Unit
from tracer.units.sizes import NO_UNIT, SizeTable, UnitSize, unit_sizes
from tracer.units.widen import PackageGranularity, Widening, elf_roots, package_granularity, widen

__all__ = [
    "DEFAULT_EXCLUDES",
    "LOCALE_RULE",
    "NO_UNIT",
    "Expansion",
    "PackageGranularity",
    "PulledUnit",
    "SizeTable",
    "Unit",
    "UnitIndex",
    "UnitSize",
    "Widening",
    "elf_roots",
    "expand",
    "package_granularity",
    "unit_sizes",
    "widen",
]
