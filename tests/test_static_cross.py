"""Foreign architectures: real aarch64 and s390x ELF files resolved against image-like roots.

The files come from Debian's cross toolchains (gcc-aarch64-linux-gnu, gcc-s390x-linux-gnu
and libc6-*-cross). The sysroot is laid out like a Debian image of that architecture
(merged /usr, multiarch directory, PT_INTERP link), so the resolver must use the ELF
header's class, byte order and machine, never the host's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prereq import missing as prereq_missing

from tracer.rootfs import RootFS
from tracer.static import Resolver, parse_elf

ARCHES = {
    # name: (compiler, cross libc dir, triplet, PT_INTERP, loader file name, machine)
    "aarch64": ("aarch64-linux-gnu-gcc", "/usr/aarch64-linux-gnu/lib", "aarch64-linux-gnu",
                "/lib/ld-linux-aarch64.so.1", "ld-linux-aarch64.so.1", "EM_AARCH64"),
    "s390x": ("s390x-linux-gnu-gcc", "/usr/s390x-linux-gnu/lib", "s390x-linux-gnu",
              "/lib/ld64.so.1", "ld64.so.1", "EM_S390"),
}


def _compile(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def build_sysroot(tmp: Path, arch: str, host_gcc: str) -> Path:
    """A Debian-like image root for `arch` with a program needing libm and libcross.so."""
    cc, libc_dir, triplet, interp, ldso, _machine = ARCHES[arch]
    if shutil.which(cc) is None or not Path(libc_dir, "libc.so.6").exists():
        msg = f"{cc} / libc6-*-cross not installed; run scripts/setup"
        prereq_missing(msg)
    root = tmp / f"image-{arch}"
    libdir = root / "usr/lib" / triplet
    libdir.mkdir(parents=True)
    for name in (ldso, "libc.so.6", "libm.so.6"):
        shutil.copy2(Path(libc_dir) / name, libdir / name)
    os.symlink("usr/lib", root / "lib")
    os.symlink(f"{triplet}/{ldso}", root / "usr/lib" / ldso)
    src = tmp / f"{arch}.c"
    src.write_text("int cross(void) { return 1; }\n")
    _compile([cc, "-shared", "-fPIC", "-o", str(libdir / "libcross.so"), str(src)])
    # same name, host architecture, earlier in the RPATH: must be skipped
    (root / "opt/first").mkdir(parents=True)
    _compile([host_gcc, "-shared", "-fPIC", "-o", str(root / "opt/first/libcross.so"), str(src)])
    prog = tmp / f"{arch}-main.c"
    prog.write_text("#include <math.h>\nint cross(void);\n"
                    "int main(int c, char **v) { return cross() + (int)sqrt((double)c); }\n")
    (root / "usr/bin").mkdir()
    _compile([cc, "-o", str(root / "usr/bin/prog"), str(prog), f"-L{libdir}", "-lcross", "-lm",
              "-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/first"])
    return root


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_foreign_arch_closure(tmp_path: Path, gcc: str, arch: str) -> None:
    _cc, _libc, triplet, interp, ldso, machine = ARCHES[arch]
    root = build_sysroot(tmp_path, arch, gcc)
    fs = RootFS(root)
    info = parse_elf(fs, "/usr/bin/prog")
    assert (info.machine, info.elfclass, info.interp) == (machine, 64, interp)
    assert info.little_endian is (arch == "aarch64")
    c = Resolver(fs).closure(["/usr/bin/prog"])
    libdir = f"/usr/lib/{triplet}"
    mapped = {p for p, ns in c.files.items() if any(n.kind in ("needed", "interp") for n in ns)}
    assert mapped == {f"{libdir}/{ldso}", f"{libdir}/libc.so.6", f"{libdir}/libm.so.6",
                      f"{libdir}/libcross.so"}
    assert "/opt/first/libcross.so" not in c.files  # x86-64 file of the same name skipped
    assert c.missing == [] and c.errors == []
    assert {"/lib", interp.replace("/lib/", "/usr/lib/")} <= set(c.files)  # links kept
    assert c.files[f"{libdir}/{ldso}"][0].kind == "interp"


def test_host_resolver_never_picks_foreign_libraries(tmp_path: Path, gcc: str) -> None:
    """An x86-64 program in an image holding only aarch64 libs of the same name: missing."""
    root = build_sysroot(tmp_path, "aarch64", gcc)
    src = tmp_path / "host.c"
    src.write_text("int cross(void);\nint main(void) { return cross(); }\n")
    _compile([gcc, "-o", str(root / "usr/bin/hostprog"), str(src),
              f"-L{root}/opt/first", "-lcross"])
    c = Resolver(RootFS(root)).closure(["/usr/bin/hostprog"])
    assert "/usr/lib/aarch64-linux-gnu/libcross.so" not in c.files
    assert {m.name for m in c.missing} >= {"libcross.so", "libc.so.6"}


CPU_VARIANTS = {
    # arch: (subdirectories of the libdir some CPU searches, ones no CPU of it searches,
    #        $PLATFORM values given a directory, whether $PLATFORM has one value only)
    "aarch64": (("tls/aarch64/atomics", "atomics", "tls"),
                ("glibc-hwcaps/x86-64-v3", "x86_64", "atomics/aarch64"), ("aarch64",), True),
    "s390x": (("glibc-hwcaps/z16", "glibc-hwcaps/z13", "z15/vxe2/vx", "tls/z900/zarch", "tls"),
              ("glibc-hwcaps/x86-64-v3", "vx/vxe2", "haswell", "z13/z15"), ("z13", "z16"),
              False),
}


@pytest.mark.parametrize("arch", sorted(CPU_VARIANTS))
def test_foreign_arch_keeps_what_any_of_its_cpus_maps(tmp_path: Path, gcc: str,
                                                      arch: str) -> None:
    """The hwcaps and legacy subdirectories and $PLATFORM values of the ELF's machine,
    never the host's: every CPU of that machine is kept for, nothing of another one."""
    cc, _libc, triplet, *_ = ARCHES[arch]
    searched, never, platforms, single = CPU_VARIANTS[arch]
    root = build_sysroot(tmp_path, arch, gcc)
    libdir = root / "usr/lib" / triplet
    for sub in searched + never:
        (libdir / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(libdir / "libcross.so", libdir / sub / "libcross.so")
    src = tmp_path / "plat.c"
    src.write_text("int plat(void) { return 2; }\n")
    for platform in platforms:
        (root / "opt/p" / platform).mkdir(parents=True)
        _compile([cc, "-shared", "-fPIC", "-o", str(root / "opt/p" / platform / "libplat.so"),
                  str(src)])
    src.write_text("int plat(void);\nint main(void) { return plat(); }\n")
    _compile([cc, "-o", str(root / "usr/bin/plat"), str(src), f"-L{root}/opt/p/{platforms[0]}",
              "-lplat", "-Wl,-rpath,/opt/p/$PLATFORM"])
    c = Resolver(RootFS(root)).closure(["/usr/bin/prog", "/usr/bin/plat"])
    lib = f"/usr/lib/{triplet}"
    kept = {f"{lib}/{sub}/libcross.so" for sub in searched} | {f"{lib}/libcross.so"}
    assert kept <= set(c.files) and all(c.cpu_only(p) for p in kept)
    assert not {f"{lib}/{sub}/libcross.so" for sub in never} & set(c.files)
    plat = {f"/opt/p/{p}/libplat.so" for p in platforms}
    assert plat <= set(c.files)
    assert all(c.cpu_only(p) is not single for p in plat)  # one value: every CPU's
    assert c.missing == [] and c.errors == []
