"""Lookups through an image's symlinks cost work bounded by the path_walk budget.

The kernel lets one lookup cross 40 symlinks, each naming up to 4,096 bytes: 1,600
components apiece here, so every lookup through the chain walks 64,000 components. A
package list naming 3,000 paths under the chain made `tracer init` walk 190 million
components (minutes, from a layer of 200 KB); the same holds for package granularity
and for the keep-list of every path a traced app touches under the chain. Each lookup
also joined every component before it anew (the square of a long name's length).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from image_builders import M, docker_archive, layer, run_tracer

from tracer.budgets import BudgetExceeded
from tracer.image.model import Entry, FlatImage
from tracer.rootfs import IndexRootFS

DEPTH = 800  # the chain's links climb a directory this deep and back down again
LINKS = 40  # Linux's MAXSYMLINKS
NEEDED = 3000


def _chain_members() -> list[M]:
    members = [M("/".join(["d"] * i), kind="dir", mode=0o755) for i in range(1, DEPTH + 1)]
    for i in range(LINKS):  # l0 -> d/d/.../d/../../..../l1 -> ... -> l40, a directory
        target = "/" + "d/" * DEPTH + "../" * DEPTH + f"l{i + 1}"
        assert len(target) <= 4096
        members.append(M(f"l{i}", kind="symlink", linkname=target))
    members.append(M(f"l{LINKS}", kind="dir", mode=0o755))
    return members


def test_a_package_list_naming_thousands_of_paths_through_the_chain(tmp_path: Path):
    # `tracer init` reads the image's dpkg database to suggest companion programs: every
    # path a .list file names is looked up in the image (no engine needed for this input).
    # Each in its own directory: the files of one directory share one lookup of it.
    listed = "".join(f"/l0/x{i}/f\n" for i in range(NEEDED)).encode()
    archive = docker_archive(tmp_path / "hostile.tar", [layer(
        *_chain_members(), M("bin", kind="dir", mode=0o755),
        M("bin/app", data=b"#!/bin/app\n", mode=0o755),
        M("var/lib/dpkg/info", kind="dir", mode=0o755),
        M("var/lib/dpkg/status", data=b"Package: evil\nStatus: install ok installed\n"
                                      b"Version: 1\nArchitecture: all\n\n"),
        M("var/lib/dpkg/info/evil.list", data=b"/bin/app\n" + listed))],
        config_extra={"config": {"Entrypoint": ["/bin/app"]}})
    res = run_tracer(["init", f"docker-archive:{archive}", "-o", str(tmp_path / "p.yaml")],
                     env={"TRACER_WORKDIR": str(tmp_path)}, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "path_walk budget" in res.stderr and "--budget path_walk=" in res.stderr


def _entry(path: str, kind: str = "dir", link: str = "") -> Entry:
    return Entry(path, kind, 0o755, 0, 0, 0.0, 0, link, {}, 0)


class CountingIndexRootFS(IndexRootFS):
    ops = 0

    def _raw_lstat(self, path):  # type: ignore[no-untyped-def]
        self.ops += 1
        return super()._raw_lstat(path)


def test_lookups_through_the_chain_stop_at_the_budget_naming_it():
    entries = {"/": _entry("/")}
    for m in _chain_members():
        entries["/" + m.name] = _entry("/" + m.name, m.kind, m.linkname)
    fs = CountingIndexRootFS(FlatImage(entries=entries, root=None, config={},
                                       source_digest=""), walk_limit=1_000_000)
    with pytest.raises(BudgetExceeded) as err:
        for i in range(1000):
            fs.resolve(f"/l0/x{i}")
    assert err.value.name == "path_walk" and err.value.exit_code == 2
    assert fs.ops < 1_000_000 + 100_000  # the budget, then one lookup's worth at most


def test_each_caller_gets_the_path_walk_limit_it_asks_for():
    """FlatImage.rootfs() cached the RootFS of its first call, limit and all: a later
    caller's budget (`tracer ldd --budget path_walk=N`) was silently ignored."""
    entries = {"/": _entry("/")}
    previous = "/target"
    entries[previous] = _entry(previous)
    for i in range(30):  # /hop29 -> /hop28 -> ... -> /hop0 -> /target: 31 steps to walk
        entries[f"/hop{i}"] = _entry(f"/hop{i}", "symlink", previous)
        previous = f"/hop{i}"
    flat = FlatImage(entries=entries, root=None, config={}, source_digest="")
    assert flat.rootfs().resolve("/hop29").path == "/target"
    with pytest.raises(BudgetExceeded) as err:
        flat.rootfs(10).resolve("/hop29")
    assert err.value.name == "path_walk"
    assert flat.rootfs(1000).resolve("/hop29").path == "/target"
    assert flat.rootfs(10) is flat.rootfs(10)  # one RootFS (and its caches) per limit
