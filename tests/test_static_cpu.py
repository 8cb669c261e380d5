"""What the CPU decides in the loader's search, tabulated per architecture (abi.py).

The image may run on any CPU of its architecture, so the resolver must know every value
each CPU-dependent input can take: $PLATFORM, the glibc-hwcaps subdirectories and the
legacy hwcap subdirectories, in glibc's order. The values are glibc's (2.36 for the legacy
ones, the last release that searches them; the current one for glibc-hwcaps) and Linux's
AT_PLATFORM; the order is checked against this host's own ld.so, whatever CPU it has.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from elftools.elf.enums import ENUM_E_MACHINE
from prereq import missing as prereq_missing

from tracer.budgets import DEFAULT
from tracer.rootfs import RootFS
from tracer.static.abi import VARIANT_NAMES, Abi, abi_for
from tracer.static.elf import ElfInfo
from tracer.static.glibc import GlibcLoader
from tracer.static.search import DirSearch, Loaded, Variants, Work


def info(machine: str, elfclass: int = 64, little_endian: bool = True,
         e_flags: int = 0) -> ElfInfo:
    return ElfInfo("/app/p", elfclass, little_endian, machine, e_flags, None, (), None, None,
                   None, False)


def test_x86_64_every_cpu() -> None:
    """cpu-features.c: an AMD keeps the kernel's x86_64, an Intel with AVX2 & co. is
    haswell, one with AVX512ER/PF xeon_phi; dl-hwcaps-subdirs.c: v4, v3, v2; legacy bits
    x86_64 and avx512_1 (dl-hwcap.h HWCAP_IMPORTANT). x32 is the same port."""
    for elfclass in (64, 32):
        abi = abi_for(info("EM_X86_64", elfclass))
        assert abi.platforms == ("x86_64", "haswell", "xeon_phi")
        assert abi.hwcaps == ("x86-64-v4", "x86-64-v3", "x86-64-v2")
        assert abi.legacy_slots() == (("tls",), abi.platforms, ("avx512_1",), ("x86_64",))
    i386 = abi_for(info("EM_386", 32))
    assert i386.platforms[:2] == ("i686", "i586") and i386.legacy_hwcaps == ("sse2",)


def test_aarch64_and_s390x_every_cpu() -> None:
    """aarch64: AT_PLATFORM is aarch64 (aarch64_be), no glibc-hwcaps subdirectory, legacy
    bit atomics. s390x: AT_PLATFORM is the machine's model (z900 ... z17), glibc-hwcaps
    z17..z13, seven legacy bits."""
    arm = abi_for(info("EM_AARCH64"))
    assert (arm.platforms, arm.hwcaps, arm.legacy_hwcaps) == (("aarch64",), (), ("atomics",))
    assert abi_for(info("EM_AARCH64", little_endian=False)).platforms == ("aarch64_be",)
    s390x = abi_for(info("EM_S390", little_endian=False))
    assert s390x.hwcaps == ("z17", "z16", "z15", "z14", "z13")
    assert {"z900", "z13", "z15", "z16", "z17"} <= set(s390x.platforms)
    assert s390x.legacy_hwcaps == ("vxe2", "vxe", "vx", "dfp", "eimm", "ldisp", "zarch")
    assert "g5" in abi_for(info("EM_S390", 32, False)).platforms  # 31-bit kernels only
    assert abi_for(info("EM_PPC64")).hwcaps == ("power10", "power9")
    assert abi_for(info("EM_RISCV")).platforms == ()  # Linux gives riscv no AT_PLATFORM


def every_abi() -> list[Abi]:
    machines = [m for m in ENUM_E_MACHINE if m.startswith("EM_")] + ["EM_9999"]
    return [abi_for(info(m, c, le, fl)) for m in machines
            for c in (32, 64) for le in (True, False) for fl in (0, 0x400)]


def test_directory_listings_are_watched_for_every_subdirectory_name() -> None:
    """DirSearch probes a variant subdirectory only when the listing holds its first
    name, recorded for VARIANT_NAMES: a name missing there would never be found."""
    for abi in every_abi():
        assert GlibcLoader._variants(abi).names() <= VARIANT_NAMES, abi


def _loader(root: Path) -> tuple[GlibcLoader, Loaded]:
    search = DirSearch(RootFS(root), "/", Work(DEFAULT), watched=VARIANT_NAMES)
    return GlibcLoader(search, {}), Loaded("/app/p", "/app/p", info("EM_X86_64"), None,
                                           set(), ("/app/p",))


def test_platform_expands_to_every_value_or_drops_the_element(tmp_path: Path) -> None:
    loader, obj = _loader(tmp_path)
    x86 = abi_for(info("EM_X86_64"))
    assert loader.expand("/opt/${PLATFORM}/$LIB", obj, x86) == (
        "/opt/x86_64/lib64", "/opt/haswell/lib64", "/opt/xeon_phi/lib64")
    assert loader.expand("$ORIGIN/x", obj, x86) == ("/app/x",)
    # glibc's _dl_dst_substitute drops an element whose $PLATFORM has no value
    assert loader.expand("/opt/$PLATFORM", obj, abi_for(info("EM_RISCV"))) == ()


def host_search_order() -> list[str]:
    """The subdirectories this host's ld.so tries in an LD_LIBRARY_PATH directory, in
    order (LD_DEBUG=libs), duplicates dropped."""
    if not Path("/lib64/ld-linux-x86-64.so.2").exists():
        prereq_missing("needs an x86_64 glibc host")
    done = subprocess.run(["/bin/true"], env={"LD_DEBUG": "libs",
                                              "LD_LIBRARY_PATH": "/nonexist"},
                          capture_output=True, text=True, check=False)
    line = next(x for x in done.stderr.splitlines() if "(LD_LIBRARY_PATH)" in x)
    dirs = re.search(r"search path=(\S+)", line).group(1).split(":")  # type: ignore[union-attr]
    return list(dict.fromkeys(d[len("/nonexist/"):] for d in dirs if d != "/nonexist"))


def one_cpu(abi: Abi, platform: str, bits: tuple[str, ...]) -> Variants:
    """The legacy subdirectories of one CPU: its platform, the HWCAP_IMPORTANT bits it has."""
    return Variants((), replace(abi, platforms=(platform,), legacy_hwcaps=bits).legacy_slots())


def test_legacy_order_of_an_intel_with_avx512_is_glibcs_power_set(tmp_path: Path) -> None:
    """elf/dl-hwcaps.c for temp = [x86_64, avx512_1, haswell, tls]: the power set counting
    down from 1111, tls the most significant bit, the path written from it down."""
    want = ["tls/haswell/avx512_1/x86_64", "tls/haswell/avx512_1", "tls/haswell/x86_64",
            "tls/haswell", "tls/avx512_1/x86_64", "tls/avx512_1", "tls/x86_64", "tls",
            "haswell/avx512_1/x86_64", "haswell/avx512_1", "haswell/x86_64", "haswell",
            "avx512_1/x86_64", "avx512_1", "x86_64"]
    for sub in want:
        os.makedirs(tmp_path / "d" / sub, exist_ok=True)
    loader, _obj = _loader(tmp_path)
    abi = abi_for(info("EM_X86_64"))
    intel = one_cpu(abi, "haswell", ("avx512_1", "x86_64"))
    assert [sub for sub, _ in loader.search.variant_dirs("/d", intel)] == want
    # every x86-64 CPU's subdirectories are among those of all CPUs, in a compatible order
    every = [sub for sub, _ in loader.search.variant_dirs("/d", GlibcLoader._variants(abi))]
    assert set(want) <= set(every)


def test_subdirectory_order_is_the_host_loaders(tmp_path: Path) -> None:
    """Whatever this host's CPU: its ld.so's glibc-hwcaps subdirectories come in the
    resolver's order, and its legacy ones are exactly those of one CPU the resolver knows
    (a platform of abi.platforms, a subset of the HWCAP_IMPORTANT bits)."""
    host = host_search_order()
    for sub in host:
        os.makedirs(tmp_path / "d" / sub, exist_ok=True)
    loader, _obj = _loader(tmp_path)
    abi = abi_for(info("EM_X86_64"))
    hwcaps = [s for s in host if s.startswith("glibc-hwcaps/")]
    assert hwcaps == [f"glibc-hwcaps/{h}" for h in abi.hwcaps if f"glibc-hwcaps/{h}" in hwcaps]
    legacy = [s for s in host if not s.startswith("glibc-hwcaps/")]
    cpus = [[sub for sub, _ in loader.search.variant_dirs("/d", one_cpu(abi, p, bits))]
            for p in abi.platforms for bits in (("avx512_1", "x86_64"), ("x86_64",),
                                                  ("avx512_1",), ())]
    assert legacy in cpus
    every = {sub for sub, _ in loader.search.variant_dirs("/d", GlibcLoader._variants(abi))}
    assert set(host) <= every


@pytest.mark.parametrize("sub, searched", [
    ("tls/x86_64/avx512_1", True),  # platform x86_64, then bits: an Intel without AVX2
    ("x86_64/avx512_1", True),
    ("avx512_1/haswell", False),  # a hwcap bit before the platform
    ("avx512_1/tls", False),
    ("x86_64/tls", False),
    ("haswell/xeon_phi", False),  # two platforms
    ("glibc-hwcaps/z13", False),  # another architecture's
    ("glibc-hwcaps/x86-64-v3", True),
    ("tls/xeon_phi/x86_64", True),
])
def test_subdirectories_no_cpu_searches_are_not_used(tmp_path: Path, sub: str,
                                                     searched: bool) -> None:
    os.makedirs(tmp_path / "d" / sub)
    loader, _obj = _loader(tmp_path)
    variants = GlibcLoader._variants(abi_for(info("EM_X86_64")))
    assert (sub in [s for s, _ in loader.search.variant_dirs("/d", variants)]) is searched
