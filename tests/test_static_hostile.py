"""Hostile input to the static resolver: bounded work and memory, and no crash, ever.

Every input here is built by the test: a real program linked by gcc with 3,000 RPATH
entries and 3,000 DT_NEEDED names; ELF files written byte by byte (a small writer below,
checked against readelf) or patched from a gcc-built one; a garbled /etc/ld.so.cache.
Cost is measured as operations on the image (lookups the resolver asks RootFS for) and
the resolver's own work units, never wall time; memory as tracemalloc's peak.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from image_builders import M, docker_archive, layer
from prereq import missing as prereq_missing

from tracer.budgets import BudgetExceeded, Budgets
from tracer.errors import ImageFormatError
from tracer.rootfs import RootFS
from tracer.static import CorruptElf, ElfInfo, Resolver, parse_elf

N = 3000  # RPATH entries and DT_NEEDED names of the hostile program
HOST_LIBDIR = Path("/lib/x86_64-linux-gnu")
LIBDIR = "usr/lib/x86_64-linux-gnu"


class CountingRootFS(RootFS):
    """A RootFS that counts what is asked of the image: path lookups and directory reads."""

    ops = 0

    def resolve(self, path, *, follow_last=True, cwd="/"):  # type: ignore[no-untyped-def]
        self.ops += 1
        return super().resolve(path, follow_last=follow_last, cwd=cwd)

    def _raw_lstat(self, path):  # type: ignore[no-untyped-def]
        self.ops += 1
        return super()._raw_lstat(path)

    def _raw_listdir(self, path):  # type: ignore[no-untyped-def]
        self.ops += 1
        return super()._raw_listdir(path)


def base_root(root: Path) -> None:
    """A merged-/usr root with the host's glibc loader and libc (x86_64 Debian layout)."""
    if not (HOST_LIBDIR / "libc.so.6").exists():
        prereq_missing("needs an x86_64 glibc host")
    (root / LIBDIR).mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2(HOST_LIBDIR / name, root / LIBDIR / name)
    (root / "usr/lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               root / "usr/lib64/ld-linux-x86-64.so.2")
    for top in ("lib", "lib64", "bin"):
        os.symlink(f"usr/{top}", root / top)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Path:
    """/app/hostile: N RPATH directories (all existing, empty but the last) and N
    DT_NEEDED names, every one of them found only in the last directory."""
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "root"
    base_root(root)
    (root / "opt/stub").mkdir(parents=True)
    src = tmp / "stub.c"
    src.write_text("int stub(void) { return 0; }\n")
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(root / "opt/stub/libstub.so"), str(src)],
                   check=True)
    dirs = [f"/rpath/d{i:04d}" for i in range(N)]
    for d in dirs:
        (root / d.lstrip("/")).mkdir(parents=True)
    last = root / dirs[-1].lstrip("/")
    names = [f"libn{i:04d}.so" for i in range(N)]
    for name in names:  # relative links: valid on the host (for ld) and inside the image
        os.symlink("../../opt/stub/libstub.so", last / name)
    main = tmp / "main.c"
    main.write_text("int main(void) { return 0; }\n")
    (root / "app").mkdir()
    done = subprocess.run(
        [gcc, "-o", str(root / "app/hostile"), str(main), "-Wl,--no-as-needed",
         "-Wl,--disable-new-dtags", "-Wl,-rpath," + ":".join(dirs), f"-L{last}",
         *[f"-l:{n}" for n in names]],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return root


def test_the_hostile_program_is_what_it_claims(hostile: Path) -> None:
    info = parse_elf(RootFS(hostile), "/app/hostile")
    assert len(info.needed) >= N and info.rpath is not None
    assert len(info.rpath.split(":")) == N
    assert (hostile / "app/hostile").stat().st_size < 200_000


def test_thousands_of_rpath_dirs_and_names_cost_linear_work_and_memory(hostile: Path) -> None:
    """Asked naively, every name probes every directory: N*N = 9,000,000 lookups."""
    fs = CountingRootFS(hostile)
    resolver = Resolver(fs)
    tracemalloc.start()
    try:
        c = resolver.closure(["/app/hostile"])
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert c.missing == [] and c.errors == []
    stub = c.files["/opt/stub/libstub.so"]
    assert {n.chain[-1] for n in stub if n.kind == "needed"} == {
        f"libn{i:04d}.so" for i in range(N)}
    assert fs.ops < 40 * N  # linear in dirs + names (naive: N * N = 9,000,000)
    assert resolver.work.used < 20 * N
    assert peak < 64 << 20


def test_resolver_work_budget_refuses_naming_the_file(hostile: Path) -> None:
    resolver = Resolver(RootFS(hostile), budgets=Budgets(resolver_work=5_000))
    with pytest.raises(BudgetExceeded) as err:
        resolver.closure(["/usr/bin/true-is-not-here", "/app/hostile"])
    msg = str(err.value)
    assert "static ELF resolution of /app/hostile" in msg
    assert "resolver_work budget of 5000" in msg and "--budget resolver_work=" in msg
    assert err.value.exit_code == 2
    # the same input within the default budget is fine: the budget, not the input, refused
    assert Resolver(RootFS(hostile)).closure(["/app/hostile"]).missing == []


def test_budget_bounds_the_work_of_one_resolver_over_all_its_closures(hostile: Path) -> None:
    once = Resolver(RootFS(hostile))
    once.closure(["/app/hostile"])
    resolver = Resolver(RootFS(hostile), budgets=Budgets(resolver_work=once.work.used + N // 2))
    resolver.closure(["/app/hostile"])
    with pytest.raises(BudgetExceeded):
        resolver.closure(["/app/hostile"])  # memoized, so cheaper: never free (N names)


VARIANT_LINKS = ("tls", "x86_64", "haswell", "xeon_phi", "avx512_1", "glibc-hwcaps",
                 "x86-64-v2", "x86-64-v3", "x86-64-v4")


def test_every_cpu_variant_in_every_rpath_directory_costs_linear_work(
        tmp_path: Path, gcc: str) -> None:
    """500 RPATH directories, each with every name a CPU variant may take linked to `.`:
    every glibc-hwcaps and legacy subdirectory of any x86-64 CPU (35 per directory)
    exists everywhere, and all are the directory itself."""
    root = tmp_path / "root"
    base_root(root)
    n = 500
    dirs = [f"/rp/d{i:03d}" for i in range(n)]
    for d in dirs:
        (root / d.lstrip("/")).mkdir(parents=True)
        for name in VARIANT_LINKS:
            os.symlink(".", root / d.lstrip("/") / name)
    src = tmp_path / "x.c"
    src.write_text("int x(void) { return 0; }\n")
    last = root / dirs[-1].lstrip("/")
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(last / "libx.so"), str(src)], check=True)
    src.write_text("int x(void);\nint main(void) { return x(); }\n")
    (root / "app").mkdir()
    subprocess.run([gcc, "-o", str(root / "app/p"), str(src), f"-L{last}", "-lx",
                    "-Wl,--disable-new-dtags", "-Wl,-rpath," + ":".join(dirs)], check=True)
    fs = CountingRootFS(root)
    resolver = Resolver(fs)
    c = resolver.closure(["/app/p"])
    assert c.missing == [] and c.errors == []
    assert f"{dirs[-1]}/libx.so" in c.files
    assert resolver.work.used < 150 * n and fs.ops < 150 * n  # ~100 subpaths per directory


# -- ELF files written byte by byte ---------------------------------------------------------

def write_elf(*, needed: list[int] | None = None, strtab: bytes = b"\0libx.so\0",
              interp: bytes | None = None, extra: list[tuple[int, int]] | None = None,
              strtab_addr: int | None = None, strsz: int | None = None,
              pad: int = 0) -> bytes:
    """A minimal little-endian ELF64 x86-64 ET_DYN: PT_LOAD over the whole file, PT_DYNAMIC,
    optional PT_INTERP; DT_NEEDED entries at the given string offsets."""
    phnum = 3 if interp is not None else 2
    ph_at, dyn_at = 64, 64 + 56 * phnum
    dyn = [(1, off) for off in (needed if needed is not None else [1])] + list(extra or [])
    dyn_size = 16 * (len(dyn) + 3)
    str_at = dyn_at + dyn_size
    interp_at = str_at + len(strtab) + pad
    end = interp_at + (len(interp) if interp is not None else 0)
    entries = dyn + [(5, strtab_addr if strtab_addr is not None else str_at),
                     (10, strsz if strsz is not None else len(strtab)), (0, 0)]
    out = bytearray(end)
    out[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", out, 16, 3, 62, 1, 0, ph_at, 0, 0, 64, 56, phnum,
                     64, 0, 0)
    phdrs = [(1, 5, 0, 0, 0, end, end, 0x1000), (2, 6, dyn_at, dyn_at, dyn_at, dyn_size,
                                                  dyn_size, 8)]
    if interp is not None:
        phdrs.append((3, 4, interp_at, interp_at, interp_at, len(interp), len(interp), 1))
    for i, ph in enumerate(phdrs):
        struct.pack_into("<IIQQQQQQ", out, ph_at + 56 * i, *ph)
    for i, (tag, val) in enumerate(entries):
        struct.pack_into("<qQ", out, dyn_at + 16 * i, tag, val)
    out[str_at:str_at + len(strtab)] = strtab
    out[str_at + len(strtab):interp_at] = b"A" * pad
    if interp is not None:
        out[interp_at:] = interp
    return bytes(out)


def parse_bytes(tmp: Path, data: bytes, name: str = "f.so") -> ElfInfo:
    (tmp / name).write_bytes(data)
    return parse_elf(RootFS(tmp), f"/{name}")


def test_the_elf_writer_writes_what_readelf_reads(tmp_path: Path) -> None:
    if shutil.which("readelf") is None:
        prereq_missing("binutils (readelf) not installed; run scripts/setup")
    data = write_elf(needed=[1, 9], strtab=b"\0liba.so\0libb.so\0", interp=b"/lib/ld.so\0",
                     extra=[(15, 1)])
    info = parse_bytes(tmp_path, data)
    out = subprocess.run(["readelf", "-dl", str(tmp_path / "f.so")], capture_output=True,
                         text=True, check=True).stdout
    assert "Shared library: [liba.so]" in out and "Shared library: [libb.so]" in out
    assert "Library rpath: [liba.so]" in out and "/lib/ld.so" in out
    assert (info.needed, info.rpath, info.interp) == (("liba.so", "libb.so"), "liba.so",
                                                      "/lib/ld.so")


@pytest.mark.parametrize("case, fragment", [
    (dict(needed=[500]), "string offset 500 outside"),
    (dict(needed=[1], strtab=b"\0libx.so"), "unterminated dynamic string"),
    (dict(needed=[1], strsz=4), "unterminated dynamic string"),
    (dict(needed=[1], strtab_addr=1 << 40), "in no PT_LOAD segment"),
    (dict(interp=b"/" * 5000), "PT_INTERP of 5000 bytes"),
    (dict(interp=b"/"), "PT_INTERP of 1 bytes"),
])
def test_crafted_dynamic_sections_are_corrupt_naming_the_file(
        tmp_path: Path, case: dict, fragment: str) -> None:
    with pytest.raises(CorruptElf, match=fragment) as err:
        parse_bytes(tmp_path, write_elf(**case))
    assert str(err.value).startswith("/f.so: ")
    assert isinstance(err.value, ImageFormatError) and err.value.exit_code == 2


def test_string_bounds_are_exact(tmp_path: Path) -> None:
    """A string may end on the table's last byte; one byte less and it is unterminated."""
    table = b"\0libx.so\0"
    assert parse_bytes(tmp_path, write_elf(needed=[1], strtab=table)).needed == ("libx.so",)
    assert parse_bytes(tmp_path, write_elf(needed=[8], strtab=table)).needed == ("",)
    with pytest.raises(CorruptElf, match="outside the string table"):
        parse_bytes(tmp_path, write_elf(needed=[9], strtab=table))
    with pytest.raises(CorruptElf, match="unterminated"):
        parse_bytes(tmp_path, write_elf(needed=[1], strtab=table, strsz=8))


def test_strtab_address_bounds_are_exact(tmp_path: Path) -> None:
    """DT_STRTAB must lie in a PT_LOAD's file part: its last byte is in, the next is not."""
    end = len(write_elf())  # the PT_LOAD covers [0, end)
    assert parse_bytes(tmp_path, write_elf(strtab_addr=end - 1, strsz=1, needed=[0])).needed \
        == ("",)
    with pytest.raises(CorruptElf, match="in no PT_LOAD segment"):
        parse_bytes(tmp_path, write_elf(strtab_addr=end))


def test_interp_length_bounds_are_the_kernels(tmp_path: Path) -> None:
    """binfmt_elf takes a PT_INTERP of 2 to PATH_MAX (4096) bytes, NUL included."""
    for interp, ok in ((b"/\0", True), (b"/" * 4095 + b"\0", True),
                       (b"/" * 4096 + b"\0", False), (b"/", False)):
        if ok:
            assert parse_bytes(tmp_path, write_elf(interp=interp)).interp == interp[:-1].decode()
        else:
            with pytest.raises(CorruptElf, match="PT_INTERP of"):
                parse_bytes(tmp_path, write_elf(interp=interp))


def test_a_dynamic_section_without_end_reads_a_bounded_amount(tmp_path: Path) -> None:
    """200,000 dynamic entries before DT_NULL (3 MiB; a crafted file may hold gigabytes):
    a reader that reads PT_DYNAMIC whole, or up to DT_NULL as pyelftools' DynamicSegment
    does, holds it all; here at most 1 MiB of entries is read, in chunks, then refused."""
    blob = write_elf(needed=[], extra=[(21, i) for i in range(200_000)])  # DT_DEBUG
    assert len(blob) > 3 << 20
    (tmp_path / "f.so").write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptElf, match="more than 65536 dynamic entries"):
            parse_elf(RootFS(tmp_path), "/f.so")
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # 65,000 entries are within the bound
    assert parse_bytes(tmp_path, write_elf(needed=[1], extra=[(21, 0)] * 65_000)).needed == (
        "libx.so",)


