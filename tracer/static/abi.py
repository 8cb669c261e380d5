"""Per-architecture facts the loader bakes in at build time, and what the CPU decides.

ld.so is compiled for one ABI and knows its default directories and the value of $LIB.
We cannot run the image's loader (no host tools, maybe a foreign architecture), so those
facts are tabulated here per (ELF class, machine), from glibc's sysdeps and Debian's
multiarch layout.

Three more inputs of the search depend on the CPU the image will run on, which is not the
CPU tracer runs on, and may be any CPU of the architecture:

- $PLATFORM is glibc's dl_platform: the kernel's AT_PLATFORM, which x86 glibc replaces
  (sysdeps/x86/cpu-features.c: "haswell" on an Intel CPU with AVX2, FMA, BMI1/2, LZCNT,
  MOVBE and POPCNT, "xeon_phi" with AVX512ER/PF; "i686"/"i586" for i386). Linux sets
  AT_PLATFORM per machine: x86_64, aarch64 (aarch64_be), s390's model names (z900 ...
  z17, g5 for 31-bit kernels), powerpc's cputable names (power8 ...), arm's v<arch><l|b>;
  riscv and sparc64 give none, and then an element with $PLATFORM is dropped.
- glibc-hwcaps subdirectories (glibc 2.33 and later, elf/dl-hwcaps-subdirs.c per
  sysdeps): the CPU picks which of them are searched.
- legacy hwcap subdirectories (glibc 2.36 and earlier; 2.37 removed them): every subset,
  in order, of "tls", the platform and the HWCAP_IMPORTANT bits the CPU has
  (elf/dl-hwcaps.c's power set: on an AMD x86-64, tls/x86_64/x86_64, tls/x86_64, tls,
  x86_64/x86_64, x86_64; on an Intel with AVX-512 also haswell/avx512_1/x86_64 ...).

So Abi lists every value any CPU may give, and the resolver keeps every candidate one of
them would load (glibc.py), never what this host's CPU would pick.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.rootfs import RootFS
from tracer.static.elf import ElfInfo

EF_ARM_ABI_FLOAT_HARD = 0x400

X86_64_PLATFORMS = ("x86_64", "haswell", "xeon_phi")
X86_64_HWCAPS = ("x86-64-v4", "x86-64-v3", "x86-64-v2")
X86_64_LEGACY = ("avx512_1", "x86_64")
S390_PLATFORMS = ("z900", "z990", "z9-109", "z10", "z196", "zEC12", "z13", "z14", "z15",
                  "z16", "z17")
S390_LEGACY = ("vxe2", "vxe", "vx", "dfp", "eimm", "ldisp", "zarch")
POWER64_PLATFORMS = ("power4", "ppc970", "power5", "power5+", "power6", "power6x", "power7",
                     "power7+", "power8", "power9", "power10", "power11", "ppc-cell-be",
                     "ppca2", "pa6t", "ppce5500", "ppce6500")
POWER32_PLATFORMS = ("ppc405", "ppc440", "ppc464", "ppc476", "ppc601", "ppc603", "ppc604",
                     "ppc750", "ppc7400", "ppc7450", "ppc8540", "ppc8548", "ppce500mc",
                     "ppce5500", "ppce6500", "ppc970", "power4", "power5", "power5+",
                     "power6", "power6x", "power7", "power7+", "power8", "power9",
                     "power10", "power11", "ppc-cell-be")
LEGACY_TLS = "tls"


@dataclass(frozen=True, eq=False)
class Abi:
    """Loader constants for one ABI, and every CPU-dependent value (module docstring).

    Compared and hashed by identity: the resolver makes one per kind of ELF file and uses
    it in the keys of every list it memoizes, looked up at each name."""

    triplet: str | None  # Debian multiarch triplet
    libdir: str  # upstream glibc's "lib" / "lib64" / "libx32"
    # every $PLATFORM a CPU of this ABI may give, the kernel's generic value first;
    # () when the kernel gives none
    platforms: tuple[str, ...]
    hwcaps: tuple[str, ...] = ()  # glibc-hwcaps subdirectories, best first
    # names of the HWCAP_IMPORTANT bits, highest bit first (their order in a legacy path)
    legacy_hwcaps: tuple[str, ...] = ()

    def legacy_slots(self) -> tuple[tuple[str, ...], ...]:
        """The components of a legacy hwcap subdirectory in path order, each optional and
        at most one of each slot: tls, a platform, then each HWCAP_IMPORTANT name."""
        slots = [(LEGACY_TLS,)]
        if self.platforms:
            slots.append(self.platforms)
        slots += [(name,) for name in self.legacy_hwcaps]
        return tuple(slots)


def abi_for(info: ElfInfo) -> Abi:
    """The loader constants for an ELF file's class and machine."""
    m, c, le = info.machine, info.elfclass, info.little_endian
    if m == "EM_X86_64":  # x32 (class 32) is glibc's x86_64 port too: same sysdeps
        return Abi("x86_64-linux-gnux32" if c == 32 else "x86_64-linux-gnu",
                   "libx32" if c == 32 else "lib64", X86_64_PLATFORMS, X86_64_HWCAPS,
                   X86_64_LEGACY)
    if m == "EM_386":
        return Abi("i386-linux-gnu", "lib", ("i686", "i586", "i486", "i386"), (), ("sse2",))
    if m == "EM_AARCH64":
        return Abi("aarch64-linux-gnu" if le else "aarch64_be-linux-gnu", "lib64",
                   ("aarch64" if le else "aarch64_be",), (), ("atomics",))
    if m == "EM_S390":
        if c == 64:
            return Abi("s390x-linux-gnu", "lib64", S390_PLATFORMS,
                       ("z17", "z16", "z15", "z14", "z13"), S390_LEGACY)
        return Abi("s390-linux-gnu", "lib", ("g5",) + S390_PLATFORMS, (), S390_LEGACY)
    if m == "EM_ARM":
        hard = bool(info.e_flags & EF_ARM_ABI_FLOAT_HARD)
        end = "l" if le else "b"
        return Abi("arm-linux-gnueabihf" if hard else "arm-linux-gnueabi", "lib",
                   tuple(f"v{n}{end}" for n in (7, 8, 6, 5, 4)), (), ("neon", "vfp"))
    if m == "EM_PPC64":
        if le:
            return Abi("powerpc64le-linux-gnu", "lib64", ("power8", "power9", "power10",
                                                          "power11"),
                       ("power10", "power9"), ("altivec", "dfp"))
        return Abi("powerpc64-linux-gnu", "lib64", POWER64_PLATFORMS, (), ("altivec", "dfp"))
    if m == "EM_PPC":
        return Abi("powerpc-linux-gnu", "lib", POWER32_PLATFORMS, (), ("altivec", "dfp"))
    if m == "EM_RISCV":
        return Abi("riscv64-linux-gnu" if c == 64 else "riscv32-linux-gnu",
                   "lib64/lp64d" if c == 64 else "lib32/ilp32d", ())
    if m == "EM_MIPS":  # AT_PLATFORM only on a few CPUs (octeon, loongson): not tabulated
        if c == 64:
            return Abi("mips64el-linux-gnuabi64" if le else "mips64-linux-gnuabi64", "lib64",
                       ())
        return Abi("mipsel-linux-gnu" if le else "mips-linux-gnu", "lib", ())
    if m == "EM_LOONGARCH":
        return Abi("loongarch64-linux-gnu", "lib64", ("loongarch",))
    if m == "EM_SPARCV9":
        return Abi("sparc64-linux-gnu", "lib64", ())
    return Abi(None, "lib64" if c == 64 else "lib", ())


# Every name a glibc-hwcaps or legacy hwcap subdirectory path may begin with, for any ABI
# above (what DirSearch watches for in directory listings).
VARIANT_NAMES = frozenset(
    {"glibc-hwcaps", LEGACY_TLS, "i686", "i586", "i486", "i386", "sse2", "aarch64",
     "aarch64_be", "atomics", "g5", "neon", "vfp", "altivec", "dfp", "loongarch",
     *X86_64_PLATFORMS, *X86_64_LEGACY, *S390_PLATFORMS, *S390_LEGACY, *POWER64_PLATFORMS,
     *POWER32_PLATFORMS, *(f"v{n}{e}" for n in (4, 5, 6, 7, 8) for e in "lb")})


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
