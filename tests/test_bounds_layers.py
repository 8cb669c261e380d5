"""Hostile layers cost bounded work: each is refused with exit 2 by the budget it would
exceed, named with how to raise it, in bounded memory, and leaves nothing in TMPDIR.

The exit-code cases run the real command (`python -m tracer ldd oci:...`) in a child
process whose own peak RSS is measured; the rest flatten in-process with small budgets.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from hostile_inputs import MiB, oci_layout_of, one_file_tar
from image_builders import M, content, docker_archive, layer, run_tracer

from tracer.budgets import DEFAULT, BudgetExceeded, Budgets
from tracer.image import flatten, open_image, parse_reference

# `tracer ldd` of a tiny image peaks well under this; each case below is measured against it
# (before these budgets, the deep-names case alone took 2.5 GB).
MAX_RSS_MB = 200


def _ldd(tmp_path: Path, ref: str) -> tuple[int, str, float]:
    """Run `tracer ldd REF` with a private TMPDIR; assert it leaves nothing there."""
    private = tmp_path / "tmpdir"
    private.mkdir()
    done = run_tracer(["ldd", ref], env={"TMPDIR": str(private),
                                         "TRACER_WORKDIR": str(private)})
    assert os.listdir(private) == [], "tracer left files behind in TMPDIR"
    return done.returncode, done.stderr, done.max_rss_mb


def _flatten(tmp_path: Path, layers: list[bytes], budgets: Budgets = DEFAULT):
    tmp_path.mkdir(exist_ok=True)
    archive = docker_archive(tmp_path / "in.tar", layers)
    with open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "work") as src:
        return flatten(src, tmp_path / "work" / "root", budgets=budgets)


# ---------------------------------------------------------------- compression bombs


def test_gzip_bomb_is_refused_by_the_expansion_budget(tmp_path: Path) -> None:
    # 300 MiB that gzip squeezes ~180 times: 100 times the blob is the binding budget
    chunk = os.urandom(4096) + bytes(MiB - 4096)
    layout = oci_layout_of(tmp_path / "oci",
                           [(one_file_tar("bomb", 300 * MiB, chunk), "gzip")])
    code, err, rss = _ldd(tmp_path, f"oci:{layout}")
    assert code == 2, err
    assert "layer 0" in err and "decompresses to more than 100 times its" in err
    assert "over the expansion budget of 100" in err
    assert "--budget expansion=N" in err
    assert rss < MAX_RSS_MB


def test_zstd_bomb_is_refused_by_the_expansion_floor(tmp_path: Path) -> None:
    # 1 GiB of zeros is 32 KB of zstd: the 64 MiB floor is what binds
    layout = oci_layout_of(tmp_path / "oci",
                           [(one_file_tar("bomb", 1 << 30, bytes(MiB)), "zstd")])
    assert sum(p.stat().st_size for p in (layout / "blobs").rglob("*")) < MiB
    code, err, rss = _ldd(tmp_path, f"oci:{layout}")
    assert code == 2, err
    assert "layer 0" in err and "decompresses to more than 64MiB" in err
    assert "over the expansion_floor budget of 64MiB" in err
    assert "--budget expansion_floor=N" in err
    assert rss < MAX_RSS_MB


def test_a_layer_within_its_budgets_is_read_whole(tmp_path: Path) -> None:
    """The budgets refuse bombs, not big layers: 40 MiB from a small blob is under the floor."""
    layout = oci_layout_of(tmp_path / "oci",
                           [(one_file_tar("zeros", 40 * MiB, bytes(MiB)), "gzip")])
    with open_image(parse_reference(f"oci:{layout}"), tmp_path / "work") as src:
        flat = flatten(src, tmp_path / "work" / "root")
    assert flat.entries["/zeros"].size == 40 * MiB


def test_image_bytes_budget_counts_all_layers_together(tmp_path: Path) -> None:
    one = layer(M("a", data=os.urandom(300_000)))
    two = layer(M("b", data=os.urandom(300_000)))
    budgets = Budgets(image_bytes=500_000)
    _flatten(tmp_path / "ok", [one], budgets)  # one layer fits
    with pytest.raises(BudgetExceeded, match=r"layer 1 .*the image's layers decompress to "
                       r"more than .* together: over the image_bytes budget"):
        _flatten(tmp_path / "over", [one, two], budgets)
    assert not (tmp_path / "over" / "work" / "root").exists()


def test_layer_count_budget(tmp_path: Path) -> None:
    layers = [layer(M(f"f{i}", data=b"x")) for i in range(3)]
    with pytest.raises(BudgetExceeded, match=r"3 layers: over the layers budget of 2"):
        _flatten(tmp_path, layers, Budgets(layers=2))


# ---------------------------------------------------------------- names and entries


def _deep_dirs_layer(count: int, length: int) -> bytes:
    """`count` directories whose names are `length` characters of `a/a/a...`: every one
    implies length/2 parent directories, each of them a path of the image."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(count):
            name = f"{i:03d}/" + "a/" * ((length - 4) // 2)
            ti = tarfile.TarInfo(name[:length].rstrip("/"))
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
    return buf.getvalue()


def test_deep_long_names_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    """400 directories with 4,090-character names in a 20 KB layer: they imply 818,000
    paths of 2 KB on average (1.6 GB of path text); refused by index_bytes, not swapped."""
    data = _deep_dirs_layer(400, 4090)
    blob = gzip.compress(data, 9)
    assert len(blob) < 40_000
    layout = oci_layout_of(tmp_path / "oci", [(iter([data]), "gzip")])
    code, err, rss = _ldd(tmp_path, f"oci:{layout}")
    assert code == 2, err
    assert "the image's paths add up to more than 512MiB" in err
    assert "over the index_bytes budget" in err and "--budget index_bytes=N" in err
    assert rss < MAX_RSS_MB


def test_deep_long_names_flatten_exactly_when_the_budget_allows(tmp_path: Path) -> None:
    flat = _flatten(tmp_path, [_deep_dirs_layer(5, 4090)])
    depth = (4090 - 4) // 2
    assert len(flat.entries) == 1 + 5 * (depth + 1)
    deepest = "/000/" + "/".join(["a"] * depth)
    assert flat.entries[deepest].kind == "dir" and len(deepest) == 4090


def test_path_length_counts_the_real_path_behind_symlinks(tmp_path: Path) -> None:
    """A short member name under a symlink to a long directory is a long real path."""
    long_dir = "d" * 4000
    with pytest.raises(BudgetExceeded, match=r"member 'l/e+': its path in the image .* is "
                       r"\d+ bytes long: over the path_length budget of 4KiB"):
        _flatten(tmp_path, [layer(M(long_dir, "dir"), M("l", "symlink", linkname=long_dir),
                                  M("l/" + "e" * 200 + "/f", data=b""))])


def test_entries_budget_per_layer_and_per_image(tmp_path: Path) -> None:
    small = Budgets(entries=100)
    with pytest.raises(BudgetExceeded, match=r"layer 0 .*the layer has more than 100 members: "
                       r"over the entries budget of 100"):
        _flatten(tmp_path / "layer", [layer(*[M(f"f{i}", data=b"") for i in range(101)])],
                 small)
    halves = [layer(*[M(f"{n}{i}", data=b"") for i in range(60)]) for n in "ab"]
    with pytest.raises(BudgetExceeded, match=r"layer 1 .*the image has more than 100 paths"):
        _flatten(tmp_path / "image", halves, small)
    # whiteouts free their paths: the same 120 names, 60 of them hidden, fit
    hide = layer(*[M(f".wh.a{i}") for i in range(60)])
    flat = _flatten(tmp_path / "freed", [halves[0], hide, halves[1]], small)
    assert len(flat.entries) == 61


def _symlink_walk_layer(rounds: int) -> bytes:
    """A symlink whose target walks 1,600 components, then members below it; with
    `replace`, a directory is replaced between them, which forgets cached resolutions."""
    target = "/".join(["d", ".."] * 800) + "/t"
    members = [M("d", "dir"), M("t", "dir"), M("s", "symlink", linkname=target)]
    for i in range(rounds):
        members.append(M(f"s/f{i}", data=b""))
    return layer(*members)


def test_symlinked_parents_are_resolved_once(tmp_path: Path) -> None:
    """2,000 members below a symlink with a 1,600-component target: walking it for each
    member would be 3.2 million steps; resolved once and remembered, it fits in 5,000."""
    flat = _flatten(tmp_path, [_symlink_walk_layer(2000)], Budgets(path_walk=5000))
    assert "/t/f1999" in flat.entries and flat.entries["/s"].kind == "symlink"


def test_symlink_walk_budget_stops_re_resolution(tmp_path: Path) -> None:
    """Replacing a directory forgets what paths resolved to; an image that does it between
    members walks the long target again each time, until the path_walk budget stops it."""
    target = "/".join(["d", ".."] * 800) + "/t"
    members = [M("d", "dir"), M("t", "dir"), M("s", "symlink", linkname=target)]
    for i in range(50):
        members += [M("x", "dir"), M("x", data=b""), M(f"s/f{i}", data=b"")]
    with pytest.raises(BudgetExceeded, match=r"member 's/f\d+': resolving names through the "
                       r"image's symlinks walked more than 20,000 path components: over the "
                       r"path_walk budget of 20000"):
        _flatten(tmp_path, [layer(*members)], Budgets(path_walk=20_000))


def test_repeated_opaque_whiteouts_keep_this_layers_children(tmp_path: Path) -> None:
    many = [M(f"d/f{i}", data=b"") for i in range(500)]
    flat = _flatten(tmp_path, [
        layer(M("d", "dir"), M("d/old", data=b"o")),
        layer(*many, *[M("d/.wh..wh..opq") for _ in range(500)], M("d/sub/.wh..wh..opq")),
    ])
    assert "/d/old" not in flat.entries
    assert sum(1 for p in flat.entries if p.startswith("/d/f")) == 500
    assert content(flat, "/d/f7") == b""


def test_very_deep_tree_is_removed_without_recursion(tmp_path: Path) -> None:
    """2,000 levels deep, then a whiteout of the top: no RecursionError (exit 70)."""
    deep = "/".join(["a"] * 2000)
    flat = _flatten(tmp_path, [layer(M(deep + "/f", data=b"x")), layer(M(".wh.a"),
                                                                       M("b", data=b"b"))])
    assert sorted(flat.entries) == ["/", "/b"]
