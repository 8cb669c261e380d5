"""How the loaders read their preload lists: LD_PRELOAD and glibc's /etc/ld.so.preload.

The rules are rtld.c's (glibc 2.36, `handle_preload_list` and the ld.so.preload reader in
`dl_main`) and musl's `load_preload`; tests/test_static_gcc.py and test_static_musl.py
check the same cases against the real loaders in a chroot. Here: the parsers alone, their
corner cases, and the bounds on a hostile file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.rootfs import RootFS
from tracer.static import Closure, Resolver
from tracer.static.glibc import MAX_PRELOAD_BYTES, parse_ld_so_preload, split_ld_preload
from tracer.static.musl import MuslLoader


@pytest.mark.parametrize("value, names", [
    ("liba.so", ["liba.so"]),
    ("liba.so:libb.so libc.so", ["liba.so", "libb.so", "libc.so"]),
    ("::liba.so  :", ["liba.so"]),
    ("liba.so\tlibb.so", ["liba.so\tlibb.so"]),  # only ' ' and ':' separate
    ("liba.so\nlibb.so", ["liba.so\nlibb.so"]),
    ("/" * 4095 + " libb.so", ["/" * 4095, "libb.so"]),
    ("/" * 4096 + " libb.so", ["libb.so"]),  # SECURE_PATH_LIMIT: skipped
    ("", []),
])
def test_glibc_splits_ld_preload_at_spaces_and_colons(value: str, names: list[str]) -> None:
    assert split_ld_preload(value) == names


@pytest.mark.parametrize("data, names", [
    (b"liba.so\n", ["liba.so"]),
    (b"liba.so libb.so\tlibc.so:libd.so\nlibe.so", ["liba.so", "libb.so", "libc.so",
                                                     "libd.so", "libe.so"]),
    (b"liba.so # libb.so\nlibc.so\n", ["liba.so", "libc.so"]),
    (b"# only a comment\n", []),
    (b"liba.so\r\n", ["liba.so\r"]),  # a carriage return is part of the name
    (b"", []),
    (b"liba.so", ["liba.so"]),
    (b"liba.so\0libb.so libc.so\0x", ["liba.so", "libc.so"]),  # NUL ends the string ...
    # ... rtld.c's comment loop never advances its start: after the first comment it looks
    # for `#` only in the first (size - end of that comment) bytes, and blanks at most that
    # many (checked against ld.so in tests/test_static_gcc.py)
    (b"# a longer first comment\n#liba.so\n", ["#liba.so"]),
    (b"#c1\nliba.so #c2\n", ["liba.so", "c2"]),
    (b"#c\nliba.so #libb.so\n", ["liba.so", "o"]),
])
def test_glibc_reads_ld_so_preload_as_rtld_does(data: bytes, names: list[str]) -> None:
    assert parse_ld_so_preload(data) == names


def test_musl_splits_ld_preload_at_whitespace_and_colons(tmp_path: Path) -> None:
    from tracer.budgets import DEFAULT
    from tracer.static.search import DirSearch, Work

    loader = MuslLoader(DirSearch(RootFS(tmp_path), "/", Work(DEFAULT)),
                        {"LD_PRELOAD": "liba.so\tlibb.so\nlibc.so\vlibd.so:libe.so  "})
    assert loader.preloads(Closure()) == [
        (n, "LD_PRELOAD") for n in ("liba.so", "libb.so", "libc.so", "libd.so", "libe.so")]


def test_a_megabyte_of_comments_is_read_in_linear_time() -> None:
    """rtld.c rescans from the file's start after each comment (quadratic, 10^11 steps for
    this file, were its window not shrinking); the parser resumes where the last comment
    ended. Comment k (at offset 2k) is found while 2k < size - k*k: the first 1,023 are
    blanked, every later `#` is a name."""
    n = MAX_PRELOAD_BYTES // 2 - 8
    data = b"#\n" * n + b"liba.so\n"
    k = 1
    while 2 * k < len(data) - k * k:
        k += 1
    assert k == 1023
    assert parse_ld_so_preload(data) == ["#"] * (n - k) + ["liba.so"]


def test_a_preload_file_over_the_cap_is_an_error_not_read(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.preload").write_bytes(b"liba.so " * (MAX_PRELOAD_BYTES // 8 + 1))
    (tmp_path / "app").mkdir()
    (tmp_path / "app/data").write_text("not a program\n")
    r = Resolver(RootFS(tmp_path))
    assert r.glibc.preloads(c := r.closure([])) == []
    assert c.errors == ["/etc/ld.so.preload: larger than 1 MiB; not read"]
