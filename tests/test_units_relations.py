"""The readers of declared dependencies, checked against the tools that own the formats.

Debian's version order and status fields are checked against dpkg itself (`dpkg
--compare-versions`, `dpkg-query` on the debootstrap root scripts/setup makes); Python
requirements against PEP 508 cases the `packaging` library defines; package.json and
gemspec readers on files in the shapes npm and RubyGems write.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer
from prereq import missing

from tracer.budgets import DEFAULT
from tracer.rootfs import RootFS
from tracer.units import UnitIndex
from tracer.units.dpkg import parse_status, read_status
from tracer.units.node import read_dependencies
from tracer.units.python import normalize_name, read_requirements
from tracer.units.reader import DbReader
from tracer.units.relations import (
    Relation,
    compare_versions,
    parse_provides,
    parse_relations,
    satisfies,
)
from tracer.units.ruby import read_runtime_dependencies

BOOKWORM = Path("/var/cache/tracer/rootfs-bookworm")
VERSIONS = ["1.0", "1.0~rc1", "1.0~~", "1.0+b1", "1:0.9", "0:1.0", "1.0-1", "1.0-1~bpo1",
            "1.0a", "1.0A", "1.0.0", "1.00", "1.0-1.1", "2.36-9+deb12u4", "2.36-9",
            "10", "9", "1:1.2.3-4", "8:6.9.11.60+dfsg-1.6+deb12u2", "8:6.9.10.2", "a", "1.0~"]


def test_version_order_is_dpkgs() -> None:
    """Every pair ordered as `dpkg --compare-versions` orders it (the oracle)."""
    if not shutil.which("dpkg"):
        missing("dpkg is not installed (the oracle of Debian's version order)")
    for a, b in itertools.combinations(VERSIONS, 2):
        for op, want in (("lt", -1), ("eq", 0), ("gt", 1)):
            agrees = subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0
            assert (compare_versions(a, b) == want) == agrees, (a, op, b)


def test_relations_groups_alternatives_qualifiers_and_versions() -> None:
    groups = parse_relations("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any,"
                             " libfoo1:amd64 (<< 2~), awk (> 1), Not A Name,  ,")
    assert groups == [
        [Relation("libc6", None, ">=", "2.34")],
        [Relation("debconf", None, ">=", "0.5"), Relation("debconf-2.0")],
        [Relation("python3", "any")],
        [Relation("libfoo1", "amd64", "<<", "2~")],
        [Relation("awk", None, ">=", "1")],  # the obsolete `>` means >=
    ]
    assert parse_relations("gcc [amd64] <!nocheck>") == [[Relation("gcc")]]
    assert parse_provides("awk, php-cli (= 8.2)") == [Relation("awk"),
                                                      Relation("php-cli", None, "=", "8.2")]
    assert satisfies("2.36-9", ">=", "2.34") and not satisfies("2.33", ">=", "2.34")
    assert satisfies("1.0", None, None) and not satisfies(None, "=", "1")
    assert str(Relation("libfoo1", "amd64", "<<", "2~")) == "libfoo1:amd64 (<< 2~)"


def test_relations_of_hostile_text_are_linear_and_never_fail() -> None:
    text = "a (>= " * 20_000 + "|" * 50_000 + ",b" * 50_000
    groups = parse_relations(text)
    assert groups[-1] == [Relation("b")] and len(groups) == 50_000


STATUS = b"""Package: php8.2-cli
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 8.2.7-1
Provides: php-cli, phpapi-20220829
Depends: libedit2 (>= 2.11), media-types | mime-support, php8.2-common (= 8.2.7-1),
 tzdata
Description: command-line interpreter
 Depends: this is a description line, not a field

Package: sed
Essential: yes
Status: install ok installed
Architecture: amd64
Version: 4.9-1
Pre-Depends: libacl1 (>= 2.2.23), libc6 (>= 2.34)

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1
Depends: sed
"""


def test_status_keeps_relations_essential_and_folded_lines(tmp_path: Path) -> None:
    reader = DbReader(RootFS(Path(tmp_path)), DEFAULT)
    entries = {e.name: e for e in parse_status(STATUS.decode(), reader)}
    php, sed = entries["php8.2-cli"], entries["sed"]
    assert php.depends == ("libedit2 (>= 2.11), media-types | mime-support, "
                           "php8.2-common (= 8.2.7-1), tzdata")
    assert php.provides == "php-cli, phpapi-20220829" and not php.essential
    assert sed.essential and sed.depends == "libacl1 (>= 2.2.23), libc6 (>= 2.34)"
    assert entries["gone"].state == "config-files"


def test_status_of_a_real_debian_root_agrees_with_dpkg_query() -> None:
    """Essential flags and dependency fields as dpkg-query reads the same database."""
    if not (BOOKWORM / "var/lib/dpkg/status").is_file() or not shutil.which("dpkg-query"):
        missing(f"{BOOKWORM} (scripts/setup) or dpkg-query is missing")
    from tracer.rootfs import RootFS

    out = subprocess.run(["dpkg-query", f"--admindir={BOOKWORM}/var/lib/dpkg", "-W", "-f",
                          "${Package}\\t${Essential}\\t${Pre-Depends}\\t${Depends}\\n"],
                         capture_output=True, text=True, check=True).stdout
    want = {}
    for line in out.splitlines():
        name, essential, pre, dep = line.split("\t")
        want[name] = (essential == "yes", ", ".join(x for x in (pre, dep) if x))
    status = read_status(DbReader(RootFS(BOOKWORM), DEFAULT))
    got = {e.name: (e.essential, e.depends) for e in status}
    assert got == want
    assert {"sed", "grep", "dash", "coreutils", "tar"} <= {n for n, (e, _) in got.items() if e}


def dist_image(tmp: Path) -> UnitIndex:
    site = "usr/local/lib/python3.11/site-packages"
    metadata = b"""Metadata-Version: 2.1
