#!/usr/bin/env python3
"""Benchmark: tracer's static resolver against pax-utils' lddtree on a whole image root.

Resolves the dependencies of every regular ELF file of ROOT (default: the bookworm fixture
root) with both tools in the same run, prints both times and compares the answers per file
(sets of files mapped, as real in-image paths, and names not found). lddtree is pax-utils'
Python implementation (/usr/bin/lddtree, the `lddtree -R ROOT` algorithm), loaded as a
module so both are timed in one process without interpreter start-up noise; its own
parse cache (functools.lru_cache) is left on, as in a normal run.

Target: tracer at least as fast, same answers. Where they differ, the image's own loader
is the judge (tests/test_static_oracle.py checks tracer against it for every file of the
bookworm root); known lddtree gaps: it does not read ld.so.cache, and it expands `$ORIGIN`
in RUNPATH to a host path that it then prefixes with ROOT again (glibc's gconv modules).
With --strict, exit 1 when any answer differs.

    python scripts/bench_static.py [ROOT] [--lddtree /usr/bin/lddtree] [--show N] [--strict]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.rootfs import RootFS  # noqa: E402
from tracer.static import Resolver  # noqa: E402

DEFAULT_ROOT = "/var/cache/tracer/rootfs-bookworm"
Answer = tuple[frozenset[str], frozenset[str]]


def elf_files(root: Path) -> list[str]:
    """In-image paths of every regular ELF file under root (symlinks not followed)."""
    out = []
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                with open(p, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        out.append("/" + os.path.relpath(p, root))
            except OSError:
                continue
    return sorted(out)


def run_tracer(root: Path, files: list[str]) -> dict[str, Answer]:
    resolver = Resolver(RootFS(root))
    out: dict[str, Answer] = {}
    for f in files:
        c = resolver.closure([f])
        mapped = frozenset(
            p for p, ns in c.files.items() if any(n.kind in ("needed", "interp") for n in ns)
        )
        out[f] = (mapped, frozenset(m.name for m in c.missing))
    return out


def load_lddtree(path: str):
    loader = importlib.machinery.SourceFileLoader("lddtree_mod", path)
    spec = importlib.util.spec_from_loader("lddtree_mod", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def run_lddtree(mod, root: Path, files: list[str]) -> dict[str, tuple[set[str], set[str]]]:
    """lddtree's answers, as host paths (converted to in-image paths after timing)."""
    rootstr = str(root).rstrip("/") + "/"
    ldpaths = mod.LoadLdpaths(rootstr)
    out = {}
    for f in files:
        host = rootstr + f.lstrip("/")
        try:
            real = mod.readlink(host, rootstr, prefixed=True)
            elf = mod.ParseELF(real, rootstr, None, "", ldpaths, display=host)
        except Exception:  # noqa: BLE001 - lddtree raises on non-loadable files; count as empty
            out[f] = (set(), set())
            continue
        found = {lib["path"] for lib in elf["libs"].values() if lib.get("path")}
        missing = {name for name, lib in elf["libs"].items() if not lib.get("path")}
        out[f] = (found, missing)
    return out


def to_image(fs: RootFS, root: Path, host_paths: set[str]) -> frozenset[str]:
    prefix = str(root).rstrip("/")
    return frozenset(fs.resolve(p[len(prefix):] or "/").path for p in host_paths)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=DEFAULT_ROOT)
    ap.add_argument("--lddtree", default="/usr/bin/lddtree")
    ap.add_argument("--show", type=int, default=10, help="differences to print")
    ap.add_argument("--strict", action="store_true", help="exit 1 when answers differ")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()

    t = time.perf_counter()
    files = elf_files(root)
    t_scan = time.perf_counter() - t
    print(f"root {root}: {len(files)} ELF files (scan {t_scan:.2f}s, not counted)")

    t = time.perf_counter()
    ours = run_tracer(root, files)
    t_ours = time.perf_counter() - t
    print(f"tracer static resolver: {t_ours:.3f}s")

    if not os.path.exists(args.lddtree):
        print(f"{args.lddtree} not found (Debian package pax-utils); no comparison")
        return 0
    mod = load_lddtree(args.lddtree)
    t = time.perf_counter()
    raw = run_lddtree(mod, root, files)
    t_lddtree = time.perf_counter() - t
    print(f"pax-utils lddtree:      {t_lddtree:.3f}s")
    print(f"speed-up: {t_lddtree / t_ours:.2f}x" if t_ours else "")

    fs = RootFS(root)
    diffs = []
    for f in files:
        found, missing = raw[f]
        theirs: Answer = (to_image(fs, root, found), frozenset(missing))
        if theirs != ours[f]:
            diffs.append((f, ours[f], theirs))
    print(f"answers: {len(files) - len(diffs)} same, {len(diffs)} different")
    for f, (om, ox), (tm, tx) in diffs[: args.show]:
        print(f"  {f}: only tracer {sorted(om - tm)} only lddtree {sorted(tm - om)}"
              f" missing tracer {sorted(ox)} lddtree {sorted(tx)}")
    return 1 if diffs and args.strict else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
