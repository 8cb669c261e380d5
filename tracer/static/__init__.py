"""Static ELF / #! closure: every file the dynamic loader would map, found without running.

Public API: Resolver(root, env, dlopens=..., budgets=...).closure(roots) -> Closure;
which(); format_text(); to_json(); expand_binaries() for keep.binaries patterns.
"""

from tracer.static.closure import Closure, Missing, Need
from tracer.static.elf import CorruptElf, ElfInfo, parse_elf
from tracer.static.output import format_text, to_json
from tracer.static.resolver import Resolver
from tracer.static.roots import BinaryMatches, expand_binaries
from tracer.static.script import which

__all__ = [
    "BinaryMatches",
    "Closure",
    "CorruptElf",
    "ElfInfo",
    "Missing",
    "Need",
    "Resolver",
    "expand_binaries",
    "format_text",
    "parse_elf",
    "to_json",
    "which",
]
