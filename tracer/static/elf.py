"""What the dynamic loader reads from an ELF file, and nothing more, read with bounds.

The resolver needs, per file: class, byte order and machine (ld.so skips a candidate of
another class or machine and keeps searching), PT_INTERP, and the dynamic section's
DT_NEEDED / DT_RPATH / DT_RUNPATH / DT_SONAME / DT_FLAGS_1. The file is read the way the
loader reads it: the ELF header, the program headers, PT_DYNAMIC, and the dynamic string
table found through DT_STRTAB's address in a PT_LOAD segment.

Every file of an image is hostile input, so this is a small reader of its own rather than
a general ELF library: each offset and count is checked against the file before it is
used, the bytes read per file are capped, and any violation is CorruptElf naming the file
(an ImageFormatError, exit 2 when it ends a run; the resolver records it and goes on).
A general library parses much more than the loader needs, may raise anything or read
without bound on crafted input, and was most of the resolver's run time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from tracer.errors import ImageFormatError
from tracer.rootfs import RootFS, SymlinkLoop

ELF_MAGIC = b"\x7fELF"
DF_1_NODEFLIB = 0x800  # DT_FLAGS_1: do not search the default dirs / ld.so.cache

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
DT_SONAME, DT_RPATH, DT_RUNPATH, DT_FLAGS_1 = 14, 15, 29, 0x6FFFFFFB
PATH_MAX = 4096  # the kernel refuses a PT_INTERP longer than this (binfmt_elf)
MAX_PHDR_BYTES = 65536  # the kernel refuses more program header bytes than this
MAX_STRING_BYTES = 1 << 20  # bytes of dynamic strings read per file; real files need KBs
HEAD_BYTES = 16384  # read once; headers and .dynstr of most files lie within it

# e_machine numbers by the names ld.so's sysdeps (and tracer.static.abi) use
MACHINES = {
    3: "EM_386", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390", 40: "EM_ARM",
    43: "EM_SPARCV9", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV",
    258: "EM_LOONGARCH",
}


class CorruptElf(ImageFormatError):
    """A file starts like an ELF file but cannot be read as one; the message names it."""


@dataclass(frozen=True)
class ElfInfo:
    """The loader-relevant facts of one ELF file (see module docstring)."""

    path: str
    elfclass: int  # 32 or 64
    little_endian: bool
    machine: str  # e_machine as "EM_X86_64", or "EM_<number>" for machines not tabulated
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


class _Reader:
    """One file, read at checked offsets (all arithmetic on Python ints: no overflow)."""

    def __init__(self, fh: BinaryIO, path: str) -> None:
        self.fh, self.path = fh, path
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

    def info(self) -> ElfInfo:
        ident = self.head[:16]
        if len(ident) < 16 or not ident.startswith(ELF_MAGIC):
            raise CorruptElf(f"{self.path}: not an ELF file (bad magic)")
        if ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise self.bad(f"class {ident[4]} / data encoding {ident[5]} unknown")
        wide, bo = ident[4] == 2, "<" if ident[5] == 1 else ">"
        self.wide, self.bo = wide, bo
        if wide:
            _type, e_machine, _v, _entry, phoff, _sh, e_flags, _eh, phentsize, phnum = \
                struct.unpack(bo + "HHIQQQIHHH", self.read(16, 42, "ELF header"))
        else:
            _type, e_machine, _v, _entry, phoff, _sh, e_flags, _eh, phentsize, phnum = \
                struct.unpack(bo + "HHIIIIIHHH", self.read(16, 30, "ELF header"))
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        interp: str | None = None
        dynamic: tuple[int, int] | None = None
        if phnum:
            want = 56 if wide else 32
            if phentsize != want:
                raise self.bad(f"program header size {phentsize}, expected {want}")
            if phnum * want > MAX_PHDR_BYTES:
                raise self.bad(f"{phnum} program headers")
            table = self.read(phoff, phnum * want, "program headers")
            for i in range(phnum):
                p_type, off, vaddr, filesz = self._phdr(table, i * want)
                if p_type == PT_LOAD:
                    loads.append((vaddr, off, filesz))
                elif p_type == PT_DYNAMIC:
                    dynamic = (off, filesz)  # the loader uses the last one
                elif p_type == PT_INTERP:
                    if not 2 <= filesz <= PATH_MAX:
                        raise self.bad(f"PT_INTERP of {filesz} bytes (the kernel takes "
                                       f"2..{PATH_MAX})")
                    raw = self.read(off, filesz, "PT_INTERP")
                    interp = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        fields = self._dynamic(dynamic, loads) if dynamic else _Dynamic()
        return ElfInfo(
            path=self.path,
            elfclass=64 if wide else 32,
            little_endian=bo == "<",
            machine=MACHINES.get(e_machine, f"EM_{e_machine}"),
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

    def _phdr(self, table: bytes, at: int) -> tuple[int, int, int, int]:
        if self.wide:
            p_type, _fl, off, vaddr, _pa, filesz = struct.unpack_from(self.bo + "IIQQQQ", table, at)
        else:
            p_type, off, vaddr, _pa, filesz = struct.unpack_from(self.bo + "IIIII", table, at)
        return p_type, off, vaddr, filesz

    def _dynamic(self, where: tuple[int, int], loads: list[tuple[int, int, int]]) -> _Dynamic:
        off, filesz = where
        entsize = 16 if self.wide else 8
        count = min(filesz, max(self.size - off, 0)) // entsize
        data = self.read(off, count * entsize, "PT_DYNAMIC")
        fmt = self.bo + ("qQ" if self.wide else "iI")
        out = _Dynamic()
        strtab = strsz = None
        pending: list[tuple[int, int]] = []  # (tag, string offset), in file order
        for tag, val in struct.iter_unpack(fmt, data):
            if tag == DT_NULL:
                break
            if tag in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH):
                pending.append((tag, val))
            elif tag == DT_STRTAB:
                strtab = val
            elif tag == DT_STRSZ:
                strsz = val
            elif tag == DT_FLAGS_1:
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
            if tag == DT_NEEDED:
                out.needed.append(text)
            elif tag == DT_SONAME:
                out.soname = text  # the loader keeps the last of each single-valued tag
            elif tag == DT_RPATH:
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
