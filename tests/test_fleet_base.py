"""A fleet's shared base, on hand-made images: the base layer and each image's own.

Two images stand on the same two lowest layers; each keeps part of them and has layers of
its own (one rewrites a base file, deletes another, replaces a directory). Their outputs
are written on one shared base and read back with the same reader as any input: each
shows exactly what it keeps as its original has it, plus the base files the other keeps
(the price), and never a file its original did not have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from image_builders import M, content, docker_archive, flatten_ref, layer

from tracer.errors import BadInput
from tracer.image import flatten, open_image, parse_reference, write_image
from tracer.image.layercache import CACHE_ENV, chain_ids, find_seed, load_seed, seed_dir
from tracer.image.layerwrite import closed_paths
from tracer.image.sharedbase import SharedBase, index_prefix, needs, same_entry

REPO = Path(__file__).resolve().parent.parent

BASE = [
    layer(M("etc", "dir", mtime=1), M("etc/os-release", data=b"debian\n"),
          M("etc/passwd", data=b"root:x:0:0\n"), M("etc/motd", data=b"hello\n"),
          M("usr", "dir"), M("usr/lib", "dir"),
          M("usr/lib/libc.so.6", data=b"C" * 5000, mode=0o755),
          M("usr/lib/libz.so.1", data=b"Z" * 3000, mode=0o755),
          M("usr/lib/libssl.so.3", data=b"S" * 4000, mode=0o755),
          M("usr/lib/libc-link.so", "hardlink", linkname="usr/lib/libc.so.6", mode=0o755),
          M("usr/share", "dir"), M("usr/share/zoneinfo", "dir"),
          M("usr/share/zoneinfo/UTC", data=b"TZif"),
          M("opt", "dir"), M("opt/tree", "dir"), M("opt/tree/leaf", data=b"leaf"),
          M("bin", "symlink", linkname="usr/bin"), M("usr/bin", "dir"),
          M("usr/bin/sh", data=b"#!sh" * 100, mode=0o755)),
    layer(M("etc", "dir", mtime=1), M("etc/ssl", "dir"), M("etc/ssl/certs.pem", data=b"CA" * 800)),
]


def _apps(tmp: Path) -> dict[str, Path]:
    """Two apps on BASE: `one` plainly adds its program; `two` also rewrites /etc/passwd,
    deletes /etc/motd and /usr/lib/libz.so.1, and replaces the directory /opt/tree with
    a file."""
    one = layer(M("usr/bin/one", data=b"1" * 2000, mode=0o755))
    two = layer(M("usr/bin/two", data=b"2" * 2500, mode=0o755),
                M("etc/passwd", data=b"root:x:0:0\ntwo:x:1:1\n"),
                M("etc/.wh.motd"), M("usr/lib/.wh.libz.so.1"),
                M("opt/.wh.tree"), M("opt/tree", data=b"a file now"))
    tmp.mkdir(parents=True, exist_ok=True)
    return {"one": docker_archive(tmp / "one.tar", [*BASE, one]),
            "two": docker_archive(tmp / "two.tar", [*BASE, two])}


KEEP = {
    "one": ["/usr/bin/one", "/usr/lib/libc.so.6", "/usr/lib/libz.so.1", "/etc/passwd",
            "/etc/motd", "/opt/tree/leaf", "/usr/share/zoneinfo/UTC"],
    "two": ["/usr/bin/two", "/usr/lib/libc.so.6", "/usr/lib/libssl.so.3", "/etc/passwd",
            "/etc/ssl/certs.pem", "/opt/tree"],
}


def _seed(tmp: Path, archive: Path, cache: Path):
    with open_image(parse_reference(f"docker-archive:{archive}"), tmp / "seed-src") as image:
        return index_prefix(image, 2, seed_dir(cache, [x.diff_id for x in image.layers[:2]]))


def _base(seed, flats: dict, order: list[str]) -> SharedBase:
    union: set[str] = set()
    for name in order:
        union.update(needs(flats[name], KEEP[name], seed.flat, 2))
    return SharedBase(seed.flat, 2, closed_paths(seed.flat, union))


def test_a_seeded_index_is_the_full_index(tmp_path: Path, monkeypatch) -> None:
    """An image read on top of the batch's index of its lowest layers gives the index,
    entry by entry and byte by byte, that reading all of it gives."""
    apps = _apps(tmp_path / "in")
    cache = tmp_path / "cache"
    seed = _seed(tmp_path, apps["one"], cache)
    assert seed.chain_id == chain_ids(seed.diff_ids)[-1]
    for name, archive in apps.items():
        ref = parse_reference(f"docker-archive:{archive}")
        full = flatten_ref(str(ref), tmp_path / f"full-{name}")
        monkeypatch.setenv(CACHE_ENV, str(cache))
        with open_image(ref, tmp_path / f"s-{name}") as image:
            found = find_seed(image.layers)
            assert found is not None and found.diff_ids == seed.diff_ids
            seeded = flatten(image, tmp_path / f"s-{name}" / "root", seed=found)
        monkeypatch.delenv(CACHE_ENV)
        assert seeded.entries == full.entries
        assert seeded._groups == full._groups
        assert seeded.expanded == full.expanded
        for path, entry in full.entries.items():
            if entry.kind == "file":
                assert content(seeded, path) == content(full, path), path


def test_outputs_share_one_base_and_show_what_their_originals_have(tmp_path: Path) -> None:
    apps = _apps(tmp_path / "in")
    seed = _seed(tmp_path, apps["one"], tmp_path / "cache")
    flats = {n: flatten_ref(f"docker-archive:{a}", tmp_path / f"f-{n}") for n, a in apps.items()}
    # what each keeps of the base: `two` rewrote /etc/passwd and replaced /opt/tree
    assert "/etc/passwd" in needs(flats["one"], KEEP["one"], seed.flat, 2)
    assert "/etc/passwd" not in needs(flats["two"], KEEP["two"], seed.flat, 2)
    assert "/opt/tree" not in needs(flats["two"], KEEP["two"], seed.flat, 2)
    base = _base(seed, flats, ["one", "two"])
    digests = set()
    for name, flat in flats.items():
        out = tmp_path / f"{name}.tar"
        written = write_image(flat, KEEP[name], parse_reference(f"docker-archive:{out}"),
                              workdir=tmp_path / "w", comment="fleet test", base=base)
        assert len(written.layers) == 2
        digests.add(written.layers[0].diff_id)
        back = flatten_ref(f"docker-archive:{out}", tmp_path / f"back-{name}")
        placed = base.place(flat, KEEP[name])
        kept = set(closed_paths(flat, KEEP[name]))
        shown = set(back.entries) - {"/"}
        # everything it keeps, as its original has it
        for p in kept:
            assert same_entry(back.entries[p], flat.entries[p]) or \
                flat.entries[p].kind == "hardlink", p
            if flat.entries[p].kind == "file":
                assert content(back, p) == content(flat, p), p
        # and beyond that only the base's files its original has alike (the price)
        assert shown - kept == set(placed.extra), name
        for p in placed.extra:
            assert same_entry(back.entries[p], flat.entries[p])
    assert len(digests) == 1  # one base layer, byte for byte, under both
    # an OCI layout holds the same base blob, and reads back as the archive does
    layout = tmp_path / "layout"
    written = write_image(flats["two"], KEEP["two"], parse_reference(f"oci:{layout}:two"),
                          workdir=tmp_path / "w", comment="fleet test", base=base)
    assert written.layers[0].diff_id in digests
    assert (layout / "blobs" / "sha256" / written.layers[0].diff_id[7:]).is_file()
    from_layout = flatten_ref(f"oci:{layout}:two", tmp_path / "back-layout")
    from_archive = flatten_ref(f"docker-archive:{tmp_path}/two.tar", tmp_path / "back-two")
    assert from_layout.entries == from_archive.entries
    two = flatten_ref(f"docker-archive:{tmp_path}/two.tar", tmp_path / "again")
    assert "/etc/motd" not in two.entries and "/usr/lib/libz.so.1" not in two.entries
    assert two.entries["/opt/tree"].kind == "file"
    assert content(two, "/etc/passwd").endswith(b"two:x:1:1\n")
    one = flatten_ref(f"docker-archive:{tmp_path}/one.tar", tmp_path / "again1")
    assert "/usr/lib/libssl.so.3" in one.entries  # kept for two: the price one pays
    assert "/usr/bin/two" not in one.entries


def test_a_base_that_lacks_a_kept_path_is_refused(tmp_path: Path) -> None:
    apps = _apps(tmp_path / "in")
    seed = _seed(tmp_path, apps["one"], tmp_path / "cache")
    flats = {n: flatten_ref(f"docker-archive:{a}", tmp_path / f"f-{n}") for n, a in apps.items()}
    base = _base(seed, flats, ["two"])
    with pytest.raises(BadInput, match="the shared base lacks .*'/etc/motd'"):
        base.place(flats["one"], KEEP["one"])


_DIGEST = """
import sys
from pathlib import Path
from tracer.image.layercache import load_seed
from tracer.image.layerwrite import closed_paths
from tracer.image.sharedbase import SharedBase
seed = load_seed(Path(sys.argv[1]))
paths = sys.argv[2].split(",")
print(SharedBase(seed.flat, 2, closed_paths(seed.flat, paths)).plan().digest().diff_id)
"""


def test_the_base_digest_changes_with_the_union_only(tmp_path: Path) -> None:
    """Same union: same digest, whatever the order of the jobs or the host's time zone
    (computed in fresh interpreters under two zones); another union: another digest."""
    apps = _apps(tmp_path / "in")
    cache = tmp_path / "cache"
    seed = _seed(tmp_path, apps["one"], cache)
    seed_file = seed_dir(cache, seed.diff_ids) / "seed.pickle"
    flats = {n: flatten_ref(f"docker-archive:{a}", tmp_path / f"f-{n}") for n, a in apps.items()}
    forward = _base(seed, flats, ["one", "two"])
    backward = _base(seed, flats, ["two", "one"])
    assert forward.paths == backward.paths
    digest = forward.plan().digest().diff_id
    assert backward.plan().digest().diff_id == digest

    def digest_in(zone: str, paths: list[str]) -> str:
        env = {**os.environ, "TZ": zone, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", _DIGEST, str(seed_file), ",".join(paths)],
                              capture_output=True, text=True, env=env, check=True)
        return done.stdout.strip()

    assert digest_in("Pacific/Kiritimati", list(reversed(forward.paths))) == digest
    assert digest_in("America/Los_Angeles", forward.paths) == digest
    one_only = _base(seed, flats, ["one"])
    assert one_only.plan().digest().diff_id != digest
    assert load_seed(seed_file).diff_ids == seed.diff_ids
    assert json.dumps(seed.diff_ids)  # plain strings: what a base descriptor records
