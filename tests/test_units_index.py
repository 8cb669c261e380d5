"""The unit index: which installed unit owns a path, on real and on crafted package databases.

The debootstrap root is a real Debian 12 system: its dpkg database is checked against
dpkg-query itself, including merged-/usr names dpkg cannot answer. Each other kind
(apk, Python, Node, gems, Perl, Composer) is read from hand-made roots laid out the way
its installer lays them out, both as a host directory and as a flattened image (the
index must answer the same from both). Hostile databases: garbage gives warnings and no
units, oversized ones are bad input naming the budget, nothing escapes the image root.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer
from prereq import missing

from tracer.budgets import DEFAULT, BudgetExceeded, Budgets
from tracer.errors import BadInput
from tracer.rootfs import RootFS
from tracer.units import UnitIndex

BOOKWORM = Path("/var/cache/tracer/rootfs-bookworm")
Tree = dict[str, "bytes | str | tuple[str, str]"]  # path -> content | "dir" | ("link", target)


def make_tree(base: Path, tree: Tree) -> RootFS:
    for path, what in tree.items():
        host = base / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        if what == "dir":
            host.mkdir(exist_ok=True)
        elif isinstance(what, tuple):
            host.symlink_to(what[1])
        else:
            assert isinstance(what, bytes)
            host.write_bytes(what)
    return RootFS(base)


def make_image(tmp: Path, tree: Tree) -> RootFS:
    tmp.mkdir(parents=True)
    members = []
    for path, what in tree.items():
        name = path.lstrip("/")
        if what == "dir":
            members.append(M(name, "dir", mode=0o755))
        elif isinstance(what, tuple):
            members.append(M(name, "symlink", linkname=what[1]))
        else:
            assert isinstance(what, bytes)
            members.append(M(name, data=what))
    return flat_from_layers(tmp, layer(*members)).rootfs()


@pytest.fixture(params=["directory", "image"])
def build(request, tmp_path: Path):
    """Build a root from a tree, as a host directory or as a flattened image's index."""

    made = 0

    def make(tree: Tree) -> RootFS:
        nonlocal made
        made += 1
        if request.param == "directory":
            return make_tree(tmp_path / f"root{made}", tree)
        return make_image(tmp_path / f"img{made}", tree)

    return make


def bookworm() -> RootFS:
    if not (BOOKWORM / "var/lib/dpkg/status").is_file():
        missing(f"{BOOKWORM} (the debootstrap root) is missing; run scripts/setup")
    return RootFS(BOOKWORM)


# -- dpkg on the real debootstrap root ---------------------------------------------------
def test_dpkg_index_agrees_with_dpkg_query_on_every_listed_file() -> None:
    root = bookworm()
    if not shutil.which("dpkg-query"):
        missing("dpkg-query is not installed on this host")
    index = UnitIndex.build(root)
    assert index.warnings == []
    dpkg_units = [u for u in index.units.values() if u.kind == "dpkg"]
    assert len(dpkg_units) > 50 and all(u.version for u in dpkg_units)
    # every non-directory path the .list files name, as dpkg names it
    listed: set[str] = set()
    for list_file in (BOOKWORM / "var/lib/dpkg/info").glob("*.list"):
        for line in list_file.read_text().splitlines():
            if line.startswith("/") and not any(c in line for c in "*?[\\") and \
                    not (BOOKWORM / line.lstrip("/")).is_dir():
                listed.add(line)
    assert len(listed) > 3000
    proc = subprocess.run(["dpkg-query", f"--admindir={BOOKWORM}/var/lib/dpkg", "-S",
                           *sorted(listed)], capture_output=True, text=True)
    answers: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("diversion by "):
            continue
        owners, _, path = line.partition(": ")
        answers[path] = {o.split(":")[0] for o in owners.split(", ")}
    assert len(answers) == len(listed), set(listed) - set(answers)
    wrong = {p: (want, [u.name for u in index.units_of(p)])
             for p, want in answers.items() if {u.name for u in index.units_of(p)} != want}
    assert wrong == {}


