"""The ELF reader reads what pyelftools reads: compiled records against pyelftools' own parse.

tracer.static.elf takes the ELF format from pyelftools (ELFStructs, enums) but reads the
records through struct.Struct unpackers compiled from pyelftools' own field definitions,
for speed. Here, on real files (gcc's, 32- and 64-bit, the aarch64 and s390x cross
toolchains' libraries, big-endian included, and every ELF file of the bookworm root) and
on garbled ones: each compiled record gives pyelftools' values, the reader gives the same
facts with pyelftools parsing every record itself, and those facts are what pyelftools'
ELFFile (its PT_INTERP and PT_DYNAMIC segments) says.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from prereq import missing as prereq_missing

from tracer.static.elf import CorruptElf, ElfInfo, Record, _Reader, ehdr_record, layout

BOOKWORM = Path("/var/cache/tracer/rootfs-bookworm")
CROSS = {"aarch64": "/usr/aarch64-linux-gnu/lib", "s390x": "/usr/s390x-linux-gnu/lib"}


def read(path: Path, compile: bool = True) -> ElfInfo | str:
    """The reader's facts for `path`, or the CorruptElf message."""
    with open(path, "rb") as fh:
        try:
            return _Reader(fh, "/f", compile).info()
        except CorruptElf as exc:
            return str(exc)


def elftools_facts(path: Path) -> tuple:
    """What pyelftools' ELFFile says about the same facts."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        interp = needed = rpath = runpath = soname = None
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_INTERP":
                interp = seg.get_interp_name()
            elif seg["p_type"] == "PT_DYNAMIC":
                needed, rpath, runpath, soname = [], None, None, None
                for tag in seg.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_RPATH":
                        rpath = tag.rpath
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        runpath = tag.runpath
                    elif tag.entry.d_tag == "DT_SONAME":
                        soname = tag.soname
        machine = elf["e_machine"]
        return (elf.elfclass, elf.little_endian,
                machine if isinstance(machine, str) else f"EM_{machine}", elf["e_flags"],
                interp, tuple(needed or ()), None if runpath is not None else rpath, runpath,
                soname)


def ours(info: ElfInfo) -> tuple:
    return (info.elfclass, info.little_endian, info.machine, info.e_flags, info.interp,
            info.needed, info.rpath, info.runpath, info.soname)


@pytest.fixture(scope="module")
def elves(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> list[Path]:
    """Real ELF files of several classes, byte orders and machines."""
    tmp = tmp_path_factory.mktemp("elves")
    src = tmp / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    out = []
    for name, flags in (("p64", ["-Wl,-rpath,/opt/x:$ORIGIN/lib"]),
                        ("p64r", ["-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/r"]),
                        ("s64.so", ["-shared", "-fPIC", "-Wl,-soname,libs.so.1"]),
                        ("p32", ["-m32", "-nostdlib", "-Wl,-e,main"])):
        subprocess.run([gcc, "-o", str(tmp / name), str(src), *flags], check=True)
        out.append(tmp / name)
    for arch, libdir in CROSS.items():
        if not Path(libdir, "libc.so.6").exists():
            prereq_missing(f"libc6-{arch}-cross not installed; run scripts/setup")
        for lib in ("libc.so.6", "libm.so.6"):
            shutil.copy2(Path(libdir) / lib, tmp / f"{arch}-{lib}")
            out.append(tmp / f"{arch}-{lib}")
    for host in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
        out.append(Path(host).resolve())
    return out


def test_compiled_records_read_what_pyelftools_parses(elves: list[Path]) -> None:
    for path in elves:
        data = path.read_bytes()
        wide, little = data[4] == 2, data[5] == 1
        ehdr = ehdr_record(64 if wide else 32, little)
        assert ehdr.compiled
        want = {k: v for k, v in ehdr.construct.parse(data[:ehdr.size]).items()}
        got = ehdr.read(data)
        assert got["e_ident"] == {k: v for k, v in want["e_ident"].items()
                                  if k in got["e_ident"]}, path
        assert {k: v for k, v in want.items() if k != "e_ident"} == {
            k: v for k, v in got.items() if k != "e_ident"}, path
        [(osabi, e_type, e_machine)] = ehdr.rows(data[:ehdr.size],
                                                 ("e_ident.EI_OSABI", "e_type", "e_machine"))
        lay = layout(64 if wide else 32, little, e_type, e_machine, osabi)
        assert lay.phdr.compiled and lay.dyn.compiled
        for rec, count_at in ((lay.phdr, "e_phnum"), (lay.dyn, None)):
            if count_at:
                start, n = got["e_phoff"], got["e_phnum"]
            else:
                dyn = [ph for ph in (lay.phdr.read(data, got["e_phoff"] + i * lay.phdr.size)
                                     for i in range(got["e_phnum"]))
                       if ph["p_type"] == "PT_DYNAMIC"]
                if not dyn:
                    continue
                start, n = dyn[0]["p_offset"], dyn[0]["p_filesz"] // rec.size
            for i in range(n):
                at = start + i * rec.size
                want = dict(rec.construct.parse(data[at:at + rec.size]))
                assert rec.read(data, at) == {k: v for k, v in want.items() if k != "d_ptr"}
        assert lay.dt["DT_NEEDED"] == 1 and lay.pt == (1, 2, 3)


def test_the_reader_agrees_with_pyelftools_on_real_files(elves: list[Path]) -> None:
    for path in elves:
        info = read(path)
        assert isinstance(info, ElfInfo), info
        assert read(path, compile=False) == info  # pyelftools parsing every record
        assert ours(info) == elftools_facts(path), path
    machines = {read(p).machine for p in elves}  # type: ignore[union-attr]
    assert machines == {"EM_X86_64", "EM_386", "EM_AARCH64", "EM_S390"}


def test_every_elf_of_a_debian_root_reads_as_pyelftools_reads_it() -> None:
    if not (BOOKWORM / "usr/bin").is_dir():
        prereq_missing(f"{BOOKWORM} missing; run scripts/setup")
    files = []
    for d, _dirs, names in os.walk(BOOKWORM):
        for n in names:
            p = Path(d, n)
            if not p.is_symlink() and p.is_file() and p.open("rb").read(4) == b"\x7fELF":
                files.append(p)
    assert len(files) > 500
    diffs = [p for p in files
             if not isinstance(info := read(p), ElfInfo) or ours(info) != elftools_facts(p)]
    assert diffs == []


def test_garbled_files_give_the_same_answer_compiled_or_parsed_by_pyelftools(
        elves: list[Path]) -> None:
    """Compiled records and pyelftools' own parse: the same facts, or both corrupt."""
    rng = random.Random(7)
    for path in elves[:3] + elves[-2:]:
        real = path.read_bytes()[:20000]
        for _ in range(150):
            data = bytearray(real)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(0, 400)] = rng.randrange(256)
            f = path.parent / "garbled"
            f.write_bytes(bytes(data))
            fast, slow = read(f), read(f, compile=False)
            if isinstance(fast, str):
                assert isinstance(slow, str) and slow.startswith("/f: "), (fast, slow)
            else:
                assert fast == slow


