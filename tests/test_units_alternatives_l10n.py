"""Alternatives links and message catalogs: the two classes package granularity missed.

The alternatives reader is checked against update-alternatives itself on the debootstrap
root scripts/setup makes (its own database, its own answer for each group), and on a
hand-made image with ImageMagick's layout; the catalogs on a hand-made image with
libc-l10n's layout and LANG from the environment.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from image_builders import M, flat_from_layers, layer
from prereq import missing

from tracer.budgets import DEFAULT
from tracer.rootfs import RootFS
from tracer.units import UnitIndex
from tracer.units.alternatives import AlternativeLink, chosen_links, read_alternatives
from tracer.units.l10n import catalog_language, catalogs, language_sources, languages_in_use
from tracer.units.reader import DbReader

BOOKWORM = Path("/var/cache/tracer/rootfs-bookworm")


def test_alternatives_of_a_real_debian_root_agree_with_update_alternatives() -> None:
    admin = BOOKWORM / "var/lib/dpkg/alternatives"
    if not admin.is_dir() or not shutil.which("update-alternatives"):
        missing(f"{admin} (scripts/setup) or update-alternatives is missing")
    links = read_alternatives(DbReader(RootFS(BOOKWORM), DEFAULT))
    groups = sorted(p.name for p in admin.iterdir())
    assert sorted({a.group for a in links}) == groups and "awk" in groups
    for group in groups:
        out = subprocess.run(["update-alternatives", "--root", str(BOOKWORM), "--query", group],
                             capture_output=True, text=True, check=True).stdout
        head = out.split("\n\n", 1)[0].splitlines()
        want = {(group, next(x for x in head if x.startswith("Link: "))[6:])}
        if "Slaves:" in head:
            for line in head[head.index("Slaves:") + 1:]:
                if not line.startswith(" "):
                    break
                name, path = line.split()
                want.add((name, path))
        assert {(a.name, a.link) for a in links if a.group == group} == want, group
    # awk's current choice is mawk: kept when mawk's package is
    index = UnitIndex.build(RootFS(BOOKWORM))
    chosen = chosen_links(index.root, links, lambda p: u if (u := index.unit_of(p)) is not None
                          and u.name == "mawk" else None)
    assert chosen["/usr/bin/awk"] == ("/usr/bin/awk -> /etc/alternatives/awk -> /usr/bin/mawk, "
                                      "the current choice of alternative awk (package mawk)")
    assert "/usr/bin/nawk" in chosen and "/usr/bin/pager" not in chosen


IM = "usr/bin/identify-im6.q16"
ADMIN = b"auto\n/usr/bin/identify\nidentify.1.gz\n/usr/share/man/man1/identify.1.gz\n\n" \
        b"/usr/bin/identify-im6.q16\n10000\n/usr/share/man/man1/identify-im6.q16.1.gz\n\n"


def alternatives_image(tmp: Path, *members: M) -> UnitIndex:
    status = b"Package: imagemagick-6.q16\nStatus: install ok installed\nArchitecture: " \
             b"amd64\nVersion: 8:6.9.11.60+dfsg-1.6\n\n"
    flat = flat_from_layers(tmp, layer(
        M(IM, data=b"\x7fELF", mode=0o755),
        M("usr/share/man/man1/identify-im6.q16.1.gz", data=b"man"),
        M("etc/alternatives/identify", "symlink", linkname="/" + IM),
        M("etc/alternatives/identify.1.gz", "symlink",
          linkname="/usr/share/man/man1/identify-im6.q16.1.gz"),
        M("usr/bin/identify", "symlink", linkname="/etc/alternatives/identify"),
        M("usr/share/man/man1/identify.1.gz", "symlink",
          linkname="/etc/alternatives/identify.1.gz"),
        M("var/lib/dpkg/status", data=status),
        M("var/lib/dpkg/info/imagemagick-6.q16.list",
          data=f"/{IM}\n/usr/share/man/man1/identify-im6.q16.1.gz\n".encode()),
        *members))
    return UnitIndex.build(flat.rootfs(), paths=flat.entries)


def test_links_of_a_kept_choice_and_only_those(tmp_path: Path) -> None:
    index = alternatives_image(tmp_path, M("var/lib/dpkg/alternatives/identify", data=ADMIN),
                               M("var/lib/dpkg/alternatives/broken", data=b"garbage\n"))
    reader = DbReader(index.root, DEFAULT)
    links = read_alternatives(reader)
    assert links == [AlternativeLink("identify", "/usr/bin/identify", "identify"),
                     AlternativeLink("identify.1.gz", "/usr/share/man/man1/identify.1.gz",
                                     "identify")]
    assert reader.warnings == ["/var/lib/dpkg/alternatives: 1 file(s) without a mode and a "
                               "master link; ignored"]
    chosen = chosen_links(index.root, links, index.unit_of)
    assert set(chosen) == {"/usr/bin/identify", "/usr/share/man/man1/identify.1.gz"}
    assert chosen_links(index.root, links, lambda _p: None) == {}


def test_a_command_the_operator_replaced_is_not_the_alternatives_to_keep(tmp_path: Path
                                                                         ) -> None:
    """/usr/bin/identify replaced by a wrapper script: not a link to the choice."""
    index = alternatives_image(tmp_path, M("var/lib/dpkg/alternatives/identify", data=ADMIN),
                               M("usr/bin/identify", data=b"#!/bin/sh\n", mode=0o755))
    links = read_alternatives(DbReader(index.root, DEFAULT))
    assert "/usr/bin/identify" not in chosen_links(index.root, links, index.unit_of)


def test_a_looping_or_dangling_alternative_is_skipped(tmp_path: Path) -> None:
    index = alternatives_image(
        tmp_path, M("var/lib/dpkg/alternatives/identify", data=ADMIN),
        M("var/lib/dpkg/alternatives/loop", data=b"auto\n/usr/bin/loop\n\n"),
        M("etc/alternatives/loop", "symlink", linkname="/usr/bin/loop"),
        M("usr/bin/loop", "symlink", linkname="/etc/alternatives/loop"),
        M("var/lib/dpkg/alternatives/gone", data=b"manual\n/usr/bin/gone\n\n"),
        M("usr/bin/gone", "symlink", linkname="/etc/alternatives/gone"))
    links = read_alternatives(DbReader(index.root, DEFAULT))
    assert set(chosen_links(index.root, links, index.unit_of)) == {
        "/usr/bin/identify", "/usr/share/man/man1/identify.1.gz"}


def test_languages_in_use_and_their_catalogs_from_any_package(tmp_path: Path) -> None:
    loc = "usr/share/locale"
    listed = [f"/{loc}/{d}/LC_MESSAGES/libc.mo" for d in ("de", "de_AT", "fr")]
    flat = flat_from_layers(tmp_path, layer(
        *(M(p.lstrip("/"), data=b"mo") for p in listed),
        M(f"{loc}/de/LC_MESSAGES/app.mo", data=b"mo"), M(f"{loc}/de/LC_TIME/x", data=b"x"),
        M(f"{loc}/locale.alias", data=b"x"),
        M("var/lib/dpkg/status", data=b"Package: libc-l10n\nStatus: install ok installed\n"
                                      b"Architecture: all\n\n"),
        M("var/lib/dpkg/info/libc-l10n.list", data="\n".join(listed).encode())))
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    env = {"LANG": "de_DE.UTF-8", "LANGUAGE": "pt_BR:C"}
    assert language_sources([], env) == {"pt": "LANGUAGE=pt_BR:C", "de": "LANG=de_DE.UTF-8"}
    opened = f"/{loc}/fr/LC_MESSAGES/libc.mo"
    assert language_sources([opened], {}) == {"fr": f"{opened} was kept"}
    assert languages_in_use([], {"LC_ALL": "C.UTF-8", "LANG": "POSIX"}) == set()
    assert catalog_language(f"/{loc}/de_AT/LC_MESSAGES/libc.mo") == "de"
    assert catalog_language(f"/{loc}/de/LC_TIME/x") is None
    files = [p for p, e in flat.entries.items() if e.kind != "dir"]
    found = catalogs(files, language_sources([], {"LANG": "de_DE.UTF-8"}), index.unit_of)
    assert found == {
        f"/{loc}/de/LC_MESSAGES/libc.mo": "a message catalog of de, a language in use "
                                          "(LANG=de_DE.UTF-8), from package libc-l10n",
        f"/{loc}/de_AT/LC_MESSAGES/libc.mo": "a message catalog of de, a language in use "
                                             "(LANG=de_DE.UTF-8), from package libc-l10n",
        f"/{loc}/de/LC_MESSAGES/app.mo": "a message catalog of de, a language in use "
                                         "(LANG=de_DE.UTF-8)"}
    assert catalogs(files, {}, index.unit_of) == {}