def test_dpkg_merged_usr_names_find_the_package_both_ways() -> None:
    index = UnitIndex.build(bookworm())
    for name in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                 "/lib/../lib/x86_64-linux-gnu/libc.so.6"):
        unit = index.unit_of(name)
        assert unit is not None and unit.name == "libc6", name
        assert unit.arch == "amd64" and unit.source.endswith("/info/libc6:amd64.list")
    files = index.unit_of("/usr/lib/x86_64-linux-gnu/libc.so.6").paths
    # stored in the image's own names: merged /usr, never the .list's /lib name
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in files
    assert not any(p.startswith("/lib/") for p in files)
    assert index.unit_of("/bin/sh").name == "dash"  # the diverting package keeps /bin/sh
    assert index.unit_of("/usr/bin/dash").name == "dash"
    assert index.unit_of("/etc/passwd") is None  # written by base-passwd's postinst
    assert index.unit_of("/no/such/file") is None


# -- dpkg: crafted databases ---------------------------------------------------------------
STATUS = (b"Package: tool\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n"
          b"Package: shim\nStatus: install ok installed\nArchitecture: all\nVersion: 2.0\n\n"
          b"Package: libm\nStatus: install ok installed\nArchitecture: amd64\n"
          b"Multi-Arch: same\nVersion: 3.0\n\n"
          b"Package: libm\nStatus: install ok installed\nArchitecture: i386\n"
          b"Multi-Arch: same\nVersion: 3.0\n\n"
          b"Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\n"
          b"Version: 0.1\nConffiles:\n /etc/gone.conf abc\n")


def dpkg_tree(status: bytes | None = STATUS) -> Tree:
    tree: Tree = {
        "/usr/bin/tool.real": b"real tool", "/usr/bin/tool": b"shim", "/usr/bin/other": b"o",
        "/usr/lib/x86_64-linux-gnu/libm.so": b"m64", "/usr/lib/i386-linux-gnu/libm.so": b"m32",
        "/etc/gone.conf": b"c", "/lib": ("link", "usr/lib"),
        "/var/lib/dpkg/info/tool.list": b"/.\n/usr\n/usr/bin\n/usr/bin/tool\n/usr/bin/other\n",
        "/var/lib/dpkg/info/shim.list": b"/usr/bin/tool\n",
        "/var/lib/dpkg/info/libm:amd64.list": b"/lib/x86_64-linux-gnu/libm.so\n",
        "/var/lib/dpkg/info/libm:i386.list": b"/lib/i386-linux-gnu/libm.so\n",
        "/var/lib/dpkg/info/gone.list": b"/etc/gone.conf\n",
        "/var/lib/dpkg/diversions": b"/usr/bin/tool\n/usr/bin/tool.real\nshim\n",
    }
    if status is not None:
        tree["/var/lib/dpkg/status"] = status
    return tree


def test_dpkg_diversions_multiarch_and_not_installed(build) -> None:
    index = UnitIndex.build(build(dpkg_tree()))
    assert index.warnings == ["/var/lib/dpkg/info: 1 .list file(s) of packages dpkg's status "
                              "does not call installed; ignored"]
    # tool's /usr/bin/tool was diverted to tool.real; the diverting shim owns /usr/bin/tool
    assert index.unit_of("/usr/bin/tool.real").name == "tool"
    assert index.unit_of("/usr/bin/tool").name == "shim"
    assert "/usr/bin/tool" not in index.units["dpkg:tool"].paths
    assert index.unit_of("/usr/bin/other").version == "1.0"
    m64 = index.unit_of("/lib/x86_64-linux-gnu/libm.so")
    m32 = index.unit_of("/usr/lib/i386-linux-gnu/libm.so")
    assert (m64.key, m32.key) == ("dpkg:libm:amd64", "dpkg:libm:i386")
    assert m64.paths == ("/usr/lib/x86_64-linux-gnu/libm.so",)
    assert index.unit_of("/etc/gone.conf") is None  # config-files: not installed
    assert index.find("libm", "dpkg") == [m64, m32] or index.find("libm", "dpkg") == [m32, m64]