def test_many_names_into_one_endless_string_read_a_bounded_amount(tmp_path: Path) -> None:
    """2,000 DT_NEEDED entries all pointing at 512 KiB without a NUL: read naively, 1 GB."""
    data = write_elf(needed=[0] * 2000, strtab=b"A" * (512 << 10) + b"\0")
    tracemalloc.start()
    try:
        with pytest.raises(CorruptElf, match="bytes of dynamic strings"):
            parse_bytes(tmp_path, data)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@pytest.fixture(scope="module")
def real_elf(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> bytes:
    tmp = tmp_path_factory.mktemp("realelf")
    src = tmp / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run([gcc, "-o", str(tmp / "p"), str(src), "-Wl,-rpath,/opt/x:$ORIGIN/lib"],
                   check=True)
    return (tmp / "p").read_bytes()


def _only_corrupt_or_info(tmp: Path, data: bytes) -> None:
    """Parsing ends in CorruptElf naming the file (anything else raised fails the test),
    or in facts within the loader's and the reader's bounds."""
    try:
        info = parse_bytes(tmp, data, "p")
    except CorruptElf as exc:
        assert str(exc).startswith("/p: ")
        return
    assert info.elfclass in (32, 64) and info.machine.startswith("EM_")
    assert info.interp is None or len(info.interp.encode("utf-8", "surrogateescape")) < 4096
    strings = [*info.needed, info.rpath or "", info.runpath or "", info.soname or ""]
    assert sum(len(t.encode("utf-8", "surrogateescape")) + 1 for t in strings) <= 1 << 20
    assert not any("\0" in t for t in strings)


def test_every_truncation_of_a_real_program_is_corrupt_or_parses(
        tmp_path: Path, real_elf: bytes) -> None:
    for n in list(range(0, 1200)) + list(range(1200, len(real_elf), 97)):
        _only_corrupt_or_info(tmp_path, real_elf[:n])


def test_garbled_headers_of_a_real_program_are_corrupt_or_parse(
        tmp_path: Path, real_elf: bytes) -> None:
    rng = random.Random(13)
    info = parse_elf(RootFS(_write(tmp_path, "orig", real_elf)), "/orig")
    assert info.needed and info.runpath == "/opt/x:$ORIGIN/lib"
    for _ in range(1500):
        data = bytearray(real_elf)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(0, 1024) if rng.random() < 0.8 else rng.randrange(len(data))
            data[at] = rng.randrange(256)
        _only_corrupt_or_info(tmp_path, bytes(data))


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp


@pytest.mark.parametrize("off, fmt, value, fragment", [
    pytest.param(56, "<H", 0xFFFF, "65535 program headers", id="phnum"),  # PN_XNUM too
    pytest.param(54, "<H", 40, "program header size 40, expected 56", id="phentsize"),
    pytest.param(32, "<Q", 1 << 62, "program headers .* outside the file", id="phoff"),
    pytest.param(4, "<B", 7, "class 7", id="class"),
])
def test_patched_program_headers(tmp_path: Path, real_elf: bytes, off: int, fmt: str,
                                 value: int, fragment: str) -> None:
    data = bytearray(real_elf)
    struct.pack_into(fmt, data, off, value)
    with pytest.raises(CorruptElf, match=fragment):
        parse_bytes(tmp_path, bytes(data), "p")


# -- the resolver records corrupt files, the CLI exits 0 with the error listed --------------

def crashing_cache() -> bytes:
    """A new-format cache whose glibc-hwcaps section points past the end of the file (the
    reader used to index it unchecked: struct.error, exit 70)."""
    header = b"glibc-ld.so.cache1.1" + struct.pack("<IIB3xI12x", 0, 0, 2, 48)
    return header + struct.pack("<IIIIII", 0xEAA42174, 1, 1, 0, 1 << 20, 8)


def test_corrupt_root_and_corrupt_cache_are_recorded_not_raised(
        tmp_path: Path, real_elf: bytes) -> None:
    root = tmp_path / "root"
    base_root(root)
    (root / "etc").mkdir()
    (root / "etc/ld.so.cache").write_bytes(crashing_cache())
    (root / "app").mkdir()
    (root / "app/bad").write_bytes(write_elf(needed=[77]))
    (root / "app/good").write_bytes(real_elf)
    c = Resolver(RootFS(root)).closure(["/app/bad", "/app/good"])
    assert any(e.startswith("/app/bad: corrupt ELF file") for e in c.errors)
    assert any(e.startswith("/etc/ld.so.cache: unreadable ld.so.cache") for e in c.errors)
    assert f"/{LIBDIR}/libc.so.6" in c.files  # found in the default dirs all the same
    assert c.missing == []


def test_tracer_ldd_on_an_image_with_hostile_files_exits_0_listing_them(
        tmp_path: Path, real_elf: bytes) -> None:
    libc = (HOST_LIBDIR / "libc.so.6").read_bytes()
    ldso = (HOST_LIBDIR / "ld-linux-x86-64.so.2").read_bytes()
    img = tmp_path / "img.tar"
    docker_archive(img, [layer(
        M("usr/", "dir", mode=0o755), M("usr/lib/", "dir", mode=0o755),
        M(f"{LIBDIR}/", "dir", mode=0o755),
        M(f"{LIBDIR}/libc.so.6", data=libc, mode=0o755),
        M(f"{LIBDIR}/ld-linux-x86-64.so.2", data=ldso, mode=0o755),
        M("lib", "symlink", linkname="usr/lib"), M("lib64", "symlink", linkname="usr/lib"),
        M("etc/", "dir", mode=0o755),
        M("etc/ld.so.cache", data=crashing_cache()),
        M("app/", "dir", mode=0o755),
        M("app/good", data=real_elf, mode=0o755),
        M("app/bad", data=write_elf(needed=[1 << 30]), mode=0o755),
    )])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "tracer", "ldd", f"docker-archive:{img}",
                           "/app/good", "/app/bad", "--json"], capture_output=True,
                          text=True, env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert any(e.startswith("/app/bad: corrupt ELF file") for e in out["errors"])
    assert any(e.startswith("/etc/ld.so.cache:") for e in out["errors"])
    assert f"/{LIBDIR}/libc.so.6" in {f["path"] for f in out["files"]}


def test_tracer_ldd_applies_the_path_walk_budget_of_its_command_line(
        tmp_path: Path, real_elf: bytes) -> None:
    """`--budget path_walk=N` bounds the lookups of `tracer ldd` itself: a link whose
    target walks 601 components is refused under 500 and resolved under the default (the
    image's RootFS used to be made without the limit, which then stayed the default)."""
    far = "/".join(["d", ".."] * 300 + ["good"])
    img = tmp_path / "img.tar"
    docker_archive(img, [layer(
        M("app/", "dir", mode=0o755), M("app/d/", "dir", mode=0o755),
        M("app/good", data=real_elf, mode=0o755),
        M("app/far", "symlink", linkname=far),
    )])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def ldd(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tracer", "ldd", f"docker-archive:{img}",
                               "/app/far", "--json", *extra], capture_output=True, text=True,
                              env=env, check=False, timeout=300)

    done = ldd("--budget", "path_walk=500")
    assert done.returncode == 2, done.stderr
    assert "looking up '/app/far'" in done.stderr
    assert "over the path_walk budget of 500" in done.stderr
    done = ldd()
    assert done.returncode == 0, done.stderr
    assert "/app/good" in {f["path"] for f in json.loads(done.stdout)["files"]}
