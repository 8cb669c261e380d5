"""Per-architecture facts the loader bakes in at build time.

ld.so is compiled for one ABI and knows its default directories, the value of $LIB and
$PLATFORM, and the glibc-hwcaps subdirectories it may try. We cannot run the image's
loader (no host tools, maybe a foreign architecture), so those facts are tabulated here per
(ELF class, machine), from glibc's sysdeps and Debian's multiarch layout.

$PLATFORM is the kernel's AT_PLATFORM, which depends on the CPU the image will run on;
the value here is the common one for the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.rootfs import RootFS
from tracer.static.elf import ElfInfo

EF_ARM_ABI_FLOAT_HARD = 0x400


@dataclass(frozen=True)
class Abi:
    """Loader constants for one ABI."""

    triplet: str | None  # Debian multiarch triplet
    libdir: str  # upstream glibc's "lib" / "lib64" / "libx32"
    platform: str  # $PLATFORM
    hwcaps: tuple[str, ...]  # glibc-hwcaps subdirectories, best first
    legacy: tuple[str, ...] = ("tls",)  # pre-2.37 legacy hwcap subdirectories, best first


def abi_for(info: ElfInfo) -> Abi:
    """The loader constants for an ELF file's class and machine."""
    m, c, le = info.machine, info.elfclass, info.little_endian
    if m == "EM_X86_64":
        if c == 32:
            return Abi("x86_64-linux-gnux32", "libx32", "x86_64", ())
        return Abi("x86_64-linux-gnu", "lib64", "x86_64",
                   ("x86-64-v4", "x86-64-v3", "x86-64-v2"),
                   ("tls/x86_64/x86_64", "tls/x86_64", "tls", "x86_64/x86_64", "x86_64"))
    if m == "EM_386":
        return Abi("i386-linux-gnu", "lib", "i686", ())
    if m == "EM_AARCH64":
        return Abi("aarch64-linux-gnu" if le else "aarch64_be-linux-gnu", "lib64", "aarch64",
                   ())
    if m == "EM_S390":
        if c == 64:
            return Abi("s390x-linux-gnu", "lib64", "z900", ("z16", "z15", "z14", "z13"))
        return Abi("s390-linux-gnu", "lib", "z900", ())
    if m == "EM_ARM":
        hard = bool(info.e_flags & EF_ARM_ABI_FLOAT_HARD)
        return Abi("arm-linux-gnueabihf" if hard else "arm-linux-gnueabi", "lib", "v7l", ())
    if m == "EM_PPC64":
        if le:
            return Abi("powerpc64le-linux-gnu", "lib64", "power8", ("power10", "power9"))
        return Abi("powerpc64-linux-gnu", "lib64", "power8", ())
    if m == "EM_PPC":
        return Abi("powerpc-linux-gnu", "lib", "ppc", ())
    if m == "EM_RISCV":
        return Abi("riscv64-linux-gnu" if c == 64 else "riscv32-linux-gnu",
                   "lib64/lp64d" if c == 64 else "lib32/ilp32d", "riscv",
                   ("rva20u64",) if c == 64 else ())
    if m == "EM_MIPS":
        if c == 64:
            return Abi("mips64el-linux-gnuabi64" if le else "mips64-linux-gnuabi64", "lib64",
                       "mips", ())
        return Abi("mipsel-linux-gnu" if le else "mips-linux-gnu", "lib", "mips", ())
    if m == "EM_LOONGARCH":
        return Abi("loongarch64-linux-gnu", "lib64", "loongarch", ())
    if m == "EM_SPARCV9":
        return Abi("sparc64-linux-gnu", "lib64", "sparc64", ())
    return Abi(None, "lib64" if c == 64 else "lib", "", ())


def default_dirs(root: RootFS, abi: Abi) -> tuple[str, ...]:
    """The loader's compiled-in system search path for this ABI in this image.

    Debian-style images (the multiarch directory exists) use the Debian loader's list:
    /lib/TRIPLET, /usr/lib/TRIPLET, /lib, /usr/lib. Others use upstream glibc's:
    /LIBDIR, /usr/LIBDIR.
    """
    if abi.triplet and (
        root.is_dir(f"/lib/{abi.triplet}") or root.is_dir(f"/usr/lib/{abi.triplet}")
    ):
        return (f"/lib/{abi.triplet}", f"/usr/lib/{abi.triplet}", "/lib", "/usr/lib")
    if abi.libdir == "lib":
        return ("/lib", "/usr/lib")
    return (f"/{abi.libdir}", f"/usr/{abi.libdir}")


def lib_token(root: RootFS, abi: Abi) -> str:
    """Value of $LIB: Debian's loader uses its multiarch slibdir, upstream the libdir."""
    if abi.triplet and root.is_dir(f"/lib/{abi.triplet}"):
        return f"lib/{abi.triplet}"
    return abi.libdir