def test_dpkg_local_diversion_moves_every_package(build) -> None:
    tree = dpkg_tree()
    tree["/var/lib/dpkg/diversions"] = b"/usr/bin/tool\n/usr/bin/tool.real\n:\n"
    index = UnitIndex.build(build(tree))
    assert index.unit_of("/usr/bin/tool.real").name == "shim"  # shim sorts before tool
    assert {u.name for u in index.units_of("/usr/bin/tool.real")} == {"shim", "tool"}
    assert index.unit_of("/usr/bin/tool") is None


def test_dpkg_without_status_counts_every_list_and_says_so(build) -> None:
    index = UnitIndex.build(build(dpkg_tree(status=None)))
    assert any("status is missing" in w for w in index.warnings)
    assert index.unit_of("/etc/gone.conf").name == "gone"
    assert index.unit_of("/usr/bin/other").version is None


# -- apk ----------------------------------------------------------------------------------
APK_DB = (b"C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nF:lib\nR:ld-musl-x86_64.so.1\n"
          b"R:libc.musl-x86_64.so.1\n\n"
          b"P:busybox\nV:1.36.1-r5\nF:bin\nR:busybox\nF:etc\nR:securetty\na:0:0:755\n\n")


def test_apk_installed_database(build) -> None:
    root = build({"/lib/ld-musl-x86_64.so.1": b"ld", "/lib/libc.musl-x86_64.so.1": b"c",
                  "/bin/busybox": b"bb", "/etc/securetty": b"s",
                  "/lib/apk/db/installed": APK_DB})
    index = UnitIndex.build(root)
    assert index.warnings == []
    musl = index.unit_of("/lib/libc.musl-x86_64.so.1")
    assert (musl.kind, musl.name, musl.version) == ("apk", "musl", "1.2.4-r2")
    assert set(musl.paths) == {"/lib", "/lib/ld-musl-x86_64.so.1",
                                         "/lib/libc.musl-x86_64.so.1"}
    assert index.unit_of("/etc/securetty").name == "busybox"
    assert musl.label == "package musl"


# -- language packages ----------------------------------------------------------------------
SITE = "/usr/local/lib/python3.11/site-packages"
PY = {
    "/usr/local/lib/python3.11/os.py": b"", "/usr/local/lib/python3.11/csv.py": b"",
    "/usr/local/lib/python3.11/__pycache__/csv.cpython-311.pyc": b"pyc",
    "/usr/local/lib/python3.11/encodings/__init__.py": b"",
    "/usr/local/lib/python3.11/encodings/utf_8.py": b"",
    "/usr/local/lib/python3.11/encodings/iso8859_15.py": b"",
    "/usr/local/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc": b"",
    "/usr/local/lib/python3.11/lib-dynload/_csv.cpython-311-x86_64-linux-gnu.so": b"",
    f"{SITE}/requests/__init__.py": b"", f"{SITE}/requests/api.py": b"",
    f"{SITE}/requests-2.31.0.dist-info/METADATA": b"",
    f"{SITE}/requests-2.31.0.dist-info/RECORD":
        b"requests/__init__.py,sha256=x,1\n\"requests/api.py\",,\n"
        b"requests-2.31.0.dist-info/RECORD,,\n../../../bin/req,,\n",
    "/usr/local/bin/req": b"#!/usr/local/bin/python3\n",
    f"{SITE}/oldpkg/__init__.py": b"",
    f"{SITE}/oldpkg-0.9-py3.11.egg-info/installed-files.txt":
        b"../oldpkg/__init__.py\nPKG-INFO\n",
    f"{SITE}/oldpkg-0.9-py3.11.egg-info/PKG-INFO": b"",
}