Name: Flask
Version: 3.0.0
Requires-Dist: Werkzeug>=3.0.0
Requires-Dist: itsdangerous (>=2.1.2)
Requires-Dist: importlib-metadata>=3.6.0; python_version < "3.10"
Requires-Dist: asgiref>=3.2 ; extra == "async"
Requires-Dist: colorama; platform_system == "Windows"
Requires-Dist: uvloop; platform_machine == "x86_64"
Requires-Dist: blinker (>=1.6.2); python_version >= "3.8"
Requires-Dist: broken ((>= 1

Requires-Dist: in-the-description
"""
    egg_requires = b"six\n\n[:python_version < '3']\nfutures\n\n[socks]\nPySocks\n"
    files = {
        f"{site}/flask-3.0.0.dist-info/METADATA": metadata,
        f"{site}/flask-3.0.0.dist-info/RECORD": b"flask/__init__.py,,\n",
        f"{site}/flask/__init__.py": b"",
        f"{site}/legacy-1.0-py3.11.egg-info/requires.txt": egg_requires,
        f"{site}/legacy-1.0-py3.11.egg-info/installed-files.txt": b"../legacy.py\n",
        f"{site}/legacy.py": b"",
        "app/node_modules/express/package.json":
            b'{"name": "express", "version": "4.18.2", "dependencies": {"accepts": "~1.3",'
            b' "@types/node": "*", "../../etc": "1", "a/b": "1"}, "devDependencies":'
            b' {"mocha": "1"}, "optionalDependencies": {"fsevents": "2"},'
            b' "peerDependencies": {"accepts": "1"}}',
        "usr/lib/ruby/gems/3.1.0/specifications/rack-test-2.1.0.gemspec":
            b'Gem::Specification.new do |s|\n'
            b'  s.add_runtime_dependency(%q<rack>.freeze, [">= 1.3"])\n'
            b'  s.add_development_dependency(%q<rspec>.freeze, ["~> 3"])\n'
            b'  s.add_dependency "rack-session", ">= 0"\nend\n',
        "usr/lib/ruby/gems/3.1.0/gems/rack-test-2.1.0/lib/rack/test.rb": b"",
    }
    flat = flat_from_layers(tmp, layer(*(M(p, data=d) for p, d in files.items())))
    return UnitIndex.build(flat.rootfs(), paths=flat.entries)


def test_requirements_of_python_node_and_gems(tmp_path: Path) -> None:
    index = dist_image(tmp_path)
    reader = DbReader(index.root, DEFAULT)
    flask = index.find("flask", "python-dist")[0]
    # extras left out; other markers taken (what the installer skipped is not installed,
    # so it adds nothing); unparseable text taken by its name; the description ignored
    assert read_requirements(reader, flask) == ["werkzeug", "itsdangerous",
                                                "importlib-metadata", "colorama", "uvloop",
                                                "blinker", "broken"]
    assert any("does not parse" in w for w in reader.warnings)
    legacy = index.find("legacy", "python-dist")[0]
    assert read_requirements(reader, legacy) == ["six", "futures"]
    assert normalize_name("Zope.Interface_X") == "zope-interface-x"
    express = index.find("express", "node")[0]
    assert read_dependencies(reader, express) == ["accepts", "@types/node", "fsevents"]
    rack_test = index.find("rack-test", "gem")[0]
    assert read_runtime_dependencies(reader, rack_test) == ["rack", "rack-session"]


@pytest.mark.parametrize("text", ["Requires-Dist: x; python_version <", "\x00\xff", ""])
def test_a_malformed_metadata_costs_a_warning_at_most(tmp_path: Path, text: str) -> None:
    site = "usr/lib/python3/dist-packages"
    flat = flat_from_layers(tmp_path, layer(
        M(f"{site}/x-1.dist-info/METADATA", data=text.encode("utf-8", "surrogateescape")),
        M(f"{site}/x-1.dist-info/RECORD", data=b"x.py,,\n"), M(f"{site}/x.py")))
    index = UnitIndex.build(flat.rootfs(), paths=flat.entries)
    reader = DbReader(index.root, DEFAULT)
    assert read_requirements(reader, index.find("x", "python-dist")[0]) in ([], ["x"])
