"""What the loader reads from an ELF file, and nothing more, read with pyelftools and bounds.

The resolver needs, per file: class, byte order and machine (ld.so skips a candidate of
another class or machine and keeps searching), PT_INTERP, and the dynamic section's
DT_NEEDED / DT_RPATH / DT_RUNPATH / DT_SONAME / DT_FLAGS_1. The file is read the way the
loader reads it: the ELF header, the program headers, PT_DYNAMIC, and the dynamic string
table found through DT_STRTAB's address in a PT_LOAD segment.

The ELF format is pyelftools': its ELFStructs define Elf_Ehdr, Elf_Phdr and Elf_Dyn for
each class, byte order and machine, and its enums name the machines, segment types, tags
and flags. Two things are done here rather than by pyelftools' ELFFile, for cause:

- speed: pyelftools parses one field at a time through construct: for the 695 ELF files
  of the bookworm fixture root that took 0.20 s, six times this reader's 0.033 s and more
  than the whole resolver's run (0.13 s, scripts/bench_static.py). So each struct is
  compiled, once per layout, into one struct.Struct made of its own fields' formats (the
  FormatFields' packers), and the enum names the loader compares (PT_LOAD, DT_NEEDED...)
  are turned into numbers once with pyelftools' own mappings; a struct that does not
  compile that way is parsed by pyelftools itself (tests/test_static_elf.py checks that
  both give the same values, and agree with pyelftools' ELFFile on real files);
- bounds: every file of an image is hostile. ELFFile's DynamicSegment finds the string
  table through the section headers (which ld.so never reads, so a crafted file could
  name other libraries to pyelftools than to the loader), walks the section table and
  the dynamic entries until an end marker, and reads strings without bound as strict
  UTF-8. Here each offset and count is checked against the file before it is used, the
  file is read through a capped window (the first HEAD_BYTES once, then checked reads; at
  most MAX_DYNAMIC_BYTES of dynamic entries and MAX_STRING_BYTES of strings), and any
  violation, or anything pyelftools raises, is CorruptElf naming the file (an
  ImageFormatError, exit 2 when it ends a run; the resolver records it and goes on).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, BinaryIO

from elftools.construct import (
    Construct,
    FormatField,
    MappingAdapter,
    MetaArray,
    Pass,
    Struct,
    Value,
)
from elftools.elf.enums import ENUM_DT_FLAGS_1
from elftools.elf.structs import ELFStructs

from tracer.errors import ImageFormatError
from tracer.rootfs import RootFS, SymlinkLoop

ELF_MAGIC = b"\x7fELF"
DF_1_NODEFLIB = ENUM_DT_FLAGS_1["DF_1_NODEFLIB"]  # do not search default dirs / the cache

PATH_MAX = 4096  # the kernel refuses a PT_INTERP longer than this (binfmt_elf)
MAX_PHDR_BYTES = 65536  # the kernel refuses more program header bytes than this
MAX_DYNAMIC_BYTES = 1 << 20  # dynamic entries read per file; real files have < 100
MAX_STRING_BYTES = 1 << 20  # bytes of dynamic strings read per file; real files need KBs
HEAD_BYTES = 16384  # read once; headers and .dynstr of most files lie within it
STRING_TAGS = ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH")


class CorruptElf(ImageFormatError):
    """A file starts like an ELF file but cannot be read as one; the message names it."""


@dataclass(frozen=True)
class ElfInfo:
    """The loader-relevant facts of one ELF file (see module docstring)."""

    path: str
    elfclass: int  # 32 or 64
    little_endian: bool
    machine: str  # pyelftools' e_machine name ("EM_X86_64"), "EM_<number>" when it has none
    e_flags: int
    interp: str | None
    needed: tuple[str, ...]
    rpath: str | None  # None when absent, and when DT_RUNPATH is present (ld.so ignores it)
    runpath: str | None
    soname: str | None
    nodeflib: bool

    @property
    def abi_key(self) -> tuple[int, bool, str]:
        """What must match between a requester and a library for ld.so to accept it."""
        return (self.elfclass, self.little_endian, self.machine)


def parse_elf(root: RootFS, path: str) -> ElfInfo:
    """Parse the loader-relevant parts of the ELF file at in-image `path`.

    Raises CorruptElf (naming `path`) for anything that is not a readable ELF file.
    """
    try:
        with root.open(path) as fh:
            return _Reader(fh, path).info()
    except CorruptElf:
        raise
    except SymlinkLoop as exc:
        raise CorruptElf(f"{path}: cannot read: {exc}") from exc
    except OSError as exc:
        raise CorruptElf(f"{path}: cannot read: {exc.strerror or exc}") from exc


# -- pyelftools' structs, compiled ---------------------------------------------------------

Field = tuple[tuple[str, ...] | None, str, Callable[[Any], Any] | None]


class Record:
    """One pyelftools struct (Elf_Ehdr, Elf_Phdr, Elf_Dyn): its size, and its fields read
    from bytes as pyelftools reads them (see the module docstring): as a dict per record,
    nested as pyelftools nests them (e_ident), without the bytes it has no field for; or,
    for tables, as rows of the raw numbers of some fields, an enum's names turned into its
    numbers once (`code`) rather than each number into a name."""

    def __init__(self, construct: Struct, compile: bool = True) -> None:
        self.construct = construct
        self.size: int = construct.sizeof()
        self.packer: struct.Struct | None = None
        self.enums = dict(_enums(construct))
        self._plans: dict[tuple[str, ...], object] = {}  # fields asked -> how to read them
        fields = _flat(construct, ()) if compile else None
        if fields is None:
            return
        endians = {fmt[0] for path, fmt, _ in fields if path is not None}
        if len(endians) != 1 or not endians <= {"<", ">"}:
            return
        fmt = endians.pop() + "".join(f.lstrip("<>") for _, f, _ in fields)
        if struct.calcsize(fmt) != self.size:
            return
        self.packer = struct.Struct(fmt)
        named = [(path, decode) for path, f, decode in fields if path is not None]
        self.paths = [path for path, _ in named]
        self.decoders = [(i, decode) for i, (_, decode) in enumerate(named) if decode]

    @property
    def compiled(self) -> bool:
        return self.packer is not None

    def code(self, field: str, name: str) -> int | None:
        """The number pyelftools' enum of `field` gives `name` (None: no such name)."""
        return self.enums[field].encoding.get(name)

    def name(self, field: str, number: int) -> Any:
        """What pyelftools' enum of `field` calls `number` (the number if nothing)."""
        return _decoder(self.enums[field])(number)

    def rows(self, data: bytes, names: tuple[str, ...]) -> Iterator[tuple[int, ...]]:
        """For each record of `data` (a whole number of records), the raw numbers of the
        fields `names` (a nested one as "e_ident.EI_OSABI"), as a tuple."""
        plan = self._plans.get(names) if self.packer is not None else _PARSE
        if plan is None:
            paths = [tuple(n.split(".")) for n in names]
            if not all(p in self.paths for p in paths):
                plan = _PARSE  # a field the compiled record skips: pyelftools parses
            else:
                pick = tuple(self.paths.index(p) for p in paths)
                plan = _WHOLE if pick == tuple(range(len(self.paths))) else \
                    operator.itemgetter(*pick)
            self._plans[names] = plan
        if plan is _PARSE or self.packer is None:
            return self._parsed_rows(data, names)
        rows = self.packer.iter_unpack(data)
        return rows if plan is _WHOLE else map(plan, rows)  # type: ignore[arg-type]

    def _parsed_rows(self, data: bytes, names: tuple[str, ...]) -> Iterator[tuple[int, ...]]:
        for at in range(0, len(data), self.size):
            parsed = self.construct.parse(data[at:at + self.size])
            row = []
            for n in names:
                value = parsed
                for part in n.split("."):
                    value = value[part]
                enum = self.enums.get(n.rsplit(".", 1)[-1])
                row.append(enum.encoding[value] if enum and isinstance(value, str) else value)
            yield tuple(row)

    def read(self, data: bytes, at: int = 0) -> dict[str, Any]:
        """The fields of the record at `data[at:]` (which holds `size` bytes there)."""
        if self.packer is None:
            return _plain(self.construct.parse(data[at:at + self.size]))
        values = list(self.packer.unpack_from(data, at))
        for i, decode in self.decoders:
            values[i] = decode(values[i])
        out: dict[str, Any] = {}
        for path, value in zip(self.paths, values, strict=True):
            if len(path) == 1:
                out[path[0]] = value
            else:
                out.setdefault(path[0], {})[path[1]] = value
        return out


