"""Granularity deps on hand-made images with real database formats: what the declared
dependencies of kept units pull in, by which chain, within which budget.

dpkg's status file is written the way dpkg writes it (Pre-Depends/Depends with
alternatives, versions, `:any`, Provides, `Essential: yes`, a removed package), next to
Python dist-info, node_modules trees and gemspecs; the walk runs through the real
keep-list builder the pipeline uses, so reasons, alternatives links, catalogs and the
price of each position are checked where the report takes them from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer

from tracer.analysis.keeplist import KeepList, KeepListBuilder, Reason
from tracer.budgets import DEFAULT, BudgetExceeded, Budgets
from tracer.image import FlatImage
from tracer.units import DependencyGraph, UnitIndex, Work, package_granularity, walk
from tracer.units.deps import first_script

TRACED = Reason("traced", "execve by sh in run")


def dpkg_image(tmp: Path, packages: dict[str, tuple[str, dict[str, bytes | tuple[str, str]]]],
               *extra: M) -> FlatImage:
    """An image whose dpkg database lists `packages`: name -> (status fields, files).

    A file's value is its content, or ("symlink", target); files ending in `.sh` or in
    /usr/bin are executable.
    """
    members: list[M] = []
    status = b""
    for name, (fields, files) in packages.items():
        state = "deinstall ok config-files" if "removed" in fields else "install ok installed"
        status += (f"Package: {name}\nStatus: {state}\nArchitecture: amd64\n"
                   f"Version: 1.0-1\n{fields.replace('removed', '').strip()}\n").encode()
        status += b"Description: a package\n a description line: Depends: nothing\n\n"
        listing = []
        for path, data in files.items():
            listing.append(path)
            if isinstance(data, tuple):
                members.append(M(path.lstrip("/"), "symlink", linkname=data[1]))
            else:
                mode = 0o755 if path.endswith(".sh") or "/bin/" in path else 0o644
                members.append(M(path.lstrip("/"), data=data, mode=mode))
        members.append(M(f"var/lib/dpkg/info/{name}.list", data="\n".join(listing).encode()))
    members.append(M("var/lib/dpkg/status", data=status))
    return flat_from_layers(tmp, layer(*members, *extra))


PACKAGES = {
    # the kept program: a binary, a wrapper script, and dependencies of every shape
    "app": ("Pre-Depends: dpkg-ish\nDepends: liba (>= 2) | libb, virt-x, libc6:any, "
            "debconf (>= 0.5) | debconf-2.0, missing-pkg | libc6",
            {"/usr/bin/app": b"\x7fELF", "/usr/lib/app/wrapper.sh": b"#!/bin/sh\nsed x\n",
             "/usr/share/doc/app/copyright": b"c"}),
    "liba": ("Version-Note: too old for app", {"/usr/lib/liba.so.1": b"a" * 10}),
    "libb": ("Depends: app", {"/usr/lib/libb.so.1": b"b" * 20}),  # a cycle back to app
    "provider-x": ("Provides: virt-x (= 3)", {"/usr/share/x/data": b"x" * 30}),
    "libc6": ("", {"/usr/lib/libc.so.6": b"c" * 40}),
    "dpkg-ish": ("", {"/usr/bin/dpkg-ish": b"d"}),
    "debconf-2": ("Provides: debconf-2.0", {"/usr/share/debconf2": b"e"}),
    "sed": ("Essential: yes\nPre-Depends: libsel", {"/usr/bin/sed": b"\x7fELF" + b"s" * 50}),
    "libsel": ("", {"/usr/lib/libsel.so.1": b"l" * 60}),
    "old-essential": ("Essential: yes\nremoved", {"/usr/bin/old": b"o"}),
    "unrelated": ("Depends: libc6", {"/usr/bin/unrelated": b"u" * 70}),
}


def walked(flat: FlatImage, *roots: str, budgets: Budgets = DEFAULT,
           scripts: bool = True) -> dict[str, str]:
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    graph = DependencyGraph(index, budgets)
    work = Work(budgets)
    units = [index.find(r)[0] for r in roots]
    pulls = walk(graph, units, work,
                 script=(lambda u: first_script(index, u, work)) if scripts else None)
    return {p.unit.name: p.reason for p in pulls}


def test_dpkg_dependencies_alternatives_versions_virtuals_and_a_cycle(tmp_path: Path) -> None:
    flat = dpkg_image(tmp_path, PACKAGES)
    got = walked(flat, "app", scripts=False)
    assert got == {
        "dpkg-ish": "package dpkg-ish: app -> dpkg-ish",  # Pre-Depends
        "libb": "package libb: app -> libb",  # liba is installed, but too old for >= 2
        "provider-x": "package provider-x: app -> provider-x",  # virtual, versioned Provides
        "libc6": "package libc6: app -> libc6",  # :any
        "debconf-2": "package debconf-2: app -> debconf-2",  # the first that is installed
    }  # libb -> app closes a cycle: app is not walked twice, nor pulled in


def test_a_kept_script_pulls_in_the_essential_set_and_its_dependencies(tmp_path: Path
                                                                       ) -> None:
    flat = dpkg_image(tmp_path, PACKAGES)
    got = walked(flat, "app")
    because = "app ships the script /usr/lib/app/wrapper.sh (#!/bin/sh)"
    assert got["sed"] == f"package sed: app -> sed (sed is Essential and {because})"
    assert got["libsel"] == f"package libsel: app -> sed -> libsel (sed is Essential and " \
                            f"{because})"
    assert "old-essential" not in got and "unrelated" not in got  # removed; nobody needs it
    # a unit without a script does not: libc6 alone needs nothing Essential
    assert walked(flat, "libc6") == {}


def test_only_a_script_the_image_keeps_counts(tmp_path: Path) -> None:
    flat = dpkg_image(tmp_path, PACKAGES)
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    app = index.find("app")[0]
    work = Work(Budgets())
    assert first_script(index, app, work, keep=lambda p: not p.endswith(".sh")) is None
    assert first_script(index, app, work).startswith("app ships the script ")


def test_a_long_chain_or_a_big_cycle_is_bounded_by_resolver_work(tmp_path: Path) -> None:
    n = 3000
    chain = {f"p{i}": (f"Depends: p{(i + 1) % n}", {f"/usr/share/p{i}": b"x"})
             for i in range(n)}
    flat = dpkg_image(tmp_path, chain)
    got = walked(flat, "p0", scripts=False)
    assert len(got) == n - 1  # each once, then the cycle back to p0 ends it
    assert got[f"p{n - 1}"].endswith(f"p{n - 2} -> p{n - 1}")
    with pytest.raises(BudgetExceeded, match="resolver_work"):
        walked(flat, "p0", budgets=Budgets(resolver_work=1000), scripts=False)


def test_python_node_and_gem_dependencies_resolve_as_their_runtimes_do(tmp_path: Path
                                                                      ) -> None:
    site = "usr/local/lib/python3.11/site-packages"
    venv = "opt/venv/lib/python3.11/site-packages"
    gems = "usr/lib/ruby/gems/3.1.0"

    def dist(where: str, name: str, requires: list[str]) -> list[M]:
        meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
        return [M(f"{where}/{name}-1.0.dist-info/METADATA",
                  data=f"Metadata-Version: 2.1\nName: {name}\n{meta}\n".encode()),
                M(f"{where}/{name}-1.0.dist-info/RECORD", data=f"{name}/__init__.py,,\n".encode()),
                M(f"{where}/{name}/__init__.py")]

    def npm(directory: str, deps: list[str]) -> M:
        body = ", ".join(f'"{d}": "*"' for d in deps)
        return M(f"{directory}/package.json",
                 data=f'{{"name": "{directory.rsplit("/", 1)[1]}", "version": "1.0.0", '
                      f'"dependencies": {{{body}}}}}'.encode())

    def gem(name: str, deps: list[str]) -> list[M]:
        body = "".join(f'  s.add_runtime_dependency(%q<{d}>.freeze, [">= 0"])\n' for d in deps)
        return [M(f"{gems}/specifications/{name}-1.0.gemspec",
                  data=f"Gem::Specification.new do |s|\n{body}end\n".encode()),
                M(f"{gems}/gems/{name}-1.0/lib/{name}.rb")]

    flat = flat_from_layers(tmp_path, layer(
        *dist(site, "flask", ["Werkzeug>=3", "Blinker; extra == 'signals'"]),
        *dist(site, "werkzeug", ["MarkupSafe>=2.1.1"]), *dist(site, "markupsafe", []),
        *dist(site, "blinker", []),
        *dist(venv, "flask", ["werkzeug"]), *dist(venv, "werkzeug", []),
        npm("app/node_modules/express", ["accepts", "debug"]),
        npm("app/node_modules/express/node_modules/debug", ["ms"]),
        npm("app/node_modules/debug", []), npm("app/node_modules/ms", []),
        npm("app/node_modules/accepts", ["express"]),  # a cycle
        *gem("rack-test", ["rack"]), *gem("rack", [])))
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    graph = DependencyGraph(index)
    work = Work(Budgets())

    def chains(source: str) -> dict[str, tuple[str, ...]]:
        root = next(u for u in index.units.values() if u.source == source)
        return {p.unit.source: p.chain for p in walk(graph, [root], work)}

    # each flask gets the werkzeug of its own site directory (the venv has no markupsafe);
    # a second distribution of one name is named with its directory
    flask = chains(f"/{site}/flask-1.0.dist-info/RECORD")
    assert {s: tuple(n.split(" ")[0] for n in c[1:]) for s, c in flask.items()} == {
        f"/{site}/werkzeug-1.0.dist-info/RECORD": ("werkzeug",),
        f"/{site}/markupsafe-1.0.dist-info/RECORD": ("werkzeug", "markupsafe")}
    assert list(chains(f"/{venv}/flask-1.0.dist-info/RECORD")) == [
        f"/{venv}/werkzeug-1.0.dist-info/RECORD"]

    def npm_chains(name: str) -> dict[str, tuple[str, ...]]:
        return chains(f"/app/node_modules/{name}/package.json")

    express = npm_chains("express")
    # accepts from app/node_modules; debug nested under express wins over the top-level one
    assert sorted(express) == ["/app/node_modules/accepts/package.json",
                               "/app/node_modules/express/node_modules/debug/package.json",
                               "/app/node_modules/ms/package.json"]
    assert express["/app/node_modules/ms/package.json"] == (
        "express", "debug (/app/node_modules/express/node_modules/debug)", "ms")
    assert list(chains(f"/{gems}/specifications/rack-test-1.0.gemspec").values()) == [
        ("rack-test", "rack")]


def builder_for(flat: FlatImage, kept: dict[str, list[Reason]],
                exclude: tuple[str, ...] = ()) -> tuple[KeepListBuilder, KeepList]:
    builder = KeepListBuilder(flat.entries, flat.rootfs(), exclude=exclude)
    for path, reasons in kept.items():
        for r in reasons:
            builder.add(path, r)
    return builder, builder.build()


ALTERNATIVES = [
    M("var/lib/dpkg/alternatives/appctl", data=b"auto\n/usr/bin/appctl\n\n/usr/bin/app\n50\n\n"),
    M("etc/alternatives/appctl", "symlink", linkname="/usr/bin/app"),
    M("usr/bin/appctl", "symlink", linkname="/etc/alternatives/appctl"),
    M("var/lib/dpkg/alternatives/sedit", data=b"auto\n/usr/bin/sedit\n\n/usr/bin/sed\n50\n\n"),
    M("etc/alternatives/sedit", "symlink", linkname="/usr/bin/sed"),
    M("usr/bin/sedit", "symlink", linkname="/etc/alternatives/sedit"),
]


def test_the_dial_through_the_keep_list_builder(tmp_path: Path) -> None:
    """file < package < deps, each a superset, with the reasons the keep-list shows."""
    packages = {**PACKAGES, "app-l10n": ("Depends: app", {
        "/usr/share/locale/de/LC_MESSAGES/app.mo": b"m" * 80,
        "/usr/share/locale/fr/LC_MESSAGES/app.mo": b"f" * 80})}
    flat = dpkg_image(tmp_path, packages, *ALTERNATIVES)
    kept = {"/usr/bin/app": [TRACED]}
    env = {"LANG": "de_DE.UTF-8"}

    builder, files = builder_for(flat, kept)
    package = package_granularity(builder, files, flat.rootfs(), flat.entries, env=env)
    assert package.granularity == "package" and package.deepening is None
    pkg = package.keeplist.kept
    assert Reason("alternatives", "/usr/bin/appctl -> /etc/alternatives/appctl -> "
                  "/usr/bin/app, the current choice of alternative appctl (package app)") \
        in pkg["/usr/bin/appctl"]
    assert "/etc/alternatives/appctl" in pkg  # the chain, by the symlink closure
    assert "/usr/bin/sedit" not in pkg  # sed is not kept at package granularity
    assert [r.kind for r in pkg["/usr/share/locale/de/LC_MESSAGES/app.mo"]] == ["l10n"]
    assert "/usr/share/locale/fr/LC_MESSAGES/app.mo" not in pkg
    assert "/usr/lib/libb.so.1" not in pkg and "/usr/bin/sed" not in pkg

    builder, files = builder_for(flat, kept)
    deps = package_granularity(builder, files, flat.rootfs(), flat.entries, env=env, deps=True)
    assert deps.granularity == "deps"
    got = deps.keeplist.kept
    assert set(pkg) <= set(got) and set(deps.package_level.kept) == set(pkg)
    assert Reason("deps", "package libb: app -> libb") in got["/usr/lib/libb.so.1"]
    assert any(r.kind == "deps" and r.detail.startswith("package libsel: app -> sed -> libsel")
               for r in got["/usr/lib/libsel.so.1"])
    assert any(r.kind == "alternatives" for r in got["/usr/bin/sedit"])  # sed's, now kept
    assert "/usr/share/doc/app/copyright" not in got and "/usr/bin/unrelated" not in got
    assert "/usr/share/locale/fr/LC_MESSAGES/app.mo" not in got  # l10n packages: catalogs
    report = deps.to_json()
    assert report["file_bytes"] < report["package_bytes"] < report["deps_bytes"]
    assert deps.sizes.totals == {"file": report["file_bytes"],
                                 "package": report["package_bytes"],
                                 "deps": report["deps_bytes"]}
    units = {u["name"]: u for u in report["deps"]["units"]}
    assert units["libsel"]["chain"] == ["app", "sed", "libsel"]
    assert units["libsel"]["trigger"] == "app"
    assert report["deps"]["essential_because"] == ("app ships the script "
                                                   "/usr/lib/app/wrapper.sh (#!/bin/sh)")
    assert report["languages_in_use"] == {"de": "LANG=de_DE.UTF-8"}
    assert report["alternatives"] == {"/usr/bin/appctl": pkg["/usr/bin/appctl"][0].detail}
    assert list(report["deps"]["alternatives"]) == ["/usr/bin/sedit"]


def test_the_profile_exclude_still_wins_and_an_excluded_script_pulls_nothing(
        tmp_path: Path) -> None:
    flat = dpkg_image(tmp_path, PACKAGES, *ALTERNATIVES)
    builder, files = builder_for(flat, {"/usr/bin/app": [TRACED]},
                                 exclude=("/usr/lib/app/**", "/usr/lib/libb.so.1"))
    deps = package_granularity(builder, files, flat.rootfs(), flat.entries, deps=True)
    kept = deps.keeplist.kept
    assert "/usr/lib/libb.so.1" not in kept and "/usr/lib/libb.so.1" in deps.keeplist.excluded
    assert "/usr/bin/sed" not in kept  # the only script is excluded: no Essential set
    assert deps.deepening.essential_because is None


def test_many_providers_nobody_can_use_cost_work_not_time(tmp_path: Path) -> None:
    """600 packages providing `x` in a version no one accepts, 600 asking for `x (>= 2)`:
    each lookup looks at every provider, and that is what the budget counts."""
    n = 600
    packages = {f"prov{i}": ("Provides: x (= 1)", {f"/usr/share/prov{i}": b"p"})
                for i in range(n)}
    packages |= {f"user{i}": (f"Depends: x (>= 2), user{i + 1}", {f"/usr/share/u{i}": b"u"})
                 for i in range(n)}
    flat = dpkg_image(tmp_path, packages)
    with pytest.raises(BudgetExceeded, match="resolver_work"):
        walked(flat, "user0", budgets=Budgets(resolver_work=n * n), scripts=False)
    assert len(walked(flat, "user0", scripts=False)) == n - 1
