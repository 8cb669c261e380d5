"""What the dynamic loader reads from an ELF file, and nothing more.

The resolver needs, per file: class, byte order and machine (ld.so skips a candidate of
another class or machine and keeps searching), PT_INTERP, and the dynamic section's
DT_NEEDED / DT_RPATH / DT_RUNPATH / DT_SONAME / DT_FLAGS_1. Parsing goes through
pyelftools on a stream opened by RootFS, so a file is only ever reached through the image's
own symlinks. Any parse failure becomes CorruptElf naming the file, because a damaged image
must produce a clear report, not a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from tracer.rootfs import RootFS

ELF_MAGIC = b"\x7fELF"
DF_1_NODEFLIB = 0x800  # DT_FLAGS_1: do not search the default dirs / ld.so.cache


class CorruptElf(Exception):
    """A file starts like an ELF file but cannot be parsed."""


@dataclass(frozen=True)
class ElfInfo:
    """The loader-relevant facts of one ELF file (see module docstring)."""

    path: str
    elfclass: int  # 32 or 64
    little_endian: bool
    machine: str  # pyelftools' e_machine name, e.g. "EM_X86_64"
    e_type: str  # "ET_EXEC", "ET_DYN", ...
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


def read_magic(root: RootFS, path: str) -> bytes:
    """First bytes of a file: enough to tell ELF from #! from anything else."""
    with root.open(path) as fh:
        return fh.read(256)


def parse_elf(root: RootFS, path: str) -> ElfInfo:
    """Parse the loader-relevant parts of the ELF file at in-image `path`."""
    try:
        with root.open(path) as fh:
            return _parse(fh, path)
    except CorruptElf:
        raise
    except OSError as exc:
        raise CorruptElf(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pyelftools raises many types on bad input
        raise CorruptElf(f"{path}: corrupt ELF file: {type(exc).__name__}: {exc}") from exc


def _parse(fh, path: str) -> ElfInfo:
    head = fh.read(16)
    if len(head) < 16 or not head.startswith(ELF_MAGIC):
        raise CorruptElf(f"{path}: not an ELF file (bad magic)")
    fh.seek(0)
    ef = ELFFile(fh)
    interp: str | None = None
    needed: list[str] = []
    rpath = runpath = soname = None
    nodeflib = False
    for seg in ef.iter_segments():
        ptype = seg["p_type"]
        if ptype == "PT_INTERP":
            interp = seg.get_interp_name()
        elif ptype == "PT_DYNAMIC":
            for tag in seg.iter_tags():
                t = tag.entry.d_tag
                if t == "DT_NEEDED":
                    needed.append(tag.needed)
                elif t == "DT_RPATH":
                    rpath = tag.rpath
                elif t == "DT_RUNPATH":
                    runpath = tag.runpath
                elif t == "DT_SONAME":
                    soname = tag.soname
                elif t == "DT_FLAGS_1":
                    nodeflib = bool(tag.entry.d_val & DF_1_NODEFLIB)
                elif t == "DT_NULL":
                    break
    if runpath is not None:
        # glibc get-dynamic-info.h: "If both RUNPATH and RPATH are given, the latter is ignored"
        rpath = None
    return ElfInfo(
        path=path,
        elfclass=ef.elfclass,
        little_endian=ef.little_endian,
        machine=str(ef["e_machine"]),
        e_type=str(ef["e_type"]),
        e_flags=int(ef["e_flags"]),
        interp=interp,
        needed=tuple(needed),
        rpath=rpath,
        runpath=runpath,
        soname=soname,
        nodeflib=nodeflib,
    )
