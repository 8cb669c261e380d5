"""musl's loader rules: /etc/ld-musl-ARCH.path, inherited RUNPATH, libc.so built into ld.so.

Programs are built with Debian's musl-gcc (package musl-tools) into an image-like root
holding musl's real loader; when we are root, musl's own `ld-musl --list` in a chroot of
that root is the oracle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prereq import missing as prereq_missing

from tracer.rootfs import RootFS
from tracer.static import Resolver

MUSL_LIBC = Path("/usr/lib/x86_64-linux-musl/libc.so")


def _cc(*args: str) -> None:
    done = subprocess.run(["musl-gcc", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def muslroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("musl-gcc") is None or not MUSL_LIBC.exists():
        prereq_missing("musl-tools not installed; run scripts/setup")
    tmp = tmp_path_factory.mktemp("musl")
    root = tmp / "root"
    (root / "usr/lib/x86_64-linux-musl").mkdir(parents=True)
    shutil.copy2(MUSL_LIBC, root / "usr/lib/x86_64-linux-musl/libc.so")
    os.symlink("x86_64-linux-musl/libc.so", root / "usr/lib/ld-musl-x86_64.so.1")
    os.symlink("usr/lib", root / "lib")
    (root / "etc").mkdir()
    (root / "etc/ld-musl-x86_64.path").write_text("/opt/m\n/usr/lib/x86_64-linux-musl\n")
    for d in ("opt/m", "opt/r", "opt/notinpath", "app"):
        (root / d).mkdir(parents=True)
    src = tmp / "r.c"
    src.write_text("int r(void) { return 0; }\n")
    _cc("-shared", "-fPIC", "-o", str(root / "opt/r/libr.so"), str(src))
    src.write_text("int r(void);\nint m(void) { return r(); }\n")
    _cc("-shared", "-fPIC", "-o", str(root / "opt/m/libm1.so"), str(src),
        f"-L{root}/opt/r", "-lr")
    src.write_text("int m(void);\nint main(void) { return m(); }\n")
    # RUNPATH on the program only: musl (unlike glibc) uses it for libm1.so's libr.so too
    _cc("-o", str(root / "app/prog"), str(src), f"-L{root}/opt/m", "-lm1",
        f"-Wl,-rpath-link,{root}/opt/r", "-Wl,--enable-new-dtags", "-Wl,-rpath,/opt/r")
    src.write_text("int n(void) { return 0; }\n")
    _cc("-shared", "-fPIC", "-o", str(root / "opt/notinpath/libn.so"), str(src))
    src.write_text("int n(void);\nint main(void) { return n(); }\n")
    _cc("-o", str(root / "app/needs-n"), str(src), f"-L{root}/opt/notinpath", "-ln")
    return root


def musl_list(root: Path, exe: str, env: dict[str, str] | None = None,
              loader: str = "/lib/ld-musl-x86_64.so.1") -> tuple[set[str], str]:
    """musl's own answer, run in a chroot as `loader --list exe` (invoked so, musl takes
    `loader` as its own name, which is what PT_INTERP gives it when the kernel starts it)."""
    if os.geteuid() != 0:
        prereq_missing("chroot needs root")
    def enter() -> None:  # chroot, then chdir: relative paths are relative to the image
        os.chroot(root)
        os.chdir("/")

    out = subprocess.run([loader, "--list", exe], capture_output=True, env=env or {},
                         text=True, preexec_fn=enter, check=False)
    fs = RootFS(root)
    found = set()
    for line in out.stdout.splitlines():
        path = line.split("=>")[1] if "=>" in line else line
        found.add(fs.resolve(path.split("(")[0].strip()).path)
    return found, out.stderr


def test_musl_path_file_and_inherited_runpath(muslroot: Path) -> None:
    c = Resolver(RootFS(muslroot)).closure(["/app/prog"])
    mapped = {p for p, ns in c.files.items() if any(n.kind in ("needed", "interp") for n in ns)}
    assert mapped == {"/usr/lib/x86_64-linux-musl/libc.so", "/opt/m/libm1.so", "/opt/r/libr.so"}
    assert c.missing == [] and c.errors == []
    assert "/usr/lib/ld-musl-x86_64.so.1" in c.files and "/lib" in c.files
    found, _ = musl_list(muslroot, "/app/prog")
    assert found == mapped


def test_musl_missing_library(muslroot: Path) -> None:
    c = Resolver(RootFS(muslroot)).closure(["/app/needs-n"])
    assert [(m.name, m.needed_by) for m in c.missing] == [("libn.so", ("/app/needs-n",))]
    _found, err = musl_list(muslroot, "/app/needs-n")
    assert "libn.so" in err
    with_env = Resolver(RootFS(muslroot), {"LD_LIBRARY_PATH": "/opt/notinpath"})
    assert with_env.closure(["/app/needs-n"]).missing == []


def test_musl_expands_nothing_in_ld_library_path(muslroot: Path, tmp_path: Path) -> None:
    """musl takes `$ORIGIN/notinpath` literally: a relative directory named `$ORIGIN`."""
    root = tmp_path / "root"
    shutil.copytree(muslroot, root, symlinks=True)
    (root / "$ORIGIN").mkdir()
    shutil.copytree(root / "opt/notinpath", root / "$ORIGIN/notinpath")
    (root / "app/notinpath").mkdir()  # where a glibc-style expansion would look: empty
    env = {"LD_LIBRARY_PATH": "$ORIGIN/notinpath"}
    c = Resolver(RootFS(root), env).closure(["/app/needs-n"])
    assert "/$ORIGIN/notinpath/libn.so" in c.files and c.missing == []
    found, err = musl_list(root, "/app/needs-n", env)
    assert "/$ORIGIN/notinpath/libn.so" in found and "libn.so" not in err


def test_musl_is_every_libc_name_itself(muslroot: Path, tmp_path: Path) -> None:
    """Alpine links against libc.musl-x86_64.so.1: musl answers it with itself."""
    stub = tmp_path / "stub"
    stub.mkdir()
    src = tmp_path / "s.c"
    src.write_text("int s(void) { return 0; }\n")
    _cc("-shared", "-fPIC", "-Wl,-soname,libc.musl-x86_64.so.1", "-o",
        str(stub / "libc.musl-x86_64.so.1"), str(src))
    root = tmp_path / "root"
    shutil.copytree(muslroot, root, symlinks=True)
    src.write_text("int main(void) { return 0; }\n")
    _cc("-o", str(root / "app/alpine"), str(src), f"-L{stub}", "-Wl,--no-as-needed",
        "-l:libc.musl-x86_64.so.1")
    c = Resolver(RootFS(root)).closure(["/app/alpine"])
    assert c.missing == [] and c.errors == []
    mapped = {p for p, ns in c.files.items() if any(n.kind in ("needed", "interp") for n in ns)}
    assert mapped == {"/usr/lib/x86_64-linux-musl/libc.so"}
    found, err = musl_list(root, "/app/alpine")
    assert found == mapped and err == ""


def test_musl_path_file_is_found_next_to_the_loader(muslroot: Path, tmp_path: Path) -> None:
    """PT_INTERP /usr/lib/ld-musl-x86_64.so.1 reads /usr/etc/ld-musl-x86_64.path."""
    root = tmp_path / "root"
    shutil.copytree(muslroot, root, symlinks=True)
    (root / "usr/etc").mkdir()
    (root / "usr/etc/ld-musl-x86_64.path").write_text("/opt/notinpath:/usr/lib/x86_64-linux-musl")
    src = tmp_path / "p.c"
    src.write_text("int n(void);\nint main(void) { return n(); }\n")
    _cc("-o", str(root / "app/usrprog"), str(src), f"-L{root}/opt/notinpath", "-ln",
        "-Wl,--dynamic-linker=/usr/lib/ld-musl-x86_64.so.1")
    c = Resolver(RootFS(root)).closure(["/app/usrprog", "/app/needs-n"])
    assert [(m.name, m.needed_by) for m in c.missing] == [("libn.so", ("/app/needs-n",))]
    assert "/opt/notinpath/libn.so" in c.files
    found, err = musl_list(root, "/app/usrprog", loader="/usr/lib/ld-musl-x86_64.so.1")
    assert "/opt/notinpath/libn.so" in found and err == ""


def test_musl_ld_preload_is_split_at_whitespace_and_colons(muslroot: Path) -> None:
    """musl's load_preload splits at isspace() and ':' (glibc only at ' ' and ':'); a name
    it cannot load is ignored, never missing."""
    env = {"LD_PRELOAD": "/opt/notinpath/libn.so\t/opt/r/libr.so:libnone.so"}
    c = Resolver(RootFS(muslroot), env).closure(["/app/prog"])
    mapped = {p for p, ns in c.files.items() if any(n.kind in ("needed", "interp") for n in ns)}
    assert mapped == {"/usr/lib/x86_64-linux-musl/libc.so", "/opt/m/libm1.so", "/opt/r/libr.so",
                      "/opt/notinpath/libn.so"}
    assert c.missing == []
    assert c.errors == ["LD_PRELOAD: libnone.so cannot be preloaded: not found (the loader "
                        "ignores it)"]
    found, _ = musl_list(muslroot, "/app/prog", env)
    assert found == mapped