def test_python_distributions_and_stdlib_packages(build) -> None:
    index = UnitIndex.build(build(PY))
    assert index.warnings == []
    req = index.unit_of(f"{SITE}/requests/api.py")
    assert (req.kind, req.name, req.version) == ("python-dist", "requests", "2.31.0")
    assert "/usr/local/bin/req" in req.paths  # ../../../bin relative to the site
    assert req.label == "python distribution requests 2.31.0"
    old = index.unit_of(f"{SITE}/oldpkg/__init__.py")
    assert (old.name, old.version) == ("oldpkg", "0.9")
    assert f"{SITE}/oldpkg-0.9-py3.11.egg-info/PKG-INFO" in old.paths
    # the stdlib: a package directory is one unit, a top-level module another
    enc = index.unit_of("/usr/local/lib/python3.11/encodings/utf_8.py")
    assert enc.kind == "python-stdlib" and enc.version == "3.11"
    assert enc.name == "/usr/local/lib/python3.11/encodings"
    assert "/usr/local/lib/python3.11/encodings/iso8859_15.py" in enc.paths
    assert "/usr/local/lib/python3.11/encodings" in enc.paths
    csv_mod = index.unit_of("/usr/local/lib/python3.11/csv.py")
    assert set(csv_mod.paths) == {
        "/usr/local/lib/python3.11/csv.py",
        "/usr/local/lib/python3.11/__pycache__/csv.cpython-311.pyc"}
    dyn = index.unit_of("/usr/local/lib/python3.11/lib-dynload/"
                        "_csv.cpython-311-x86_64-linux-gnu.so")
    assert dyn is not None and len(dyn.paths) == 1
    # site-packages below the stdlib directory is not stdlib
    assert all(u.kind != "python-stdlib" for u in index.units_of(f"{SITE}/requests/api.py"))


def test_dpkg_owner_wins_over_the_stdlib_layout(build) -> None:
    tree = {k.replace("/usr/local/lib", "/usr/lib"): v for k, v in PY.items()
            if "site-packages" not in k}
    tree["/var/lib/dpkg/info/libpython3.11-stdlib:amd64.list"] = (
        b"/usr/lib/python3.11/encodings/utf_8.py\n"
        b"/usr/lib/python3.11/encodings/iso8859_15.py\n")
    tree["/var/lib/dpkg/status"] = (b"Package: libpython3.11-stdlib\nStatus: install ok installed"
                                    b"\nArchitecture: amd64\nVersion: 3.11.2-6\n")
    index = UnitIndex.build(build(tree))
    unit = index.unit_of("/usr/lib/python3.11/encodings/utf_8.py")
    assert (unit.kind, unit.name) == ("dpkg", "libpython3.11-stdlib")
    assert [u.kind for u in index.units_of("/usr/lib/python3.11/encodings/utf_8.py")] == [
        "dpkg", "python-stdlib"]
    # what dpkg does not list still has its directory-level unit
    assert index.unit_of("/usr/lib/python3.11/encodings/__init__.py").kind == "python-stdlib"


def test_node_packages_are_the_directories_npm_installs_into(build) -> None:
    nm = "/app/node_modules"
    root = build({
        f"{nm}/express/package.json": b'{"name": "express", "version": "4.18.2"}',
        f"{nm}/express/index.js": b"", f"{nm}/express/lib/router/index.js": b"",
        f"{nm}/express/lib/esm/package.json": b'{"type": "module"}',
        f"{nm}/express/node_modules/debug/package.json": b'{"name":"debug","version":"2.6.9"}',
        f"{nm}/express/node_modules/debug/src/index.js": b"",
        f"{nm}/@babel/core/package.json": b'{"name": "@babel/core", "version": "7.23.0"}',
        f"{nm}/@babel/core/lib/index.js": b"",
        f"{nm}/.bin/tool": ("link", "../express/index.js"),
        f"{nm}/broken/package.json": b"{not json", f"{nm}/broken/x.js": b"",
        f"{nm}/nomanifest/x.js": b"",
    })
    index = UnitIndex.build(root)
    express = index.unit_of(f"{nm}/express/lib/router/index.js")
    assert (express.kind, express.name, express.version) == ("node", "express", "4.18.2")
    assert index.unit_of(f"{nm}/express/lib/esm/package.json") == express
    assert f"{nm}/express/node_modules/debug/src/index.js" not in express.paths
    assert index.unit_of(f"{nm}/express/node_modules/debug/src/index.js").name == "debug"
    assert index.unit_of(f"{nm}/@babel/core/lib/index.js").name == "@babel/core"
    assert index.unit_of(f"{nm}/.bin/tool") is None
    assert index.unit_of(f"{nm}/nomanifest/x.js") is None
    broken = index.unit_of(f"{nm}/broken/x.js")  # unparsable manifest: named after its dir
    assert broken is not None and broken.name == "broken"
    assert any("not valid JSON" in w for w in index.warnings)


