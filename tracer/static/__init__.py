"""Static ELF / #! closure: every file the dynamic loader would map, found without running.

Public API: Resolver(root, env).closure(roots) -> Closure; which(); format_text(); to_json().
"""

from tracer.static.elf import CorruptElf, ElfInfo, parse_elf
from tracer.static.output import format_text, to_json
from tracer.static.resolver import Closure, Missing, Need, Resolver
from tracer.static.script import entrypoint_roots, which

__all__ = [
    "Closure",
    "CorruptElf",
    "ElfInfo",
    "Missing",
    "Need",
    "Resolver",
    "entrypoint_roots",
    "format_text",
    "parse_elf",
    "to_json",
    "which",
]