def _enums(con: Construct) -> Iterator[tuple[str, MappingAdapter]]:
    """(field name, Enum) for each Enum field of a struct, nested ones too."""
    for sub in getattr(con, "subcons", ()):
        if isinstance(sub, MappingAdapter) and isinstance(sub.subcon, FormatField):
            yield sub.subcon.name, sub
        elif isinstance(sub, Struct):
            yield from _enums(sub)


def _decoder(con: MappingAdapter) -> Callable[[Any], Any]:
    """An Enum's decoding as construct does it: the name, else the number as it is
    (pyelftools' `_default_=Pass`), a fixed default, or an error."""
    decoding, default = con.decoding, con.decdefault

    def decode(value: Any) -> Any:
        hit = decoding.get(value, _MISSING)
        if hit is not _MISSING:
            return hit
        if default is Pass:
            return value
        if default is NotImplemented:
            raise ValueError(f"no name for {value!r} [{con.subcon.name}]")
        return default

    return decode


_MISSING = object()
_PARSE, _WHOLE = object(), object()  # Record.rows: pyelftools parses; every field in order


def _plain(container: Any) -> dict[str, Any]:
    """pyelftools' Container as plain dicts (nested ones too)."""
    return {k: _plain(v) if hasattr(v, "items") else v for k, v in container.items()}


