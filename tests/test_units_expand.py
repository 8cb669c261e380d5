"""Package granularity on hand-made images: what a kept file pulls in, why, and at what price.

The expansion is checked through the real keep-list builder (the way the pipeline will
call it): reasons name the unit and the trigger's best reason, built-in excludes leave out
docs and other languages' catalogs without ever removing a kept file, the profile's
exclude still wins, the ELF closure runs over added programs with real Debian binaries,
and the per-unit sizes add up to the keep-lists' totals.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer
from prereq import missing

from tracer.analysis.keeplist import KeepList, KeepListBuilder, Reason, size_of
from tracer.budgets import BudgetExceeded, Budgets
from tracer.image import FlatImage
from tracer.report import human_size
from tracer.units import (
    DEFAULT_EXCLUDES,
    LOCALE_RULE,
    NO_UNIT,
    UnitIndex,
    elf_roots,
    expand,
    package_granularity,
    unit_sizes,
    widen,
)
from tracer.units.expand import language_of, languages_in_use

BOOKWORM = Path("/var/cache/tracer/rootfs-bookworm")
PY = "/usr/lib/python3.11"
STDLIB_LIST = "\n".join([
    PY, f"{PY}/encodings", f"{PY}/encodings/__init__.py", f"{PY}/encodings/utf_8.py",
    f"{PY}/encodings/iso8859_15.py", f"{PY}/encodings/iso8859_1.py", f"{PY}/csv.py",
    "/usr/share/doc/libpython3.11-stdlib", "/usr/share/doc/libpython3.11-stdlib/copyright",
    "/usr/share/man/man1/pydoc.1.gz", "/usr/share/locale/de/LC_MESSAGES/py.mo",
    "/usr/share/locale/de_AT/LC_MESSAGES/py.mo", "/usr/share/locale/fr/LC_MESSAGES/py.mo",
    "/usr/share/locale/fr", "/usr/share/locale/locale.alias", f"{PY}/listed-but-removed.py",
]) + "\n"
STATUS = b"".join(
    b"Package: %s\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n" % n
    for n in (b"libpython3.11-stdlib", b"python3.11-minimal", b"tzdata"))


def stdlib_image(tmp: Path) -> FlatImage:
    files = [f"{PY}/encodings/__init__.py", f"{PY}/encodings/utf_8.py",
             f"{PY}/encodings/iso8859_15.py", f"{PY}/encodings/iso8859_1.py", f"{PY}/csv.py",
             "/usr/share/doc/libpython3.11-stdlib/copyright", "/usr/share/man/man1/pydoc.1.gz",
             "/usr/share/locale/de/LC_MESSAGES/py.mo", "/usr/share/locale/de_AT/LC_MESSAGES/py.mo",
             "/usr/share/locale/fr/LC_MESSAGES/py.mo", "/usr/share/locale/locale.alias",
             "/usr/bin/python3.11", "/usr/share/zoneinfo/Europe/Berlin",
             "/usr/share/zoneinfo/America/New_York", "/srv/app.py"]
    members = [M(f.lstrip("/"), data=b"x" * (100 + 10 * i)) for i, f in enumerate(files)]
    members += [
        M("var/lib/dpkg/status", data=STATUS),
        M("var/lib/dpkg/info/libpython3.11-stdlib:amd64.list", data=STDLIB_LIST.encode()),
        M("var/lib/dpkg/info/python3.11-minimal.list", data=b"/usr/bin/python3.11\n"),
        M("var/lib/dpkg/info/tzdata.list", data=b"/lib\n/usr/share/zoneinfo/Europe/Berlin\n"
                                               b"/usr/share/zoneinfo/America/New_York\n"),
        M("lib", "symlink", linkname="usr/lib"),
    ]
    return flat_from_layers(tmp, layer(*members))


TRACED = Reason("traced", "openat by python3 in smoke[0]")


def test_reason_names_the_unit_and_the_triggers_best_reason(tmp_path: Path) -> None:
    flat = stdlib_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    utf8 = f"{PY}/encodings/utf_8.py"
    want = ("package libpython3.11-stdlib, because /usr/lib/python3.11/encodings/utf_8.py "
            "was opened by python3 in smoke[0]")
    for reasons in ([Reason("symlink", "on the way"), TRACED, Reason("elf", "a -> b")],
                    ["elf: a -> b", "traced: openat by python3 in smoke[0]"]):
        expansion = expand(index, {utf8: reasons, f"{PY}/encodings": [Reason("parent", "x")]})
        assert expansion.added[f"{PY}/encodings/iso8859_15.py"] == want
        assert [p.unit.name for p in expansion.pulled] == ["libpython3.11-stdlib"]
        assert expansion.pulled[0].trigger == utf8
    # a traced trigger beats an elf one, whichever path sorts first
    expansion = expand(index, {f"{PY}/csv.py": ["elf: /usr/bin/python3.11"], utf8: [TRACED]})
    assert expansion.pulled[0].trigger == utf8


def test_a_tie_between_two_programs_names_the_same_one_whichever_ran_first(
        tmp_path: Path) -> None:
    """Two programs opened the trigger: the reason names the same one in either order of
    evidence (programs run in another order run to run, and the keep-list is diffed)."""
    flat = stdlib_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    utf8 = f"{PY}/encodings/utf_8.py"
    by_py = Reason("traced", "openat by python3 in smoke[0]")
    by_sh = Reason("traced", "openat by /bin/sh in smoke[0]")
    reasons = [expand(index, {utf8: order}).pulled[0].reason
               for order in ([by_py, by_sh], [by_sh, by_py])]
    assert reasons[0] == reasons[1] == (
        f"package libpython3.11-stdlib, because {utf8} was opened by /bin/sh in smoke[0]")


def test_directories_and_unowned_paths_pull_nothing(tmp_path: Path) -> None:
    flat = stdlib_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    expansion = expand(index, {f"{PY}/encodings": [TRACED], "/srv/app.py": [TRACED],
                               "/no/such/file": [TRACED],
                               # merged /usr: a link to a directory that .list files name
                               "/lib": [Reason("symlink", f"on the way to /lib/{PY}")]})
    assert index.unit_of("/lib").name == "tzdata"
    assert expansion.pulled == [] and expansion.added == {}


def test_default_excludes_and_languages_in_use(tmp_path: Path) -> None:
    flat = stdlib_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    kept = {f"{PY}/encodings/utf_8.py": [TRACED],
            "/usr/share/doc/libpython3.11-stdlib/copyright": [Reason("keep.paths", "/usr/**")]}
    expansion = expand(index, kept, env={"LANG": "de_DE.UTF-8"})
    added, excluded = set(expansion.added), expansion.default_excluded
    assert expansion.languages == ["de"]
    assert {"/usr/share/locale/de/LC_MESSAGES/py.mo", "/usr/share/locale/de_AT/LC_MESSAGES/py.mo",
            "/usr/share/locale/locale.alias", f"{PY}/csv.py"} <= added
    assert excluded["/usr/share/locale/fr/LC_MESSAGES/py.mo"] == "/usr/share/locale/fr/**"
    assert excluded["/usr/share/locale/fr"] == "/usr/share/locale/fr/**"
    assert excluded["/usr/share/man/man1/pydoc.1.gz"] == "/usr/share/man/**"
    # a kept file is never taken away by a built-in rule, nor added twice
    assert "/usr/share/doc/libpython3.11-stdlib/copyright" not in added | set(excluded)
    assert f"{PY}/listed-but-removed.py" not in added  # listed, not in the image
    assert expansion.rules == [*DEFAULT_EXCLUDES, LOCALE_RULE]
    report = expansion.to_json()
    assert report["default_excluded_paths"][LOCALE_RULE] == 2
    assert report["units"][0]["unit"] == "package libpython3.11-stdlib"
    # C locale: no language is in use unless a catalog was opened
    assert expand(index, kept, env={"LANG": "C.UTF-8"}).languages == []
    kept["/usr/share/locale/fr/LC_MESSAGES/py.mo"] = [TRACED]
    assert expand(index, kept).languages == ["fr"]


def test_language_of_and_languages_in_use() -> None:
    assert language_of("de_AT.UTF-8@euro") == "de"
    assert language_of("pt_BR") == "pt" and language_of("sr@latin") == "sr"
    assert language_of("C") is None and language_of("POSIX") is None and language_of("") is None
    env = {"LANGUAGE": "fr_CA:es", "LC_ALL": "", "LANG": "C.UTF-8", "LC_MESSAGES": "it_IT"}
    assert languages_in_use(["/usr/share/locale/nl/LC_MESSAGES/x.mo",
                             "/usr/share/locale/locale.alias"], env) == {"fr", "es", "it", "nl"}


def file_level(flat: FlatImage, kept: dict[str, list[Reason]],
               exclude: tuple[str, ...] = ()) -> tuple[KeepListBuilder, KeepList]:
    builder = KeepListBuilder(flat.entries, flat.rootfs(), exclude=exclude,
                              hardlink_group=flat.hardlink_group)
    for path, reasons in kept.items():
        for reason in reasons:
            builder.add(path, reason)
    return builder, builder.build()


def test_widen_through_the_builder_and_sizes_add_up(tmp_path: Path) -> None:
    flat = stdlib_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    builder, files = file_level(flat, {
        f"{PY}/encodings/utf_8.py": [TRACED],
        "/usr/share/zoneinfo/Europe/Berlin": [Reason("traced", "openat by python3 in job")],
        "/srv/app.py": [Reason("keep.paths", "/srv/**")],
    }, exclude=(f"{PY}/encodings/iso8859_1.py",))
    widening = widen(builder, files, index, env={})
    packages = builder.build()
    kept = packages.kept
    assert any(r == Reason("package", "package tzdata, because /usr/share/zoneinfo/Europe/Berlin"
                           " was opened by python3 in job")
               for r in kept["/usr/share/zoneinfo/America/New_York"])
    assert f"{PY}/encodings/iso8859_15.py" in kept
    assert f"{PY}/encodings/iso8859_1.py" not in kept  # the profile's exclude wins
    assert f"{PY}/encodings/iso8859_1.py" in packages.excluded
    assert "/usr/share/man/man1/pydoc.1.gz" not in kept
    assert "/usr/bin/python3.11" not in kept  # another package, not pulled in
    assert widening.closure.files == {}  # no ELF file among the additions
    table = unit_sizes(index, flat.entries, files.kept, kept)
    assert table.file_total == size_of(flat.entries, files.kept)
    assert table.package_total == size_of(flat.entries, kept)
    assert sum(r.file_bytes for r in table.rows) == table.file_total
    assert sum(r.package_bytes for r in table.rows) == table.package_total
    assert sum(r.added_bytes for r in table.rows) == table.package_total - table.file_total > 0
    added = [r.added_bytes for r in table.rows]
    assert added == sorted(added, reverse=True)
    rows = {r.label: r for r in table.rows}
    assert rows[NO_UNIT].added_bytes == 0 and rows[NO_UNIT].file_bytes > 0  # /srv/app.py
    berlin = flat.entries["/usr/share/zoneinfo/Europe/Berlin"].size
    new_york = flat.entries["/usr/share/zoneinfo/America/New_York"].size
    assert (rows["package tzdata"].file_bytes, rows["package tzdata"].package_bytes) == (
        berlin, berlin + new_york)
    text = table.format_text()
    assert table.rows[0].label == "package libpython3.11-stdlib"  # the biggest price first
    assert text.index("libpython3.11-stdlib") < text.index("tzdata")
    assert "(files of no unit kept at file level add nothing: " in text
    assert table.to_json()["added_bytes"] == table.package_total - table.file_total


def real(path: str) -> bytes:
    host = BOOKWORM / path.lstrip("/")
    if not host.exists():
        missing(f"{host} is missing (the debootstrap root); run scripts/setup")
    return host.resolve().read_bytes()


LIB = "usr/lib/x86_64-linux-gnu"


def coreutils_image(tmp_path: Path) -> FlatImage:
    """coreutils owns /bin/ls (a real ELF needing libselinux, libpcre2, libc) and a text
    file; libselinux1, libpcre2-8-0 and libc6 own the libraries."""
    lib = LIB
    status = b"".join(
        b"Package: %s\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n" % n
        for n in (b"coreutils", b"libselinux1", b"libpcre2-8-0", b"libc6"))
    return flat_from_layers(tmp_path, layer(
        M("lib", "symlink", linkname="usr/lib"), M("bin", "symlink", linkname="usr/bin"),
        M("lib64", "dir"),
        M("lib64/ld-linux-x86-64.so.2", "symlink",
          linkname="/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        M(f"{lib}/ld-linux-x86-64.so.2", data=real(f"/{lib}/ld-linux-x86-64.so.2"), mode=0o755),
        M(f"{lib}/libc.so.6", data=real(f"/{lib}/libc.so.6")),
        M(f"{lib}/libselinux.so.1", data=real(f"/{lib}/libselinux.so.1")),
        M(f"{lib}/libpcre2-8.so.0", data=real(f"/{lib}/libpcre2-8.so.0")),
        M("usr/bin/ls", data=real("/usr/bin/ls"), mode=0o755),
        M("usr/bin/cat.txt", data=b"not a program"),
        M("var/lib/dpkg/status", data=status),
        M("var/lib/dpkg/info/coreutils.list", data=b"/bin/ls\n/bin/cat.txt\n"),
        M("var/lib/dpkg/info/libselinux1:amd64.list", data=b"/lib/x86_64-linux-gnu/"
                                                          b"libselinux.so.1\n"),
        M("var/lib/dpkg/info/libpcre2-8-0:amd64.list", data=b"/lib/x86_64-linux-gnu/"
                                                           b"libpcre2-8.so.0\n"),
        M("var/lib/dpkg/info/libc6:amd64.list", data=b"/lib/x86_64-linux-gnu/libc.so.6\n"
          b"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n/lib64/ld-linux-x86-64.so.2\n"),
    ))


def test_elf_closure_runs_over_what_the_units_added(tmp_path: Path) -> None:
    lib = LIB
    flat = coreutils_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    builder, files = file_level(flat, {"/bin/cat.txt": [TRACED]})
    assert "/usr/bin/ls" not in files.kept
    widening = widen(builder, files, index, env={})
    assert elf_roots(flat.rootfs(), widening.expansion.added) == ["/usr/bin/ls"]
    kept = builder.build().kept
    assert any(r.kind == "package" and r.detail.startswith("package coreutils, because "
                                                           "/usr/bin/cat.txt was opened")
               for r in kept["/usr/bin/ls"])
    for needed in ("libselinux.so.1", "libpcre2-8.so.0", "libc.so.6", "ld-linux-x86-64.so.2"):
        assert any(r.kind == "elf" for r in kept[f"/{lib}/{needed}"]), needed
    assert widening.closure.missing == []
    table = unit_sizes(index, flat.entries, files.kept, kept)
    rows = {r.label: r for r in table.rows}
    # libselinux1 was not pulled in, but the ELF closure of an added program needs it:
    # it is part of the price and has its own row
    assert rows["package libselinux1"].added_bytes == flat.entries[f"/{lib}/libselinux.so.1"].size
    assert rows["package libc6"].added_bytes > 1_000_000
    assert table.rows[0].label == "package libc6"  # biggest first
    assert sum(r.added_bytes for r in table.rows) == table.package_total - table.file_total


@pytest.mark.parametrize("reasons,phrase", [
    (["traced: execve by sh in smoke[1].command"], "was executed by sh in smoke[1].command"),
    (["traced: newfstatat by python3 in job"], "was looked up by python3 in job"),
    (["traced: execve by ? in run"], "was executed in run"),
    (["elf: /usr/bin/python3 -> libz.so.1"], "is needed by /usr/bin/python3 -> libz.so.1"),
    (["keep.paths: /etc/**"], "is kept by keep.paths '/etc/**'"),
    (["config: WorkingDir"], "is kept (config: WorkingDir)"),
    (["something odd"], "is kept (something odd)"),
    ([], "is kept"),
])
def test_trigger_reasons_read_as_sentences(tmp_path: Path, reasons: list[str], phrase: str
                                           ) -> None:
    flat = stdlib_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    expansion = expand(index, {f"{PY}/csv.py": reasons})
    assert expansion.pulled[0].reason == (f"package libpython3.11-stdlib, because {PY}/csv.py "
                                          + phrase)


def test_package_granularity_in_one_call_for_the_pipeline(tmp_path: Path) -> None:
    flat = stdlib_image(tmp_path)
    builder, files = file_level(flat, {f"{PY}/encodings/utf_8.py": [TRACED]})
    result = package_granularity(builder, files, flat.rootfs(), flat.entries,
                                 env={"LANG": "de_DE.UTF-8"})
    assert result.file_level is files
    assert f"{PY}/encodings/iso8859_15.py" in result.keeplist.kept
    report = result.to_json()
    assert report["file_bytes"] == size_of(flat.entries, files.kept)
    assert report["package_bytes"] == size_of(flat.entries, result.keeplist.kept)
    assert sum(u["added_bytes"] for u in report["units"]) == report["added_bytes"] > 0
    assert report["expansion"]["languages_in_use"] == ["de"]
    assert report["warnings"] == [] and report["unresolved_after_expansion"] == []


def test_an_added_program_the_profile_excludes_pulls_in_no_libraries(tmp_path: Path) -> None:
    """The closure over what units added starts only from what the image keeps: libraries
    that only an excluded program needs are not kept, and no reason names a program that
    is not in the image."""
    flat = coreutils_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    builder, files = file_level(flat, {"/bin/cat.txt": [TRACED]}, exclude=("/usr/bin/ls",))
    widening = widen(builder, files, index, env={})
    packages = builder.build()
    assert "/usr/bin/ls" in packages.excluded and "/usr/bin/ls" not in packages.kept
    for needed in ("libselinux.so.1", "libpcre2-8.so.0"):
        assert f"/{LIB}/{needed}" not in packages.kept, needed
    assert widening.closure.files == {}


def test_the_closure_over_added_programs_spends_the_runs_resolver_budget(tmp_path: Path
                                                                        ) -> None:
    flat = coreutils_image(tmp_path)
    builder, files = file_level(flat, {"/bin/cat.txt": [TRACED]})
    with pytest.raises(BudgetExceeded, match="resolver_work"):
        package_granularity(builder, files, flat.rootfs(), flat.entries,
                            budgets=Budgets(resolver_work=5))


def test_a_link_a_unit_adds_does_not_bring_back_what_the_profile_excludes(
        tmp_path: Path) -> None:
    """tzdata ships aliases (`Jamaica -> America/Jamaica`): with America/** excluded, the
    aliases it adds must not keep the zones through the symlink closure (nor dangle)."""
    zi = "usr/share/zoneinfo"
    status = b"Package: tzdata\nStatus: install ok installed\nArchitecture: all\n\n"
    listed = [f"/{zi}/Europe/Berlin", f"/{zi}/Europe/Lisbon", f"/{zi}/America/Jamaica",
              f"/{zi}/Jamaica", f"/{zi}/Portugal", f"/{zi}/US/Eastern",
              f"/{zi}/America/New_York"]
    flat = flat_from_layers(tmp_path, layer(
        M(f"{zi}/Europe/Berlin", data=b"TZif" * 10), M(f"{zi}/Europe/Lisbon", data=b"TZif" * 11),
        M(f"{zi}/America/Jamaica", data=b"TZif" * 12),
        M(f"{zi}/America/New_York", data=b"TZif" * 13),
        M(f"{zi}/Jamaica", "symlink", linkname="America/Jamaica"),
        M(f"{zi}/Portugal", "symlink", linkname="Europe/Lisbon"),
        M(f"{zi}/US/Eastern", "symlink", linkname="../America/New_York"),
        M("var/lib/dpkg/status", data=status),
        M("var/lib/dpkg/info/tzdata.list", data="\n".join(listed).encode() + b"\n")))
    builder, files = file_level(flat, {f"/{zi}/Europe/Berlin": [TRACED]},
                                exclude=(f"/{zi}/America/**",))
    result = package_granularity(builder, files, flat.rootfs(), flat.entries)
    kept = result.keeplist.kept
    assert f"/{zi}/Europe/Lisbon" in kept and f"/{zi}/Portugal" in kept
    for gone in ("America/Jamaica", "America/New_York", "Jamaica", "US/Eastern"):
        assert f"/{zi}/{gone}" not in kept, gone
    assert result.to_json()["package_bytes"] == size_of(flat.entries, kept)


@pytest.mark.parametrize("reason", [Reason("keep.packages", "coreutils"),
                                    Reason("keep.paths", "/usr/bin/*")])
def test_a_program_kept_by_name_gets_its_libraries_like_one_a_unit_added(
        tmp_path: Path, reason: Reason) -> None:
    """With package granularity, coreutils' /usr/bin/ls needs its libraries whether a used
    file pulled coreutils in or the profile named it (keep.packages, keep.paths)."""
    flat = coreutils_image(tmp_path)
    builder, files = file_level(flat, {"/usr/bin/ls": [reason]})
    kept = package_granularity(builder, files, flat.rootfs(), flat.entries).keeplist.kept
    for needed in ("libselinux.so.1", "libpcre2-8.so.0", "libc.so.6"):
        assert any(r.kind == "elf" for r in kept.get(f"/{LIB}/{needed}", [])), needed


def test_the_price_table_leaves_out_units_that_keep_nothing() -> None:
    """Units owning only directories or nothing kept cost 0 B at both granularities:
    listing them hides the units that do cost something."""
    from tracer.units.sizes import SizeTable, UnitSize

    table = SizeTable(rows=[UnitSize("package libc6", "dpkg", 100, 900),
                            UnitSize("package adduser", "dpkg", 0, 0),
                            UnitSize("package tzdata", "dpkg", 10, 20)],
                      file_total=110, package_total=920)
    text = table.format_text()
    assert "libc6" in text and "tzdata" in text and "adduser" not in text
    assert "from 2 units" in text


def _counts(text: str) -> tuple[int, int, int, int]:
    """(units in the header, rows shown, rows in `(N more, ...)`, units adding nothing)."""
    import re

    header = re.search(r"from (\d+) units?( and files of no unit)?\)", text)
    assert header, text
    rows = [line for line in text.splitlines()[2:] if not line.startswith("  (")]
    more = re.search(r"^  \((\d+) more, \+", text, re.M)
    idle = re.search(r"^  \((\d+) units? (?:and files of no unit )?kept at file level add "
                     r"nothing", text, re.M)
    return (int(header.group(1)) + (1 if header.group(2) else 0), len(rows),
            int(more.group(1)) if more else 0, int(idle.group(1)) if idle else 0)


@pytest.mark.parametrize("adding,idle,no_unit", [(37, 29, True), (10, 3, False), (15, 0, True),
                                                 (16, 5, False), (0, 4, False)])
def test_the_price_table_counts_agree_with_its_header(adding: int, idle: int,
                                                      no_unit: bool) -> None:
    """`+28.5 MB from 37 units` above 15 rows must be followed by `(22 more)`, not by a
    count that includes units adding nothing: those are counted on a line of their own."""
    from tracer.units.sizes import SizeTable, UnitSize

    rows = [UnitSize(f"package add{i:02}", "dpkg", 10, 10 + 1000 * (i + 1))
            for i in range(adding)]
    rows += [UnitSize(f"package idle{i:02}", "dpkg", 50, 50) for i in range(idle)]
    rows += [UnitSize("package empty", "dpkg", 0, 0)]
    if no_unit:
        rows.append(UnitSize(NO_UNIT, "", 7, 500))
    rows.sort(key=lambda r: (-r.added_bytes, r.label))
    table = SizeTable(rows=rows, file_total=sum(r.file_bytes for r in rows),
                      package_total=sum(r.package_bytes for r in rows))
    text = table.format_text()
    in_header, shown, more, nothing = _counts(text)
    assert in_header == adding + no_unit == shown + more
    assert shown == min(15, adding + no_unit)
    assert nothing == idle
    assert "package empty" not in text
    if adding + no_unit > 15:
        rest = sum(r.added_bytes for r in rows[15:] if r.added_bytes)
        assert f"more, +{human_size(rest)})" in text


def test_the_price_table_prices_three_positions(tmp_path: Path) -> None:
    flat = coreutils_image(tmp_path)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    lib = f"/{LIB}"
    file_kept = ["/usr/bin/cat.txt"]
    package_kept = file_kept + ["/usr/bin/ls", f"{lib}/libc.so.6"]
    deps_kept = package_kept + [f"{lib}/libselinux.so.1", f"{lib}/libpcre2-8.so.0"]
    table = unit_sizes(index, flat.entries, file_kept, package_kept, deps_kept)
    assert table.positions == ("file", "package", "deps")
    assert table.totals == {"file": size_of(flat.entries, file_kept),
                            "package": size_of(flat.entries, package_kept),
                            "deps": size_of(flat.entries, deps_kept)}
    assert sum(r.deps_bytes for r in table.rows) == table.deps_total
    assert sum(r.added_bytes for r in table.rows) == table.deps_total - table.file_total
    rows = {r.label: r for r in table.rows}
    selinux = rows["package libselinux1"]
    assert (selinux.package_bytes, selinux.deps_bytes) == (0, selinux.added_bytes) != (0, 0)
    data = table.to_json()
    assert data["deps_bytes"] == table.deps_total and "deps_bytes" in data["units"][0]
    text = table.format_text()
    assert text.splitlines()[0].startswith(
        f"deps granularity keeps {human_size(table.deps_total)}; package granularity would "
        f"keep {human_size(table.package_total)}, file granularity "
        f"{human_size(table.file_total)} (+")
    assert text.splitlines()[1].split() == ["unit", "file", "package", "deps", "added"]
    assert _counts(text)[0] == _counts(text)[1] + _counts(text)[2] == 4  # coreutils, libc6, 2 libs
    # without deps: the table of package granularity, as before
    two = unit_sizes(index, flat.entries, file_kept, package_kept)
    assert two.positions == ("file", "package") and "deps_bytes" not in two.to_json()
