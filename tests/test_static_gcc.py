"""Hand-made loader cases, compiled by the test with gcc, checked against the real ld.so.

The image is a temporary merged-/usr root holding the host's own glibc loader and libc
(Debian x86_64), plus programs and libraries built here. Each case asserts the expected
answer explicitly, and, when we are root, that the real loader run in a chroot of that
root (`ld.so --list`) agrees.

The image may run on any x86-64 CPU, and this host's is only one of them: the resolver
keeps what the loader maps on any CPU (glibc-hwcaps levels, legacy hwcap directories,
each `$PLATFORM`). So "agrees" means, on whatever CPU the test runs: what the loader maps
here, and in configurations that stand for other CPUs (fewer glibc-hwcaps levels, no
legacy hwcap bits), is kept; anything else kept is marked as mapped on some CPUs only.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from prereq import missing as prereq_missing

from tracer.rootfs import RootFS
from tracer.static import Closure, Resolver, format_text, to_json, which

HOST_LDSO = Path("/lib64/ld-linux-x86-64.so.2")
TRIPLET_DIR = "usr/lib/x86_64-linux-gnu"


def loaded(c: Closure) -> set[str]:
    """Real paths of the objects the loader maps (libraries and interpreter)."""
    return {p for p, needs in c.files.items() if any(n.kind in ("needed", "interp") for n in needs)}


# ld.so configurations standing for other CPUs than this host's: no glibc-hwcaps level
# and no legacy hwcap bit (a baseline x86-64), or only x86-64-v2
OTHER_CPUS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "this CPU": ((), {}),
    "baseline": (("--glibc-hwcaps-mask", ""), {"GLIBC_TUNABLES": "glibc.cpu.hwcap_mask=0"}),
    "x86-64-v2": (("--glibc-hwcaps-mask", "x86-64-v2"), {}),
}


def real_loader(root: Path, exe: str, env: dict[str, str] | None = None,
                args: tuple[str, ...] = ()) -> tuple[set, set]:
    """(mapped files, names not found) as the image's loader reports them, via chroot;
    `args`: ld.so options (e.g. --glibc-hwcaps-mask)."""
    if os.geteuid() != 0:
        prereq_missing("comparing with the real loader needs chroot (root)")
    # ldd's own method: LD_TRACE_LOADED_OBJECTS makes the loader list instead of run, and
    # keeps going past a missing library (`ld.so --list` stops at the first one). chroot is
    # done in the child itself so the variable reaches only the image's loader.
    def enter() -> None:  # chroot, then chdir: relative paths are relative to the image
        os.chroot(root)
        os.chdir("/")

    out = subprocess.run(
        ["/lib64/ld-linux-x86-64.so.2", *args, exe], capture_output=True, text=True,
        preexec_fn=enter, env={"LD_TRACE_LOADED_OBJECTS": "1", **(env or {})}, check=False,
    )
    fs = RootFS(root)
    found, missing = set(), set()
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("linux-vdso"):
            continue
        if "=> not found" in line:
            missing.add(line.split()[0])
            continue
        path = line.split("=>")[1] if "=>" in line else line
        found.add(fs.resolve(path.split("(")[0].strip()).path)
    return found, missing


def found_on_some_cpu(c: Closure, name: str) -> bool:
    """Whether the closure maps `name` on some CPUs (the loader here may miss it)."""
    return any(n.cpu and n.chain[-1:] == (name,) for ns in c.files.values() for n in ns)


def agrees(root: Path, exe: str, c: Closure, env: dict[str, str] | None = None) -> None:
    """The comparison that holds on any CPU (module docstring)."""
    got, got_missing = loaded(c), {m.name for m in c.missing}
    for cpu, (args, tunables) in OTHER_CPUS.items():
        found, missing = real_loader(root, exe, {**(env or {}), **tunables}, args)
        assert found <= got, cpu
        assert {p for p in got - found if not c.cpu_only(p)} == set(), cpu
        assert got_missing <= missing, cpu
        assert {n for n in missing - got_missing if not found_on_some_cpu(c, n)} == set(), cpu


def cc(gcc: str, src: str, out: Path, *flags: str) -> None:
    """Compile C source text into `out` (a program, or a library with -shared)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    c_file = out.parent / (out.name + ".c")
    c_file.write_text(src)
    done = subprocess.run([gcc, "-o", str(out), str(c_file), *flags], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    c_file.unlink()


LIB = "int {name}(void) {{ return {body}; }}\n"
PROG = "int {fn}(void);\nint main(void) {{ return {fn}(); }}\n"


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Path:
    """A small image root: host loader + libc, merged /usr, no ld.so.cache."""
    if not HOST_LDSO.exists():
        prereq_missing("needs an x86_64 glibc host")
    root = tmp_path_factory.mktemp("image")
    libdir = root / TRIPLET_DIR
    libdir.mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2(Path("/lib/x86_64-linux-gnu") / name, libdir / name)
    (root / "usr/lib64").mkdir()
    os.symlink(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "usr/lib64/ld-linux-x86-64.so.2"
    )
    for top in ("lib", "lib64", "bin"):
        os.symlink(f"usr/{top}", root / top)
    (root / "usr/bin").mkdir()
    (root / "etc").mkdir()
    shutil.copy2("/usr/bin/env", root / "usr/bin/env")

    # RPATH (inherited) vs RUNPATH (not inherited): liba needs libb, both in /opt/a
    cc(gcc, LIB.format(name="b", body=2), root / "opt/a/libb.so", "-shared", "-fPIC")
    cc(gcc, "int b(void);\n" + LIB.format(name="a", body="b()"), root / "opt/a/liba.so",
       "-shared", "-fPIC", f"-L{root}/opt/a", "-lb")
    prog_a = PROG.format(fn="a")
    cc(gcc, prog_a, root / "app/rpath", f"-L{root}/opt/a", "-la", f"-Wl,-rpath-link,{root}/opt/a",
       "-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/a")
    cc(gcc, prog_a, root / "app/runpath", f"-L{root}/opt/a", "-la",
       f"-Wl,-rpath-link,{root}/opt/a",
       "-Wl,--enable-new-dtags", "-Wl,-rpath,/opt/a")

    # $ORIGIN and $LIB
    cc(gcc, LIB.format(name="o", body=3), root / "app/lib/libo.so", "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="o"), root / "app/bin/origin", f"-L{root}/app/lib", "-lo",
       "-Wl,-rpath,$ORIGIN/../lib")
    cc(gcc, LIB.format(name="l", body=4), root / "opt/lib/x86_64-linux-gnu/libl.so",
       "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="l"), root / "app/dstlib", f"-L{root}/opt/lib/x86_64-linux-gnu",
       "-ll", "-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/$LIB")

    for platform in ("x86_64", "haswell", "xeon_phi"):  # AMD, Intel with AVX2, Xeon Phi
        cc(gcc, LIB.format(name="pl", body=4), root / f"opt/p/{platform}/libpl.so", "-shared",
           "-fPIC")
    cc(gcc, PROG.format(fn="pl"), root / "app/dstplat", f"-L{root}/opt/p/x86_64", "-lpl",
       "-Wl,-rpath,/opt/p/${PLATFORM}")

    # wrong class first in the path: a 32-bit libw.so in /opt/w32, the right one in /opt/w64
    cc(gcc, LIB.format(name="w", body=5), root / "opt/w32/libw.so",
       "-m32", "-shared", "-fPIC", "-nostdlib")
    cc(gcc, LIB.format(name="w", body=5), root / "opt/w64/libw.so", "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="w"), root / "app/wrongclass", f"-L{root}/opt/w64", "-lw",
       "-Wl,-rpath,/opt/w32:/opt/w64")

    # a missing library: build against a stub, then remove it
    cc(gcc, LIB.format(name="gone", body=6), root / "tmp/stub/libgone.so", "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="gone"), root / "app/missing", f"-L{root}/tmp/stub", "-lgone")
    shutil.rmtree(root / "tmp/stub")

    # a symlink loop before the real library, and a corrupt ELF before another
    (root / "opt/loop").mkdir(parents=True)
    os.symlink("libp.so", root / "opt/loop/libq.so")
    os.symlink("libq.so", root / "opt/loop/libp.so")
    cc(gcc, LIB.format(name="p", body=7), root / "opt/good/libp.so", "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="p"), root / "app/loop", f"-L{root}/opt/good", "-lp",
       "-Wl,-rpath,/opt/loop:/opt/good")
    (root / "opt/bad").mkdir()
    (root / "opt/bad/libp.so").write_bytes(b"\x7fELF\x02\x01\x01" + b"\xff" * 40)
    cc(gcc, PROG.format(fn="p"), root / "app/corruptdep", f"-L{root}/opt/good", "-lp",
       "-Wl,-rpath,/opt/bad:/opt/good")

    # LD_LIBRARY_PATH-only library
    cc(gcc, LIB.format(name="e", body=8), root / "opt/env/libe.so", "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="e"), root / "app/envlib", f"-L{root}/opt/env", "-le")

    # ld.so.conf (+ include glob) and ld.so.cache
    (root / "etc/ld.so.conf.d").mkdir()
    (root / "etc/ld.so.conf").write_text("# test\ninclude /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/opt.conf").write_text("/opt/conf\n")
    (root / "etc/ld.so.conf.d/ignored.txt").write_text("/opt/never\n")
    cc(gcc, LIB.format(name="k", body=9), root / "opt/conf/libk.so", "-shared", "-fPIC")
    cc(gcc, PROG.format(fn="k"), root / "app/conflib", f"-L{root}/opt/conf", "-lk")

    # glibc-hwcaps: a v2 build next to the baseline build
    cc(gcc, LIB.format(name="h", body=10), root / "opt/h/libh.so", "-shared", "-fPIC")
    cc(gcc, LIB.format(name="hx", body=11), root / "opt/h/libhx.so", "-shared", "-fPIC")
    cc(gcc, LIB.format(name="h", body=10), root / "opt/h/glibc-hwcaps/x86-64-v2/libh.so",
       "-shared", "-fPIC", f"-L{root}/opt/h", "-Wl,--no-as-needed", "-lhx",
       "-Wl,-rpath,/opt/h")  # only the v2 build needs libhx
    cc(gcc, PROG.format(fn="h"), root / "app/hwcaps", f"-L{root}/opt/h", "-lh",
       "-Wl,-rpath,/opt/h")

    # preloads: libpre1 in a default directory, libpre2 (needing libpredep next to it)
    # named by path, libpre3 only where /app/rpath's RPATH points
    _plib(gcc, root / TRIPLET_DIR / "libpre1.so", 51)
    _plib(gcc, root / "opt/pre/libpredep.so", 52)
    cc(gcc, "int f52(void);\nint f53(void) { return f52(); }\n", root / "opt/pre/libpre2.so",
       "-shared", "-fPIC", f"-L{root}/opt/pre", "-lpredep", "-Wl,--enable-new-dtags",
       "-Wl,-rpath,$ORIGIN")
    _plib(gcc, root / "opt/a/libpre3.so", 54)
    cc(gcc, "int main(void) { return 0; }\n", root / "app/static", "-static")

    # scripts
    script = root / "app/run.sh"
    script.write_text("#!/usr/bin/env -S origin --flag\necho hi\n")
    script.chmod(0o755)
    (root / "app/data.txt").write_text("plain data\n")
    return root


def _plib(gcc: str, path: Path, body: int) -> None:
    cc(gcc, LIB.format(name=f"f{body}", body=body), path, "-shared", "-fPIC")


LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LDSO = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def test_rpath_is_inherited_by_dependencies(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/rpath"])
    assert loaded(c) == {"/opt/a/liba.so", "/opt/a/libb.so", LIBC, LDSO}
    assert c.missing == [] and c.errors == []
    assert c.files["/opt/a/libb.so"][0].chain == ("/app/rpath", "liba.so", "libb.so")
    agrees(sysroot, "/app/rpath", c)


def test_runpath_is_not_inherited(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/runpath"])
    assert "/opt/a/liba.so" in loaded(c)
    assert "/opt/a/libb.so" not in loaded(c)
    assert [(m.name, m.needed_by) for m in c.missing] == [
        ("libb.so", ("/app/runpath", "liba.so"))
    ]
    agrees(sysroot, "/app/runpath", c)


def test_origin_and_lib_tokens(sysroot: Path) -> None:
    r = Resolver(RootFS(sysroot))
    c = r.closure(["/app/bin/origin"])
    assert "/app/lib/libo.so" in loaded(c)
    agrees(sysroot, "/app/bin/origin", c)
    c = r.closure(["/app/dstlib"])
    assert "/opt/lib/x86_64-linux-gnu/libl.so" in loaded(c)  # Debian: $LIB = lib/TRIPLET
    agrees(sysroot, "/app/dstlib", c)
    c = r.closure(["/app/dstplat"])
    plat = {"/opt/p/x86_64/libpl.so", "/opt/p/haswell/libpl.so", "/opt/p/xeon_phi/libpl.so"}
    assert plat <= loaded(c) and c.missing == []  # every value $PLATFORM takes on x86-64
    assert all(c.cpu_only(p) for p in plat)
    assert not any(c.cpu_only(p) for p in (LIBC, LDSO))
    # what `tracer ldd` shows: the text marks them, the JSON says it per reason
    lines = {line.split()[0]: line for line in format_text(c).splitlines() if line}
    assert all(lines[p].endswith("(on some CPUs)") for p in plat)
    assert not lines[LIBC].endswith("(on some CPUs)")
    reasons = {f["path"]: f["reasons"] for f in to_json(c)["files"]}
    assert [r["cpu"] for r in reasons["/opt/p/haswell/libpl.so"]] == [True]
    assert [r["cpu"] for r in reasons[LIBC]] == [False]
    agrees(sysroot, "/app/dstplat", c)


def test_wrong_class_library_earlier_in_path_is_skipped(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/wrongclass"])
    assert "/opt/w64/libw.so" in loaded(c)
    assert "/opt/w32/libw.so" not in c.files
    agrees(sysroot, "/app/wrongclass", c)


def test_missing_library_is_reported_not_dropped(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/missing"])
    assert [(m.name, m.needed_by) for m in c.missing] == [("libgone.so", ("/app/missing",))]
    assert "libgone.so  not found, needed by /app/missing" in format_text(c)
    assert to_json(c)["missing"] == [{"name": "libgone.so", "needed_by": ["/app/missing"]}]
    agrees(sysroot, "/app/missing", c)


def test_symlink_loop_in_search_path_is_reported_and_ends_that_path_list(sysroot: Path) -> None:
    """ld.so stops searching a path list at an ELOOP (only ENOENT/EACCES go on)."""
    c = Resolver(RootFS(sysroot)).closure(["/app/loop"])
    assert "/opt/good/libp.so" not in c.files
    assert [m.name for m in c.missing] == ["libp.so"]
    assert any("/opt/loop/libp.so" in e and "symbolic links" in e for e in c.errors)
    agrees(sysroot, "/app/loop", c)


def test_corrupt_elf_gives_a_clear_error_not_a_crash(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/corruptdep", "/opt/bad/libp.so"])
    assert "/opt/good/libp.so" in loaded(c)
    assert c.errors and all("/opt/bad/libp.so" in e for e in c.errors)
    assert "corrupt ELF" in c.errors[0]
    assert "errors (1):" in format_text(c)


def test_ld_library_path_from_env(sysroot: Path) -> None:
    fs = RootFS(sysroot)
    without = Resolver(fs).closure(["/app/envlib"])
    assert [m.name for m in without.missing] == ["libe.so"]
    env = {"LD_LIBRARY_PATH": "/opt/env"}
    c = Resolver(fs, env).closure(["/app/envlib"])
    assert "/opt/env/libe.so" in loaded(c) and c.missing == []
    agrees(sysroot, "/app/envlib", c, env)


def test_ld_so_conf_include_glob_then_cache_including_a_stale_one(
    sysroot: Path, tmp_path: Path
) -> None:
    root = tmp_path / "img"
    shutil.copytree(sysroot, root, symlinks=True)
    c = Resolver(RootFS(root)).closure(["/app/conflib"])  # no cache: ld.so.conf dirs stand in
    assert "/opt/conf/libk.so" in loaded(c)
    if shutil.which("ldconfig") is None:
        prereq_missing("ldconfig not installed; run scripts/setup")
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True)
    c = Resolver(RootFS(root)).closure(["/app/conflib"])
    assert "/opt/conf/libk.so" in loaded(c)
    agrees(root, "/app/conflib", c)
    # a library moved after ldconfig ran: the stale cache no longer finds it, nor does ld.so
    (root / "opt/conf/libk.so").rename(root / "opt/conf/libk.so.moved")
    os.link(root / "opt/conf/libk.so.moved", root / "opt/conf/libk2.so")
    c = Resolver(RootFS(root)).closure(["/app/conflib"])
    assert [m.name for m in c.missing] == ["libk.so"]
    agrees(root, "/app/conflib", c)


def test_glibc_hwcaps_variant_is_preferred_and_baseline_kept(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/hwcaps"])
    v2, base = "/opt/h/glibc-hwcaps/x86-64-v2/libh.so", "/opt/h/libh.so"
    assert {v2, base} <= loaded(c)
    assert c.files[v2][0].chain == ("/app/hwcaps", "libh.so")  # the first pick
    assert "/opt/h/libhx.so" in loaded(c)  # a variant's own dependencies are kept too
    assert all(c.cpu_only(p) for p in (v2, base, "/opt/h/libhx.so"))
    agrees(sysroot, "/app/hwcaps", c)  # the variant any CPU picks is among those kept


def test_interp_and_its_symlinks_are_kept(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/rpath"])
    assert {n.kind for n in c.files["/lib64"]} == {"symlink"}
    assert "/usr/lib64/ld-linux-x86-64.so.2" in c.files  # the link named by PT_INTERP
    assert "/lib" in c.files  # crossed on the way to its target
    assert c.files[LDSO][0].kind == "interp"


def test_shebang_through_env_uses_image_path(sysroot: Path) -> None:
    fs = RootFS(sysroot)
    assert which(fs, "origin", "/nowhere:/app/bin") == "/app/bin/origin"
    assert which(fs, "data.txt", "/app") is None  # not executable
    c = Resolver(fs, {"PATH": "/app/bin:/usr/bin"}).closure(["/app/run.sh"])
    assert c.files["/app/run.sh"][0].kind == "root"
    assert c.files["/usr/bin/env"][0].kind == "shebang"
    assert c.files["/app/bin/origin"][0].chain == ("/app/run.sh", "/usr/bin/env", "/app/bin/origin")
    assert "/app/lib/libo.so" in loaded(c)
    assert c.missing == [] and c.errors == []
    missing = Resolver(fs, {"PATH": "/usr/bin"}).closure(["/app/run.sh"])
    assert [(m.name, m.needed_by) for m in missing.missing] == [
        ("origin", ("/app/run.sh", "/usr/bin/env"))
    ]


def test_data_file_and_bare_names(sysroot: Path) -> None:
    fs = RootFS(sysroot)
    c = Resolver(fs, {"PATH": "/app/bin"}).closure(
        ["/app/data.txt", "origin", "nosuchprog", "/app/bin"]
    )
    assert c.files["/app/bin"][0].kind == "root"  # a directory: kept, nothing to follow
    assert c.files["/app/data.txt"] == [c.files["/app/data.txt"][0]]
    assert c.files["/app/data.txt"][0].kind == "root"
    assert "/app/bin/origin" in c.files
    assert [m.name for m in c.missing] == ["nosuchprog"]
    assert c.errors == []
    assert stat.S_ISREG(fs.stat("/app/data.txt").st_mode)


def test_json_lists_every_file_with_reasons(sysroot: Path) -> None:
    c = Resolver(RootFS(sysroot)).closure(["/app/rpath"])
    data = to_json(c)
    paths = [f["path"] for f in data["files"]]
    assert paths == sorted(c.files)
    entry = next(f for f in data["files"] if f["path"] == "/opt/a/libb.so")
    assert entry["reasons"] == [{"kind": "needed", "chain": ["/app/rpath", "liba.so", "libb.so"],
                                 "cpu": False}]
    assert data["errors"] == [] and data["missing"] == []



# -- preloads: LD_PRELOAD and /etc/ld.so.preload --------------------------------------------

PRE1, PRE2 = f"/{TRIPLET_DIR}/libpre1.so", "/opt/pre/libpre2.so"
PREDEP, PRE3 = "/opt/pre/libpredep.so", "/opt/a/libpre3.so"


def test_ld_preload_is_split_at_spaces_and_colons_only(sysroot: Path) -> None:
    """rtld.c splits LD_PRELOAD at ' ' and ':'; a preload is searched for the main program
    (libpre3 only through /app/rpath's RPATH), its own DT_NEEDED follow; a name not found
    is ignored (the program starts), reported as an error, never as missing."""
    fs = RootFS(sysroot)
    env = {"LD_PRELOAD": f"libpre1.so:{PRE2}  libpre3.so::libnone.so"}
    c = Resolver(fs, env).closure(["/app/rpath"])
    assert {PRE1, PRE2, PREDEP, PRE3} <= loaded(c)
    assert c.files[PRE2][0].chain == ("/app/rpath", "LD_PRELOAD", PRE2)
    assert c.files[PREDEP][0].chain == ("/app/rpath", "LD_PRELOAD", PRE2, "libpredep.so")
    assert c.missing == []
    assert c.errors == ["LD_PRELOAD: libnone.so cannot be preloaded: not found (the loader "
                        "ignores it)"]
    agrees(sysroot, "/app/rpath", c, env)
    # a tab or a newline does not separate: one name, which names no file
    for sep in ("\t", "\n"):
        env = {"LD_PRELOAD": f"libpre1.so{sep}libpre3.so"}
        c = Resolver(fs, env).closure(["/app/rpath"])
        assert not {PRE1, PRE3} & set(c.files)
        assert c.missing == [] and len(c.errors) == 1
        agrees(sysroot, "/app/rpath", c, env)
    # a static program has no loader: nothing is preloaded
    c = Resolver(fs, {"LD_PRELOAD": "libpre1.so"}).closure(["/app/static"])
    assert set(c.files) == {"/app/static"} and c.errors == []


def test_ld_so_preload_file_as_rtld_reads_it(sysroot: Path, tmp_path: Path) -> None:
    """Names separated by spaces, tabs, newlines and colons, `#` comments, the last name
    without a newline; then LD_PRELOAD's names come first."""
    root = tmp_path / "img"
    shutil.copytree(sysroot, root, symlinks=True)
    (root / "etc/ld.so.preload").write_text(f"libpre1.so\t{PRE2}:libnone.so # libpre3.so\n"
                                            "libpre3.so")
    c = Resolver(RootFS(root)).closure(["/app/rpath"])
    assert {PRE1, PRE2, PREDEP, PRE3} <= loaded(c)
    assert c.files[PRE3][0].chain == ("/app/rpath", "/etc/ld.so.preload", "libpre3.so")
    assert c.missing == []
    assert c.errors == ["/etc/ld.so.preload: libnone.so cannot be preloaded: not found (the "
                        "loader ignores it)"]
    agrees(root, "/app/rpath", c)
    # only a commented-out name: nothing preloaded
    (root / "etc/ld.so.preload").write_text("# libpre1.so\n\n")
    c = Resolver(RootFS(root)).closure(["/app/rpath"])
    assert PRE1 not in c.files and c.errors == []
    agrees(root, "/app/rpath", c)


def test_ld_so_preload_comment_quirk_of_rtld(sysroot: Path, tmp_path: Path) -> None:
    """After a comment, rtld.c looks for the next `#` only in the first (file size - end
    of that comment) bytes, and blanks at most that many: a `#` past them is part of a
    name (`#libpre3.so`, which exists here), and a comment may end early (its last
    letter, `o`, is a name)."""
    root = tmp_path / "img"
    shutil.copytree(sysroot, root, symlinks=True)
    (root / "opt/a/#libpre3.so").symlink_to("libpre3.so")
    (root / "etc/ld.so.preload").write_text("# a long comment line, longer than the rest\n"
                                            "#libpre3.so\n")
    c = Resolver(RootFS(root)).closure(["/app/rpath"])
    assert PRE3 in loaded(c) and "/opt/a/#libpre3.so" in c.files
    agrees(root, "/app/rpath", c)
    (root / "etc/ld.so.preload").write_text("#c\nlibpre1.so #libpre3.so\n")
    c = Resolver(RootFS(root)).closure(["/app/rpath"])
    assert PRE1 in loaded(c) and PRE3 not in loaded(c)
    assert c.errors == ["/etc/ld.so.preload: o cannot be preloaded: not found (the loader "
                        "ignores it)"]
    agrees(root, "/app/rpath", c)


# -- $ORIGIN is the directory of the right object --------------------------------------------

def _lib(gcc: str, path: Path, body: int, *flags: str) -> None:
    cc(gcc, LIB.format(name=f"f{body}", body=body), path, "-shared", "-fPIC", *flags)


@pytest.fixture(scope="module")
def originroot(sysroot: Path, tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Path:
    """Programs whose libraries exist twice: where $ORIGIN of the right object points, and
    where $ORIGIN of a wrong one (the requester, its loader) would point."""
    root = tmp_path_factory.mktemp("origin") / "img"
    shutil.copytree(sysroot, root, symlinks=True)
    # LD_LIBRARY_PATH=$ORIGIN/../zlib: the executable's directory, whoever asks (here
    # libdep, loaded by libtop, loaded by the executable)
    for d in ("app/zlib", "opt/zlib"):  # /opt/zlib: $ORIGIN of libdep or libtop
        _lib(gcc, root / d / "libz2.so", 21)
    cc(gcc, "int f21(void);\nint dep(void) { return f21(); }\n", root / "opt/dep/libdep.so",
       "-shared", "-fPIC", f"-L{root}/app/zlib", "-lz2")
    cc(gcc, "int dep(void);\nint top(void) { return dep(); }\n", root / "opt/top/libtop.so",
       "-shared", "-fPIC", f"-L{root}/opt/dep", "-ldep")
    cc(gcc, PROG.format(fn="top"), root / "app/bin/llp", f"-L{root}/opt/top", "-ltop",
       f"-Wl,-rpath-link,{root}/app/zlib:{root}/opt/dep", "-Wl,--disable-new-dtags",
       "-Wl,-rpath,/opt/top:/opt/dep")
    # the same DT_RUNPATH text in two libraries: each $ORIGIN is its own directory
    for n in (1, 2):
        _lib(gcc, root / f"opt/o{n}/sub/libs{n}.so", 40 + n)
        cc(gcc, f"int f4{n}(void);\nint o{n}(void) {{ return f4{n}(); }}\n",
           root / f"opt/o{n}/libo{n}.so", "-shared", "-fPIC", f"-L{root}/opt/o{n}/sub",
           f"-ls{n}", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/sub")
    # a library reached through a symlink in another directory: $ORIGIN is the link's
    # directory (the path the loader opened), not the target's
    _lib(gcc, root / "opt/links/libnear.so", 43)
    _lib(gcc, root / "opt/real/libnear.so", 44)
    cc(gcc, "int f43(void);\nint far(void) { return f43(); }\n", root / "opt/real/libfar.so",
       "-shared", "-fPIC", f"-L{root}/opt/links", "-lnear", "-Wl,--enable-new-dtags",
       "-Wl,-rpath,$ORIGIN")
    os.symlink("../real/libfar.so", root / "opt/links/libfar.so")
    cc(gcc, PROG.format(fn="far"), root / "app/vialink", f"-L{root}/opt/real", "-lfar",
       f"-Wl,-rpath-link,{root}/opt/links", "-Wl,--enable-new-dtags", "-Wl,-rpath,/opt/links")
    cc(gcc, "int o1(void); int o2(void);\nint main(void) { return o1() + o2(); }\n",
       root / "app/twice", f"-L{root}/opt/o1", f"-L{root}/opt/o2", "-lo1", "-lo2",
       f"-Wl,-rpath-link,{root}/opt/o1/sub:{root}/opt/o2/sub", "-Wl,--enable-new-dtags",
       "-Wl,-rpath,/opt/o1:/opt/o2")
    # DT_RPATH $ORIGIN/lib of the executable, inherited by liba: the executable's $ORIGIN
    _lib(gcc, root / "app/r/lib/libq.so", 22)
    _lib(gcc, root / "app/r/lib/lib/libq.so", 23)  # liba's $ORIGIN/lib
    cc(gcc, "int f22(void);\nint a2(void) { return f22(); }\n", root / "app/r/lib/liba2.so",
       "-shared", "-fPIC", f"-L{root}/app/r/lib", "-lq")
    cc(gcc, PROG.format(fn="a2"), root / "app/r/inherit", f"-L{root}/app/r/lib", "-la2",
       f"-Wl,-rpath-link,{root}/app/r/lib", "-Wl,--disable-new-dtags",
       "-Wl,-rpath,$ORIGIN/lib")
    return root


def test_origin_in_ld_library_path_is_the_executables_directory(originroot: Path) -> None:
    env = {"LD_LIBRARY_PATH": "$ORIGIN/../zlib"}
    c = Resolver(RootFS(originroot), env).closure(["/app/bin/llp"])
    assert "/app/zlib/libz2.so" in loaded(c)
    assert "/opt/zlib/libz2.so" not in c.files
    assert c.files["/app/zlib/libz2.so"][0].chain == (
        "/app/bin/llp", "libtop.so", "libdep.so", "libz2.so")
    agrees(originroot, "/app/bin/llp", c, env)
    # written with braces, and after another element: the same object's directory
    env = {"LD_LIBRARY_PATH": "/nowhere:${ORIGIN}/../zlib"}
    c = Resolver(RootFS(originroot), env).closure(["/app/bin/llp"])
    assert "/app/zlib/libz2.so" in loaded(c)
    agrees(originroot, "/app/bin/llp", c, env)


def test_origin_in_an_inherited_rpath_is_its_holders_directory(originroot: Path) -> None:
    c = Resolver(RootFS(originroot)).closure(["/app/r/inherit"])
    assert {"/app/r/lib/liba2.so", "/app/r/lib/libq.so"} <= loaded(c)
    assert "/app/r/lib/lib/libq.so" not in c.files
    agrees(originroot, "/app/r/inherit", c)


def test_origin_of_a_library_found_through_a_link_is_the_links_directory(
        originroot: Path) -> None:
    c = Resolver(RootFS(originroot)).closure(["/app/vialink"])
    assert {"/opt/real/libfar.so", "/opt/links/libnear.so"} <= loaded(c)
    assert "/opt/real/libnear.so" not in c.files
    agrees(originroot, "/app/vialink", c)


def test_origin_in_the_same_runpath_text_of_two_libraries(originroot: Path) -> None:
    c = Resolver(RootFS(originroot)).closure(["/app/twice"])
    assert {"/opt/o1/sub/libs1.so", "/opt/o2/sub/libs2.so"} <= loaded(c)
    assert c.missing == []
    agrees(originroot, "/app/twice", c)


# -- every CPU: legacy hwcap directories, variants only, other CPUs' lookups --------------

LEGACY_OK = ("tls/haswell/avx512_1/x86_64", "tls", "haswell", "x86_64/x86_64", "avx512_1")
LEGACY_NOT = ("x86_64/tls", "glibc-hwcaps/z13", "i686", "avx512_1/haswell")


@pytest.fixture(scope="module")
def cpuroot(sysroot: Path, tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Path:
    """Libraries that different x86-64 CPUs find in different places."""
    root = tmp_path_factory.mktemp("cpu") / "img"
    shutil.copytree(sysroot, root, symlinks=True)
    # legacy hwcap subdirectories glibc <= 2.36 searches on some x86-64 CPU (an AMD: tls,
    # x86_64/x86_64; an Intel with AVX-512: tls/haswell/avx512_1/x86_64 ...), and names in
    # an order or of an architecture it never searches
    _lib(gcc, root / "opt/lg/libq.so", 60)
    for sub in LEGACY_OK + LEGACY_NOT:
        (root / "opt/lg" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "opt/lg/libq.so", root / "opt/lg" / sub / "libq.so")
    cc(gcc, PROG.format(fn="f60"), root / "app/legacy", f"-L{root}/opt/lg", "-lq",
       "-Wl,-rpath,/opt/lg")
    # variants only in the first RPATH directory: a CPU without them goes on to the second
    _lib(gcc, root / "opt/lv2/libv.so", 61)
    for sub in ("glibc-hwcaps/x86-64-v4", "haswell"):
        (root / "opt/lv" / sub).mkdir(parents=True)
        shutil.copy2(root / "opt/lv2/libv.so", root / "opt/lv" / sub / "libv.so")
    (root / "opt/lv/glibc-hwcaps/x86-64-v3").mkdir()
    _lib(gcc, root / "opt/lv/glibc-hwcaps/x86-64-v3/libonly.so", 62)
    cc(gcc, "int f61(void); int f62(void);\nint main(void) { return f61() + f62(); }\n",
       root / "app/goon", f"-L{root}/opt/lv2", "-lv", f"-L{root}/opt/lv/glibc-hwcaps/x86-64-v3",
       "-lonly", "-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/lv:/opt/lv2")
    # libwa's x86-64-v2 build needs libwb from its own RUNPATH; libwc needs libwb too and
    # finds it, where that build is not mapped, through the program's RPATH in /opt/wb
    _lib(gcc, root / "opt/w/v2deps/libwb.so", 63)
    (root / "opt/wb").mkdir()
    shutil.copy2(root / "opt/w/v2deps/libwb.so", root / "opt/wb/libwb.so")
    _lib(gcc, root / "opt/w/libwa.so", 64)
    cc(gcc, "int f63(void);\nint f64(void) { return f63(); }\n",
       root / "opt/w/glibc-hwcaps/x86-64-v2/libwa.so", "-shared", "-fPIC",
       f"-L{root}/opt/w/v2deps", "-lwb", "-Wl,--enable-new-dtags", "-Wl,-rpath,/opt/w/v2deps")
    cc(gcc, "int f63(void);\nint f65(void) { return f63(); }\n", root / "opt/w/libwc.so",
       "-shared", "-fPIC", f"-L{root}/opt/wb", "-lwb")
    cc(gcc, "int f64(void); int f65(void);\nint main(void) { return f64() + f65(); }\n",
       root / "app/worlds", f"-L{root}/opt/w", "-lwa", "-lwc", f"-Wl,-rpath-link,{root}/opt/wb",
       "-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/w:/opt/wb")
    return root


def test_legacy_hwcap_directories_of_every_x86_64_cpu(cpuroot: Path) -> None:
    c = Resolver(RootFS(cpuroot)).closure(["/app/legacy"])
    kept = {f"/opt/lg/{sub}/libq.so" for sub in LEGACY_OK} | {"/opt/lg/libq.so"}
    assert kept <= loaded(c) and all(c.cpu_only(p) for p in kept)
    assert not {f"/opt/lg/{sub}/libq.so" for sub in LEGACY_NOT} & set(c.files)
    # the first in glibc's order (its power set counts down, tls most significant)
    assert c.files["/opt/lg/tls/haswell/avx512_1/x86_64/libq.so"][0].chain == (
        "/app/legacy", "libq.so")
    assert c.missing == [] and c.errors == []
    agrees(cpuroot, "/app/legacy", c)


def test_a_variant_only_hit_does_not_end_the_search(cpuroot: Path) -> None:
    """A CPU without x86-64-v4 (and not a Haswell) finds libv in the next RPATH directory;
    libonly exists only for x86-64-v3: kept, not missing (on an older CPU the program
    cannot start, whatever is kept)."""
    c = Resolver(RootFS(cpuroot)).closure(["/app/goon"])
    libv = {"/opt/lv/glibc-hwcaps/x86-64-v4/libv.so", "/opt/lv/haswell/libv.so",
            "/opt/lv2/libv.so"}
    only = "/opt/lv/glibc-hwcaps/x86-64-v3/libonly.so"
    assert libv | {only} <= loaded(c)
    assert all(c.cpu_only(p) for p in libv | {only})
    assert c.missing == [] and c.errors == []
    agrees(cpuroot, "/app/goon", c)


def test_a_name_another_cpu_finds_elsewhere_is_looked_up_again(cpuroot: Path) -> None:
    """Where libwa's x86-64-v2 build is mapped, libwb comes from its RUNPATH and answers
    libwc's libwb.so too; elsewhere libwc's lookup finds /opt/wb/libwb.so. Both are kept,
    each as mapped on some CPUs only."""
    c = Resolver(RootFS(cpuroot)).closure(["/app/worlds"])
    wb = {"/opt/w/v2deps/libwb.so", "/opt/wb/libwb.so"}
    assert wb <= loaded(c) and all(c.cpu_only(p) for p in wb)
    assert not c.cpu_only("/opt/w/libwc.so")
    assert c.missing == [] and c.errors == []
    agrees(cpuroot, "/app/worlds", c)


# -- ld.so.cache: glibc-hwcaps entries, DF_1_NODEFLIB ---------------------------------------

@pytest.fixture(scope="module")
def cacheroot(sysroot: Path, tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Path:
    """libhc.so.1 in /opt/c and its glibc-hwcaps/x86-64-v{2,3} subdirectories, found only
    through the ld.so.cache that ldconfig writes (the program has no RPATH); the v3 build
    needs libv3dep.so. A DF_1_NODEFLIB program needs a library of /opt/c (not a system
    directory: its cache entry stays usable) and one of the default directories."""
    if shutil.which("ldconfig") is None:
        prereq_missing("ldconfig not installed; run scripts/setup")
    root = tmp_path_factory.mktemp("cache") / "img"
    shutil.copytree(sysroot, root, symlinks=True)
    (root / "etc/ld.so.conf").write_text("/opt/c\n")
    soname = "-Wl,-soname,libhc.so.1"
    _lib(gcc, root / "opt/c/libv3dep.so", 31)
    cc(gcc, LIB.format(name="hc", body=1), root / "opt/c/libhc.so.1", "-shared", "-fPIC",
       soname)
    cc(gcc, LIB.format(name="hc", body=2), root / "opt/c/glibc-hwcaps/x86-64-v2/libhc.so.1",
       "-shared", "-fPIC", soname)
    cc(gcc, "int f31(void);\n" + LIB.format(name="hc", body="f31()"),
       root / "opt/c/glibc-hwcaps/x86-64-v3/libhc.so.1", "-shared", "-fPIC", soname,
       f"-L{root}/opt/c", "-lv3dep")
    cc(gcc, PROG.format(fn="hc"), root / "app/viacache", f"-L{root}/opt/c", "-l:libhc.so.1")
    # DF_1_NODEFLIB: libk from the cache (/opt/c), libd only in a default directory, libc
    # through its RPATH
    _lib(gcc, root / "opt/c/libk.so", 32)
    _lib(gcc, root / TRIPLET_DIR / "libd.so", 33)
    (root / "opt/libc").mkdir()
    os.symlink(f"/{TRIPLET_DIR}/libc.so.6", root / "opt/libc/libc.so.6")
    cc(gcc, "int f32(void); int f33(void);\nint main(void) { return f32() + f33(); }\n",
       root / "app/nodeflib", f"-L{root}/opt/c", "-lk", f"-L{root}/{TRIPLET_DIR}", "-ld",
       "-Wl,-z,nodefaultlib", "-Wl,--disable-new-dtags", "-Wl,-rpath,/opt/libc")
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True)
    return root


def test_cache_hwcaps_entries_best_first_every_variant_kept(cacheroot: Path) -> None:
    c = Resolver(RootFS(cacheroot)).closure(["/app/viacache"])
    base, v2, v3 = ("/opt/c/libhc.so.1", "/opt/c/glibc-hwcaps/x86-64-v2/libhc.so.1",
                    "/opt/c/glibc-hwcaps/x86-64-v3/libhc.so.1")
    assert {base, v2, v3, "/opt/c/libv3dep.so"} <= loaded(c)
    # the loader's pick (the best subdirectory x86-64 knows) is the one the name maps to;
    # the others are kept as what another CPU would load
    assert [n.chain for n in c.files[v3]] == [("/app/viacache", "libhc.so.1")]
    assert all(n.chain[-1] in (v2, base) for n in c.files[v2] + c.files[base])
    assert c.missing == [] and c.errors == []
    assert all(c.cpu_only(p) for p in (base, v2, v3, "/opt/c/libv3dep.so"))
    agrees(cacheroot, "/app/viacache", c)  # v3, v2 or the plain one: each CPU's is kept
    # the real loader, told it may use x86-64-v2 only, maps the v2 entry of the cache
    found, _ = real_loader(cacheroot, "/app/viacache", args=("--glibc-hwcaps-mask",
                                                            "x86-64-v2"))
    assert found & {base, v2, v3} <= {v2, base}


def test_nodeflib_skips_default_dirs_in_the_cache_not_the_cache(cacheroot: Path) -> None:
    c = Resolver(RootFS(cacheroot)).closure(["/app/nodeflib"])
    assert "/opt/c/libk.so" in loaded(c)
    assert [m.name for m in c.missing] == ["libd.so"]
    agrees(cacheroot, "/app/nodeflib", c)


def test_compat_cache_hwcaps_entries_are_not_used_as_the_loader_does_not(
        cacheroot: Path, tmp_path: Path) -> None:
    """In the compat layout the loader reads the hwcaps names at other bytes than ldconfig
    wrote them, so it only ever maps the plain entry."""
    root = tmp_path / "img"
    shutil.copytree(cacheroot, root, symlinks=True)
    subprocess.run(["ldconfig", "-r", str(root), "-c", "compat"], check=True,
                   capture_output=True)
    c = Resolver(RootFS(root)).closure(["/app/viacache"])
    assert "/opt/c/libhc.so.1" in loaded(c)
    assert not any("glibc-hwcaps" in p for p in c.files)
    agrees(root, "/app/viacache", c)