def _flat(con: Construct, where: tuple[str, ...]) -> list[Field] | None:
    """(field path or None for bytes skipped, struct format, enum decoder) per field of a
    struct built from FormatFields, Enums of them, nested Structs and other fixed-size
    parts (skipped: e_ident's magic array and padding); None for anything else."""
    if isinstance(con, Struct):
        if len(where) > 1:
            return None
        out: list[Field] = []
        for sub in con.subcons:
            if isinstance(sub, Value):
                continue  # computed from other fields (d_ptr is d_val): not in the bytes
            part = _flat(sub, where + ((con.name,) if where or con.name == "e_ident" else ()))
            if part is None:
                return None
            out += part
        return out
    if isinstance(con, FormatField):
        return [(where + (con.name,), con.packer.format, None)]
    if isinstance(con, MappingAdapter) and isinstance(con.subcon, FormatField):
        return [(where + (con.subcon.name,), con.subcon.packer.format, _decoder(con))]
    if con.name is not None and not isinstance(con, MetaArray):
        return None  # a named field of another kind: pyelftools parses the struct
    try:
        size = con.sizeof()
    except Exception:  # noqa: BLE001 - a size known only when parsing: not compiled
        return None
    return [(None, f"{size}x", None)]  # padding, e_ident's magic bytes: not read


EHDR_FIELDS = ("e_ident.EI_OSABI", "e_type", "e_machine", "e_flags", "e_phoff",
               "e_phentsize", "e_phnum")
PHDR_FIELDS = ("p_type", "p_offset", "p_vaddr", "p_filesz")
DYN_FIELDS = ("d_tag", "d_val")
DT_NAMES = ("DT_NULL", "DT_STRTAB", "DT_STRSZ", "DT_FLAGS_1") + STRING_TAGS


class Layout:
    """The records of one (class, byte order, machine, type, OS ABI), from pyelftools,
    the machine's name and the numbers its enums give the segment types and tags the
    loader reads."""

    def __init__(self, ehdr: Record, e_type: int, e_machine: int, osabi: int,
                 elfclass: int, little_endian: bool, compile: bool = True) -> None:
        names = [ehdr.name(f, n) for f, n in (("e_type", e_type), ("e_machine", e_machine),
                                              ("EI_OSABI", osabi))]
        structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
        structs.create_basic_structs()
        structs.create_advanced_structs(*names)
        self.machine = names[1] if isinstance(names[1], str) else f"EM_{e_machine}"
        self.phdr = Record(structs.Elf_Phdr, compile)
        self.dyn = Record(structs.Elf_Dyn, compile)
        self.pt = tuple(self.phdr.code("p_type", n) for n in ("PT_LOAD", "PT_DYNAMIC",
                                                              "PT_INTERP"))
        self.dt = {n: self.dyn.code("d_tag", n) for n in DT_NAMES}
        self.strings = {self.dt[n]: n for n in STRING_TAGS}