def test_gems_perl_packlists_and_composer(build) -> None:
    home = "/usr/local/bundle"
    root = build({
        f"{home}/specifications/rack-3.0.8.gemspec": b"spec",
        f"{home}/gems/rack-3.0.8/lib/rack.rb": b"", f"{home}/gems/rack-3.0.8/lib/rack/x.rb": b"",
        f"{home}/specifications/nokogiri-1.15.4-x86_64-linux.gemspec": b"spec",
        f"{home}/gems/nokogiri-1.15.4-x86_64-linux/lib/nokogiri.rb": b"",
        f"{home}/extensions/x86_64-linux/3.2.0/nokogiri-1.15.4-x86_64-linux/gem.build_complete":
            b"",
        f"{home}/specifications/default/json-2.6.3.gemspec": b"default gem",
        "/usr/local/lib/x86_64-linux-gnu/perl/5.36.0/auto/JSON/XS/.packlist":
            b"/usr/local/lib/x86_64-linux-gnu/perl/5.36.0/JSON/XS.pm\n"
            b"/usr/local/bin/json_xs type=file\n"
            b"/usr/local/lib/x86_64-linux-gnu/perl/5.36.0/auto/JSON/XS/XS.so\n",
        "/usr/local/lib/x86_64-linux-gnu/perl/5.36.0/JSON/XS.pm": b"",
        "/usr/local/bin/json_xs": b"",
        "/usr/local/lib/x86_64-linux-gnu/perl/5.36.0/auto/JSON/XS/XS.so": b"",
        "/srv/app/vendor/composer/installed.json":
            b'{"packages": [{"name": "monolog/monolog", "version": "3.5.0",'
            b' "install-path": "../monolog/monolog"}, {"name": "psr/log", "version": "3.0.0"},'
            b' 42, {"name": 7}]}',
        "/srv/app/vendor/monolog/monolog/src/Logger.php": b"",
        "/srv/app/vendor/psr/log/src/LoggerInterface.php": b"",
        "/srv/app/vendor/autoload.php": b"",
    })
    index = UnitIndex.build(root)
    rack = index.unit_of(f"{home}/gems/rack-3.0.8/lib/rack/x.rb")
    assert (rack.kind, rack.name, rack.version) == ("gem", "rack", "3.0.8")
    assert f"{home}/specifications/rack-3.0.8.gemspec" in rack.paths
    noko = index.unit_of(f"{home}/extensions/x86_64-linux/3.2.0/nokogiri-1.15.4-x86_64-linux/"
                         "gem.build_complete")
    assert (noko.name, noko.version) == ("nokogiri", "1.15.4-x86_64-linux")
    assert index.unit_of(f"{home}/specifications/default/json-2.6.3.gemspec") is None
    xs = index.unit_of("/usr/local/bin/json_xs")
    assert (xs.kind, xs.name) == ("perl", "JSON::XS")
    assert len(xs.paths) == 4  # three listed paths and the .packlist itself
    mono = index.unit_of("/srv/app/vendor/monolog/monolog/src/Logger.php")
    assert (mono.kind, mono.name, mono.version) == ("composer", "monolog/monolog", "3.5.0")
    assert index.unit_of("/srv/app/vendor/psr/log/src/LoggerInterface.php").name == "psr/log"
    assert index.unit_of("/srv/app/vendor/autoload.php") is None


# -- hostile databases -------------------------------------------------------------------
GARBAGE = bytes(range(256)) * 40


@pytest.mark.parametrize("where", [
    "/var/lib/dpkg/status", "/var/lib/dpkg/diversions", "/var/lib/dpkg/info/tool.list",
    "/lib/apk/db/installed", f"{SITE}/x-1.dist-info/RECORD",
    "/app/node_modules/x/package.json", "/srv/vendor/composer/installed.json",
    "/usr/lib/perl5/auto/X/.packlist", "/usr/local/lib/python3.11/os.py",
])
def test_garbage_databases_never_crash(build, where: str) -> None:
    tree = dpkg_tree()
    tree[where] = GARBAGE
    tree["/app/node_modules/x/index.js"] = b""
    index = UnitIndex.build(build(tree))
    for unit in index.units.values():
        assert all(p.startswith("/") for p in unit.paths)