def test_a_struct_that_does_not_compile_is_parsed_by_pyelftools() -> None:
    """A layout outside what the compiler knows (here a bit field) is left to
    pyelftools, with the same interface."""
    from elftools.construct import BitField, BitStruct, Struct, ULInt16

    rec = Record(Struct("odd", ULInt16("a"), BitStruct("b", BitField("x", 8))))
    assert not rec.compiled
    assert list(rec.rows(b"\x05\x00\x07", ("a",))) == [(5,)]
    assert rec.read(b"\x05\x00\x07") == {"a": 5, "b": {"x": 7}}


def test_names_come_from_the_loaders_string_table_not_the_section_headers(
        elves: list[Path], tmp_path: Path) -> None:
    """ld.so finds DT_NEEDED's strings through DT_STRTAB in a PT_LOAD; pyelftools'
    DynamicSegment through the .dynamic section's sh_link, which ld.so never reads. A file
    whose .dynstr header points elsewhere makes ELFFile name other libraries: the reader
    must still give the loader's."""
    data = bytearray(elves[0].read_bytes())
    elf = ELFFile(io.BytesIO(bytes(data)))
    dynstr = next(i for i in range(elf.num_sections())
                  if elf.get_section(i).name == ".dynstr")
    other = elf.get_section(elf["e_shstrndx"])["sh_offset"]
    header = elf["e_shoff"] + dynstr * elf["e_shentsize"]
    data[header + 24:header + 32] = other.to_bytes(8, "little")  # sh_offset
    f = tmp_path / "p"
    f.write_bytes(bytes(data))
    assert elftools_facts(f)[5] != ("libc.so.6",)  # what pyelftools' ELFFile says
    info = read(f)
    assert isinstance(info, ElfInfo) and info.needed == ("libc.so.6",)