@lru_cache(maxsize=64)
def ehdr_record(elfclass: int, little_endian: bool, compile: bool = True) -> Record:
    """pyelftools' Elf_Ehdr for a class and byte order."""
    structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
    structs.create_basic_structs()
    return Record(structs.Elf_Ehdr, compile)


@lru_cache(maxsize=256)
def layout(elfclass: int, little_endian: bool, e_type: int, e_machine: int, osabi: int,
           compile: bool = True) -> Layout:
    """pyelftools' structs for one kind of ELF file (few per image: cached). `compile`
    False: pyelftools parses every record itself (tests compare the two)."""
    return Layout(ehdr_record(elfclass, little_endian, compile), e_type, e_machine, osabi,
                  elfclass, little_endian, compile)


# -- one file ---------------------------------------------------------------------------

class _Reader:
    """One file, read at checked offsets (all arithmetic on Python ints: no overflow)."""

    def __init__(self, fh: BinaryIO, path: str, compile: bool = True) -> None:
        self.fh, self.path, self.compile = fh, path, compile
        self.head = fh.read(HEAD_BYTES)
        fh.seek(0, 2)
        self.size = fh.tell()
        self.string_bytes = 0

    def bad(self, why: str) -> CorruptElf:
        return CorruptElf(f"{self.path}: corrupt ELF file: {why}")

    def read(self, off: int, n: int, what: str) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise self.bad(f"{what} ({n} bytes at offset {off}) lies outside the file of "
                           f"{self.size} bytes")
        if off + n <= len(self.head):
            return self.head[off:off + n]
        self.fh.seek(off)
        data = self.fh.read(n)
        if len(data) != n:
            raise self.bad(f"{what}: file shorter than its size")
        return data

    def rows(self, rec: Record, data: bytes, names: tuple[str, ...]
             ) -> Iterator[tuple[int, ...]]:
        """`rec.rows`: whatever pyelftools raises is this file's corruption (a compiled
        record reads a whole number of records, checked, and cannot fail)."""
        if rec.compiled:
            return rec.rows(data, names)
        try:
            return iter(list(rec.rows(data, names)))
        except Exception as exc:  # noqa: BLE001 - construct/pyelftools errors: see docstring
            raise self.bad(f"{rec.construct.name}: {exc}") from exc

    def info(self) -> ElfInfo:
        ident = self.head[:16]
        if len(ident) < 16 or not ident.startswith(ELF_MAGIC):
            raise CorruptElf(f"{self.path}: not an ELF file (bad magic)")
        if ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise self.bad(f"class {ident[4]} / data encoding {ident[5]} unknown")
        wide, little = ident[4] == 2, ident[5] == 1
        elfclass = 64 if wide else 32
        try:
            basic = ehdr_record(elfclass, little, self.compile)
            [(osabi, e_type, e_machine, e_flags, phoff, phentsize, phnum)] = self.rows(
                basic, self.read(0, basic.size, "ELF header"), EHDR_FIELDS)
            lay = layout(elfclass, little, e_type, e_machine, osabi, self.compile)
        except CorruptElf:
            raise
        except Exception as exc:  # noqa: BLE001 - pyelftools: see the module docstring
            raise self.bad(f"ELF header: {exc}") from exc
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        interp: str | None = None
        dynamic: tuple[int, int] | None = None
        if phnum:
            if phentsize != lay.phdr.size:
                raise self.bad(f"program header size {phentsize}, expected {lay.phdr.size}")
            if phnum * phentsize > MAX_PHDR_BYTES:
                raise self.bad(f"{phnum} program headers")
            table = self.read(phoff, phnum * phentsize, "program headers")
            pt_load, pt_dynamic, pt_interp = lay.pt
            for p_type, off, vaddr, filesz in self.rows(lay.phdr, table, PHDR_FIELDS):
                if p_type == pt_load:
                    loads.append((vaddr, off, filesz))
                elif p_type == pt_dynamic:
                    dynamic = (off, filesz)  # the loader uses the last one
                elif p_type == pt_interp:
                    if not 2 <= filesz <= PATH_MAX:
                        raise self.bad(f"PT_INTERP of {filesz} bytes (the kernel takes "
                                       f"2..{PATH_MAX})")
                    raw = self.read(off, filesz, "PT_INTERP")
                    interp = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        fields = self._dynamic(lay, dynamic, loads) if dynamic else _Dynamic()
        return ElfInfo(
            path=self.path,
            elfclass=elfclass,
            little_endian=little,
            machine=lay.machine,
            e_flags=e_flags,
            interp=interp,
            needed=tuple(fields.needed),
            # glibc get-dynamic-info.h: "If both RUNPATH and RPATH are given, the latter
            # is ignored"
            rpath=None if fields.runpath is not None else fields.rpath,
            runpath=fields.runpath,
            soname=fields.soname,
            nodeflib=fields.nodeflib,
        )

    def _entries(self, lay: Layout, off: int, filesz: int) -> Iterator[tuple[int, int]]:
        """(d_tag, d_val) of the dynamic entries before DT_NULL, read in chunks, at most
        MAX_DYNAMIC_BYTES of them."""
        size, dt_null = lay.dyn.size, lay.dt["DT_NULL"]
        end = off + min(filesz, max(self.size - off, 0)) // size * size
        at = off
        while at < end:
            if at - off >= MAX_DYNAMIC_BYTES:
                raise self.bad(f"more than {MAX_DYNAMIC_BYTES // size} dynamic entries")
            n = min(256 * size, end - at)
            for tag, val in self.rows(lay.dyn, self.read(at, n, "PT_DYNAMIC"), DYN_FIELDS):
                if tag == dt_null:
                    return
                yield tag, val
            at += n

    def _dynamic(self, lay: Layout, where: tuple[int, int],
                 loads: list[tuple[int, int, int]]) -> _Dynamic:
        out = _Dynamic()
        strtab = strsz = None
        dt, strings = lay.dt, lay.strings
        pending: list[tuple[str, int]] = []  # (tag, string offset), in file order
        for tag, val in self._entries(lay, *where):
            if tag in strings:
                pending.append((strings[tag], val))
            elif tag == dt["DT_STRTAB"]:
                strtab = val
            elif tag == dt["DT_STRSZ"]:
                strsz = val
            elif tag == dt["DT_FLAGS_1"]:
                out.nodeflib = bool(val & DF_1_NODEFLIB)
        if not pending:
            return out
        if strtab is None:
            raise self.bad("DT_NEEDED/DT_SONAME/DT_RPATH without DT_STRTAB")
        table_off, table_end = self._map(strtab, loads)
        if strsz is not None:
            table_end = min(table_end, table_off + strsz)
        for tag, val in pending:
            text = self._string(table_off, table_end, val)
            if tag == "DT_NEEDED":
                out.needed.append(text)
            elif tag == "DT_SONAME":
                out.soname = text  # the loader keeps the last of each single-valued tag
            elif tag == "DT_RPATH":
                out.rpath = text
            else:
                out.runpath = text
        return out

    def _map(self, addr: int, loads: list[tuple[int, int, int]]) -> tuple[int, int]:
        """File range [start, end) backing virtual address `addr` (its PT_LOAD's file part)."""
        for vaddr, off, filesz in loads:
            if vaddr <= addr < vaddr + filesz:
                return off + (addr - vaddr), min(off + filesz, self.size)
        raise self.bad(f"DT_STRTAB address {addr:#x} is in no PT_LOAD segment")

    def _string(self, start: int, end: int, rel: int) -> str:
        at = start + rel
        if rel < 0 or at >= end:
            raise self.bad(f"dynamic string offset {rel} outside the string table")
        pieces: list[bytes] = []
        while True:
            n = min(4096, end - at)
            if n <= 0:
                raise self.bad(f"unterminated dynamic string at offset {rel}")
            piece = self.read(at, n, "dynamic string")
            nul = piece.find(b"\0")
            self.string_bytes += len(piece) if nul < 0 else nul + 1
            if self.string_bytes > MAX_STRING_BYTES:
                raise self.bad(f"more than {MAX_STRING_BYTES} bytes of dynamic strings")
            if nul >= 0:
                pieces.append(piece[:nul])
                return b"".join(pieces).decode("utf-8", "surrogateescape")
            pieces.append(piece)
            at += n


@dataclass
class _Dynamic:
    """The dynamic section's loader-relevant entries, as read."""

    needed: list[str] = field(default_factory=list)
    rpath: str | None = None
    runpath: str | None = None
    soname: str | None = None
    nodeflib: bool = False