def test_hostile_entries_are_skipped_with_warnings(build) -> None:
    tree = dpkg_tree()
    tree["/var/lib/dpkg/info/tool.list"] = (b"/usr/bin/other\n/usr/bin/\0nul\n/"
                                            + b"a" * 5000 + b"\n")
    tree["/app/node_modules/deep/package.json"] = b"[" * 100_000
    tree["/app/node_modules/deep/index.js"] = b""
    tree["/srv/vendor/composer/installed.json"] = b'{"packages": {"not": "a list"}}'
    index = UnitIndex.build(build(tree))
    assert index.units["dpkg:tool"].paths == ("/usr/bin/other",)
    assert index.unit_of("/app/node_modules/deep/index.js").name == "deep"
    text = "\n".join(index.warnings)
    for words in ("NUL byte", "longer than 4096", "not valid JSON", "no package list"):
        assert words in text, words


@pytest.mark.parametrize("text", [
    b"Package: tool\n",  # no status
    b"Status: install ok installed\n",  # no name
    b"Package: tool\nStatus: install\n\n\n\nPackage: \nStatus: a b c\n",
    b"\n\n\n",
])
def test_malformed_dpkg_status_is_a_warning(build, text: bytes) -> None:
    index = UnitIndex.build(build(dpkg_tree(status=text)))
    assert index.unit_of("/usr/bin/other") is None  # tool is not installed per this status
    if text.strip():
        assert any("stanza" in w for w in index.warnings), index.warnings


def test_database_paths_stay_inside_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("host file")
    root = make_tree(tmp_path / "root", {
        "/var/lib/dpkg/status": b"Package: evil\nStatus: install ok installed\n",
        "/var/lib/dpkg/info/evil.list": f"/../../../..{outside}\n/etc/x\n".encode(),
        "/etc": ("link", str(tmp_path)),  # an absolute link restarts at the image root
        "/lib/apk/db/installed": b"P:evil2\nF:../../..\nR:secret\n",
    })
    index = UnitIndex.build(root)
    for unit in index.units.values():
        for path in unit.paths:
            assert not path.startswith("/..") and not path.startswith(str(tmp_path) + "/root")
    assert index.unit_of(str(outside)).name in ("evil", "evil2")  # an in-image name only


def test_oversized_databases_are_bad_input_naming_the_budget(build) -> None:
    tree = dpkg_tree()
    tree["/var/lib/dpkg/info/tool.list"] = b"/usr/bin/other\n" * 2000
    root = build(tree)
    with pytest.raises(BudgetExceeded) as exc:
        UnitIndex.build(root, budgets=DEFAULT.override({"entries": 1000}, "test"))
    assert "entries" in str(exc.value)
    assert isinstance(exc.value, BadInput)
    small = Budgets(json_bytes=64)
    tree["/app/node_modules/x/package.json"] = b'{"name": "x", "pad": "' + b"a" * 100 + b'"}'
    with pytest.raises(BudgetExceeded, match="json_bytes"):
        UnitIndex.build(build(tree), budgets=small)


def test_package_db_bytes_bounds_all_reads_together(build) -> None:
    with pytest.raises(BudgetExceeded, match="package_db_bytes"):
        UnitIndex.build(build(dpkg_tree()), budgets=Budgets(package_db_bytes=300))
    assert UnitIndex.build(build(dpkg_tree()), budgets=Budgets(package_db_bytes=4096)
                           ).unit_of("/usr/bin/other") is not None


# -- keep.packages reads through the same databases --------------------------------------
def test_keep_packages_uses_status_diversions_and_image_names(build) -> None:
    from tracer.analysis.packages import package_files

    files = package_files(build(dpkg_tree()), ["tool", "libm:i386"])
    assert files["tool"] == ["/usr", "/usr/bin", "/usr/bin/tool.real", "/usr/bin/other"]
    assert files["libm:i386"] == ["/usr/lib/i386-linux-gnu/libm.so"]
    with pytest.raises(BadInput, match="not installed in the image.*gone"):
        package_files(build(dpkg_tree()), ["gone"])  # only config files are left
    real = package_files(bookworm(), ["libc6"])["libc6"]
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in real
