"""The correctness oracle: the resolver must agree with the image's own loader.

For every ELF executable and shared library of the bookworm fixture root, the files the
resolver says the loader maps are what that image's loader reports (vdso aside): once
through `ldd` inside a container of tracer-fixture/base:bookworm, once through the image's
ld.so in a chroot of the extracted root.

The loader answers for this host's CPU; the resolver for any CPU the image may run on. So
the comparison is one that holds on every CPU: what the loader maps here is kept, and
anything else kept is marked as mapped on some CPUs only (a glibc-hwcaps, legacy hwcap or
$PLATFORM variant); a name the loader misses here may be found only on other CPUs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prereq import missing as prereq_missing

from tracer.analysis.policy import IMPLICIT_DLOPENS
from tracer.rootfs import RootFS
from tracer.static import Closure, Resolver

ROOTFS = Path("/var/cache/tracer/rootfs-bookworm")

pytestmark = pytest.mark.integration


def _need_rootfs() -> RootFS:
    if not (ROOTFS / "usr/bin").is_dir():
        prereq_missing(f"{ROOTFS} missing; run scripts/setup")
    return RootFS(ROOTFS)


def elf_files(root: Path) -> list[str]:
    """In-image paths of every regular ELF file under `root` (links not followed)."""
    out = []
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    out.append("/" + os.path.relpath(p, root))
    return sorted(out)


def parse_ldd(text: str, fs: RootFS) -> tuple[set[str], set[str]]:
    """(real in-image paths mapped, names not found) from ldd-format output."""
    found, missing = set(), set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("linux-vdso") or "statically linked" in line:
            continue
        if "not a dynamic executable" in line:
            continue
        if "=> not found" in line:
            missing.add(line.split()[0])
            continue
        path = line.split("=>")[1] if "=>" in line else line
        found.add(fs.resolve(path.split("(")[0].strip()).path)
    return found, missing


def mapped(c: Closure) -> set[str]:
    return {p for p, ns in c.files.items() if any(n.kind in ("needed", "interp") for n in ns)}


def disagreement(c: Closure, want: set[str], want_missing: set[str]) -> dict[str, set[str]]:
    """What contradicts the loader's answer on this CPU (module docstring); empty if none."""
    got, got_missing = mapped(c), {m.name for m in c.missing}
    on_some_cpu = {n.chain[-1] for ns in c.files.values() for n in ns if n.cpu and n.chain}
    out = {
        "not kept": want - got,
        "kept, not for any CPU": {p for p in got - want if not c.cpu_only(p)},
        "missing, found here": got_missing - want_missing,
        "found nowhere": want_missing - got_missing - on_some_cpu,
    }
    return {k: v for k, v in out.items() if v}


def test_every_elf_agrees_with_the_image_loader_in_a_chroot() -> None:
    fs = _need_rootfs()
    if os.geteuid() != 0:
        prereq_missing("chroot needs root")
    elves = elf_files(ROOTFS)
    assert len(elves) > 100
    resolver = Resolver(fs)
    diffs = []
    for exe in elves:
        out = subprocess.run(
            ["/lib64/ld-linux-x86-64.so.2", exe], capture_output=True, text=True, cwd="/",
            preexec_fn=lambda: os.chroot(ROOTFS), env={"LD_TRACE_LOADED_OBJECTS": "1"},
            check=False,
        )
        want, want_missing = parse_ldd(out.stdout, fs)
        c = resolver.closure([exe])
        wrong = disagreement(c, want, want_missing)
        if wrong or c.errors:
            diffs.append((exe, wrong, c.errors))
    assert diffs == []


def test_agrees_with_ldd_inside_a_container(docker_client, fixture_image) -> None:
    fs = _need_rootfs()
    image = fixture_image("base")
    elves = elf_files(ROOTFS)
    script = 'for f in "$@"; do echo "== $f"; ldd "$f" 2>&1; done'
    container = docker_client.containers.create(
        image, ["/bin/sh", "-c", script, "sh", *elves], network_mode="none"
    )
    try:
        container.start()
        assert container.wait(timeout=600)["StatusCode"] in (0, 1)
        logs = container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)
    sections = logs.split("== ")[1:]
    assert len(sections) == len(elves)
    resolver = Resolver(fs)
    diffs = []
    for sec in sections:
        exe, _, body = sec.partition("\n")
        want, want_missing = parse_ldd(body, fs)
        wrong = disagreement(resolver.closure([exe]), want, want_missing)
        if wrong:
            diffs.append((exe, wrong))
    assert diffs == []


def test_implicit_dlopen_of_libgcc_s_is_added_only_on_request() -> None:
    """glibc dlopens libgcc_s at a thread's exit; a minimizer must keep it, ldd never shows it."""
    fs = _need_rootfs()
    plain = Resolver(fs).closure(["/usr/bin/ls"])
    assert not any(p.endswith("/libgcc_s.so.1") for p in plain.files)
    wide = Resolver(fs, dlopens=IMPLICIT_DLOPENS).closure(["/usr/bin/ls"])
    gcc_s = [p for p in wide.files if p.endswith("/libgcc_s.so.1")]
    assert gcc_s and fs.is_file(gcc_s[0])
    assert wide.missing == [] and set(plain.files) < set(wide.files)
