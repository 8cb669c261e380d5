"""keep.binaries entries expanded inside the image: globs, bare names on PATH, no match.

The image is a real one: layers written by the test, flattened by tracer, read both from
its index (IndexRootFS, what the pipeline uses) and from the extracted tree (RootFS); its
absolute links (/etc/alternatives/...) exist only inside it, so a host lookup would
answer differently. The debootstrap root checks the same on a real distribution.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer
from prereq import missing as prereq_missing

from tracer.errors import BadInput
from tracer.rootfs import RootFS
from tracer.static import Resolver
from tracer.static.closure import first_needs
from tracer.static.roots import expand_binaries

BOOKWORM = Path("/var/cache/tracer/rootfs-bookworm")
SCRIPT = b"#!/bin/sh\necho hi\n"


def _x(name: str) -> M:
    return M(name, data=SCRIPT, mode=0o755)


def _d(name: str) -> M:
    return M(name + "/", "dir", mode=0o755)


TREE = layer(
    _d("usr"), _d("usr/bin"), _d("usr/local"), _d("usr/local/bin"), _d("etc"),
    _d("etc/alternatives"), _d("opt"), _d("opt/app"), _d("opt/app/v1"), _d("opt/app/v1/bin"),
    _d("opt/app/v1/lib"), _d("usr/bin/memcdir"),
    _x("usr/bin/memcached"), _x("usr/bin/memcflush"), _x("usr/bin/memcstat"),
    _x("usr/local/bin/memcflush"),
    M("usr/bin/memcat", "symlink", linkname="memcstat"),
    M("usr/bin/memcalt", "symlink", linkname="/etc/alternatives/memcalt"),
    M("etc/alternatives/memcalt", "symlink", linkname="/usr/bin/memcstat"),
    M("usr/bin/memcbroken", "symlink", linkname="/nonexistent"),
    M("usr/bin/memcloop", "symlink", linkname="memcloop"),
    M("usr/bin/memcdata", data=b"not a program\n", mode=0o644),
    M("bin", "symlink", linkname="usr/bin"),
    _x("opt/app/v1/bin/tool"), M("opt/app/v1/lib/libx.so", data=b"\x7fELF"),
    M("opt/app/current", "symlink", linkname="v1"),
    M("opt/app/loop", "symlink", linkname="."),
)
PATH = "/usr/local/bin:/usr/bin"


@pytest.fixture(scope="module", params=["index", "extracted"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RootFS:
    flat = flat_from_layers(tmp_path_factory.mktemp("img"), TREE,
                            extract=request.param == "extracted")
    return flat.rootfs() if request.param == "index" else RootFS(flat.root)


@pytest.mark.parametrize("entry, want", [
    # links followed inside the image (memcalt -> /etc/alternatives -> memcstat); not kept:
    # a directory, a dangling link, a loop
    ("/usr/bin/memc*", ["/usr/bin/memcached", "/usr/bin/memcalt", "/usr/bin/memcat",
                        "/usr/bin/memcdata", "/usr/bin/memcflush", "/usr/bin/memcstat"]),
    ("/bin/memcache?", ["/bin/memcached"]),  # through the /bin link, spelled as written
    ("/usr/bin/memc[fs]*", ["/usr/bin/memcflush", "/usr/bin/memcstat"]),
    ("/usr/bin/memc[!a-e]*", ["/usr/bin/memcflush", "/usr/bin/memcstat"]),
    ("/opt/**/bin/*", ["/opt/app/v1/bin/tool"]),  # ** does not walk into links (or loops)
    ("/opt/app/current/bin/*", ["/opt/app/current/bin/tool"]),  # a link before the glob
    ("/opt/**/*.so", ["/opt/app/v1/lib/libx.so"]),
    ("/opt/app/**", ["/opt/app/v1/bin/tool", "/opt/app/v1/lib/libx.so"]),
    ("/*/app/v1/bin/tool", ["/opt/app/v1/bin/tool"]),
    ("/usr/bin/memcached", ["/usr/bin/memcached"]),
    ("/usr/bin/memcalt", ["/usr/bin/memcalt"]),
    ("memcflush", ["/usr/local/bin/memcflush"]),  # the first on PATH, as execvp
    ("memcat", ["/usr/bin/memcat"]),
    ("memc*", ["/usr/bin/memcached", "/usr/bin/memcalt", "/usr/bin/memcat",
               "/usr/bin/memcstat", "/usr/local/bin/memcflush"]),  # programs only, first wins
    ("/usr/bin/memcdir", []), ("/usr/bin/memcbroken", []), ("/usr/bin/memcloop", []),
    ("/usr/bin/nothing*", []), ("nosuchprog", []), ("memcdata", []), ("/nowhere/*", []),
])
def test_entries_expand_inside_the_image(image: RootFS, entry: str, want: list[str]) -> None:
    assert expand_binaries(image, [entry], PATH).matched == {entry: want}


def test_unmatched_entries_are_reported_by_name(image: RootFS) -> None:
    entries = ["/usr/bin/memc*", "/usr/bin/memx*", "nosuchprog", "/usr/bin/memcached"]
    m = expand_binaries(image, entries, PATH)
    assert m.unmatched == ["/usr/bin/memx*", "nosuchprog"]
    with pytest.raises(BadInput, match=r"keep.binaries: '/usr/bin/memx\*', 'nosuchprog' "
                                       "matches nothing in the image") as err:
        m.require_all()
    assert err.value.exit_code == 2
    expand_binaries(image, ["/usr/bin/memc*"], PATH).require_all()  # all matched: no error


def test_matches_are_resolver_roots_links_and_targets_kept(image: RootFS) -> None:
    m = expand_binaries(image, ["/usr/bin/memca*", "memcached"], PATH)
    assert m.paths() == ["/usr/bin/memcached", "/usr/bin/memcalt", "/usr/bin/memcat"]
    c = Resolver(image, {"PATH": PATH}).closure(m.paths())
    assert {"/usr/bin/memcalt", "/etc/alternatives/memcalt", "/usr/bin/memcstat",
            "/usr/bin/memcat"} <= set(c.files)
    assert {x.name for x in c.missing} == {"/bin/sh"}  # the scripts' interpreter: absent


def test_on_a_debootstrap_root() -> None:
    if not (BOOKWORM / "usr/bin").is_dir():
        prereq_missing(f"{BOOKWORM} missing; run scripts/setup")
    fs = RootFS(BOOKWORM)
    m = expand_binaries(fs, ["/bin/gz*", "awk", "/usr/lib/x86_64-linux-gnu/libc.so.*",
                             "/usr/sbin/nosuch*"])
    assert {"/bin/gzip", "/bin/gzexe"} <= set(m.matched["/bin/gz*"])
    assert all(p.startswith("/bin/gz") for p in m.matched["/bin/gz*"])
    assert m.matched["awk"] == ["/usr/bin/awk"]
    assert m.matched["/usr/lib/x86_64-linux-gnu/libc.so.*"] == [
        "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    assert m.unmatched == ["/usr/sbin/nosuch*"]


def test_the_reasons_shown_do_not_depend_on_the_order_roots_ran_in() -> None:
    """A library many programs need shows the same three reasons whichever program the
    resolver met first (the order programs ran in differs run to run and engine to engine,
    and the keep-list is diffed between runs)."""
    if not (BOOKWORM / "usr/bin").is_dir():
        prereq_missing(f"{BOOKWORM} missing; run scripts/setup")
    fs = RootFS(BOOKWORM)
    roots = ["/usr/bin/tar", "/usr/bin/gzip", "/usr/bin/ls", "/usr/bin/sed", "/usr/bin/grep"]
    shown = []
    for order in (roots, roots[::-1]):
        closure = Resolver(fs, {"PATH": "/usr/bin"}).closure(order)
        libc = next(p for p in closure.files if p.endswith("/libc.so.6"))
        shown.append([n.chain for n in first_needs(closure.files[libc])])
    assert shown[0] == shown[1]
    assert [c[0] for c in shown[0]] == ["/usr/bin/grep", "/usr/bin/gzip", "/usr/bin/ls"]
