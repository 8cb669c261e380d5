"""The keep-list: evidence merged, exclude applied, closed over links, parents, hardlinks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer.analysis.keeplist import KeepListBuilder, Reason, compile_globs, first_match, size_of
from tracer.analysis.packages import package_files
from tracer.rootfs import RootFS


@dataclass
class E:
    kind: str
    linkname: str = ""
    size: int = 0


def make_root(tmp_path: Path) -> tuple[Path, dict[str, E]]:
    """A small merged-/usr root: /lib -> usr/lib, a library symlink chain, a hardlink pair."""
    root = tmp_path / "root"
    for d in ("usr/lib/x86_64-linux-gnu", "usr/bin", "etc/app/conf.d", "usr/share/doc/app",
              "var/lib/dpkg/info", "data"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/bin", root / "bin")
    lib = root / "usr/lib/x86_64-linux-gnu"
    (lib / "libz.so.1.2.13").write_bytes(b"z" * 100)
    os.symlink("libz.so.1.2.13", lib / "libz.so.1")
    (root / "usr/bin/perl").write_bytes(b"p" * 50)
    os.link(root / "usr/bin/perl", root / "usr/bin/perl5.36")
    (root / "etc/app/main.conf").write_text("x")
    (root / "etc/app/conf.d/a.conf").write_text("a")
    (root / "usr/share/doc/app/README").write_text("doc")
    os.symlink("/etc/app/main.conf", root / "data/conf")
    (root / "var/lib/dpkg/info/tzdata.list").write_text("/.\n/usr\n/usr/share/doc/app/README\n")
    entries: dict[str, E] = {"/": E("dir")}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            host = Path(dirpath) / name
            path = "/" + str(host.relative_to(root))
            if host.is_symlink():
                entries[path] = E("symlink", os.readlink(host))
            elif host.is_dir():
                entries[path] = E("dir")
            else:
                entries[path] = E("file", size=host.stat().st_size)
    entries["/usr/bin/perl5.36"] = E("hardlink", "/usr/bin/perl")
    return root, entries


def test_globs_star_within_name_doublestar_across_dirs() -> None:
    globs = compile_globs(["/etc/nginx/**", "/usr/lib/*.so", "/a/**/b"])
    assert first_match("/etc/nginx", globs) == "/etc/nginx/**"
    assert first_match("/etc/nginx/conf.d/x.conf", globs) == "/etc/nginx/**"
    assert first_match("/etc/nginxx", globs) is None
    assert first_match("/usr/lib/libx.so", globs) == "/usr/lib/*.so"
    assert first_match("/usr/lib/sub/libx.so", globs) is None
    assert first_match("/a/b", globs) == "/a/**/b" and first_match("/a/q/r/b", globs)


def test_path_through_symlinks_keeps_every_link_and_the_target(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root))
    b.add("/lib/x86_64-linux-gnu/libz.so.1", Reason("traced", "openat by /app in run"))
    kl = b.build()
    assert "/lib" in kl.kept and kl.kept["/lib"][0].kind == "symlink"
    assert "/usr/lib/x86_64-linux-gnu/libz.so.1" in kl.kept
    assert kl.kept["/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"][0].kind == "symlink"
    # parents are kept and say why
    assert kl.kept["/usr/lib/x86_64-linux-gnu"][0].kind == "parent"
    assert kl.counts()["traced"] == 1


def test_absolute_symlink_resolves_inside_the_image(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root))
    b.add("/data/conf", Reason("traced", "openat"))
    kl = b.build()
    assert "/etc/app/main.conf" in kl.kept and "/data/conf" in kl.kept


def test_exclude_removes_unless_keep_paths_names_it(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), keep_paths=["/etc/app/**"],
                        exclude=["/usr/share/doc/**", "/etc/app/conf.d/**"])
    b.add("/usr/share/doc/app/README", Reason("traced", "openat"))
    b.add_keep_paths()
    kl = b.build()
    assert "/usr/share/doc/app/README" not in kl.kept
    assert kl.excluded["/usr/share/doc/app/README"].rule == "/usr/share/doc/**"
    assert "/etc/app/conf.d/a.conf" in kl.kept  # keep.paths wins over exclude
    assert kl.kept["/etc/app/conf.d/a.conf"] == [Reason("keep.paths", "/etc/app/**")]


def test_hardlink_groups_are_kept_whole(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    pair = ("/usr/bin/perl", "/usr/bin/perl5.36")
    b = KeepListBuilder(entries, RootFS(root),
                        hardlink_group=lambda p: pair if p in pair else (p,))
    b.add("/bin/perl5.36", Reason("elf", "root"))
    kl = b.build()
    assert "/usr/bin/perl" in kl.kept and kl.kept["/usr/bin/perl"][0].kind == "hardlink"
    # content counted once: the hardlink adds no bytes
    assert size_of(entries, kl.kept) == 50


def test_missing_paths_are_recorded_not_kept(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root))
    b.add("/etc/app/nope.conf", Reason("traced", "openat"))
    kl = b.build()
    assert "/etc/app/nope.conf" not in kl.kept and "/etc/app/nope.conf" in kl.missing


def test_keeplist_file_is_sorted_with_reasons(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root))
    b.add("/etc/app/main.conf", Reason("traced", "openat by /app in run"))
    b.add("/etc/app/main.conf", Reason("keep.packages", "app"))
    kl = b.build()
    out = tmp_path / "r.keeplist"
    kl.write(out)
    lines = out.read_text().splitlines()
    assert lines == sorted(lines)
    assert "/etc/app/main.conf\tkeep.packages: app; traced: openat by /app in run" in lines
    assert "/etc\tparent: holds /etc/app/main.conf" in lines or any(
        line.startswith("/etc\tparent: ") for line in lines)


def test_the_keep_list_reads_the_same_whatever_order_evidence_came_in(tmp_path: Path) -> None:
    """Programs run in a different order run to run (and engine to engine): the parent and
    hardlink reasons, which name one path, must not follow that order, or two nightly
    keep-lists of the same image differ."""
    root, entries = make_root(tmp_path)
    uses = ["/etc/app/main.conf", "/etc/app/conf.d/a.conf", "/usr/bin/perl5.36",
            "/usr/bin/perl", "/lib/x86_64-linux-gnu/libz.so.1"]
    written = []
    for n, order in enumerate((uses, uses[::-1])):
        b = KeepListBuilder(entries, RootFS(root))
        for path in order:
            b.add(path, Reason("traced", "openat by /app in run"))
        out = tmp_path / f"{n}.keeplist"
        b.build().write(out)
        written.append(out.read_text())
    assert written[0] == written[1]
    lines = written[0].splitlines()
    assert "/etc/app\tparent: holds /etc/app/conf.d/a.conf" in lines


def test_dpkg_package_files(tmp_path: Path) -> None:
    root, _ = make_root(tmp_path)
    files = package_files(RootFS(root), ["tzdata"])
    assert files == {"tzdata": ["/usr", "/usr/share/doc/app/README"]}


def test_unknown_package_is_bad_input(tmp_path: Path) -> None:
    from tracer.errors import BadInput

    root, _ = make_root(tmp_path)
    with pytest.raises(BadInput, match="keep.packages: not installed in the image.*nosuch"):
        package_files(RootFS(root), ["nosuch"])


def test_keep_paths_written_through_a_symlink_match_the_real_files(tmp_path: Path) -> None:
    """Under merged /usr, `/lib/x86_64-linux-gnu/**` names files the index has in /usr/lib."""
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root),
                        keep_paths=["/lib/x86_64-linux-gnu/**", "/etc/app/*.conf", "/nope/**"])
    b.add_keep_paths()
    kl = b.build()
    assert "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13" in kl.kept
    assert kl.kept["/usr/lib/x86_64-linux-gnu/libz.so.1"] == [
        Reason("keep.paths", "/lib/x86_64-linux-gnu/**")]
    assert "/lib" in kl.kept  # the link the operator wrote keeps working
    assert "/etc/app/main.conf" in kl.kept and "/etc/app/conf.d/a.conf" not in kl.kept
    assert b.unmatched_keep_paths == ["/nope/**"]


# ---- the closure follows every kept symlink, however it came to be kept ---------------

def link_root(tmp_path: Path) -> tuple[Path, dict[str, E]]:
    """Links of every shape: relative, absolute, to a directory, a chain over three names,
    one climbing with `..`, and one dangling."""
    root, entries = make_root(tmp_path)
    (root / "opt/v1/lib").mkdir(parents=True)
    (root / "opt/v1/lib/mod.so").write_bytes(b"m")
    os.symlink("v1", root / "opt/current")  # -> a directory
    os.symlink("/usr/bin/perl", root / "usr/bin/abs")  # absolute
    os.symlink("hop2", root / "usr/bin/hop1")
    os.symlink("../bin/hop3", root / "usr/bin/hop2")  # climbs out and back
    os.symlink("perl", root / "usr/bin/hop3")
    os.symlink("nowhere", root / "usr/bin/dangling")
    for name in ("current",):
        entries[f"/opt/{name}"] = E("symlink", os.readlink(root / "opt" / name))
    entries.update({"/opt": E("dir"), "/opt/v1": E("dir"), "/opt/v1/lib": E("dir"),
                    "/opt/v1/lib/mod.so": E("file", size=1)})
    for name in ("abs", "hop1", "hop2", "hop3", "dangling"):
        entries[f"/usr/bin/{name}"] = E("symlink", os.readlink(root / "usr/bin" / name))
    return root, entries


LINK_CASES = [
    ("/usr/bin/abs", ["/usr/bin/perl"]),
    ("/usr/bin/hop1", ["/usr/bin/hop2", "/usr/bin/hop3", "/usr/bin/perl"]),
    ("/opt/current", ["/opt/v1"]),
    ("/lib", ["/usr/lib"]),
]


@pytest.mark.parametrize("link,targets", LINK_CASES)
@pytest.mark.parametrize("how", ["keep.paths", "elf", "traced"])
def test_a_kept_symlink_keeps_what_it_points_to(tmp_path: Path, link: str,
                                                targets: list[str], how: str) -> None:
    """Whatever kept the link (a keep.paths glob matching only the link, an ELF need, a
    traced use), the written image must not hold a dangling link."""
    root, entries = link_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), keep_paths=[link] if how == "keep.paths" else [])
    if how == "keep.paths":
        b.add_keep_paths()
    else:
        b.add(link, Reason(how, "x"))
    kl = b.build()
    assert link in kl.kept
    for target in targets:
        assert target in kl.kept, (target, sorted(kl.kept))
    assert any(r.kind == "symlink" and r.detail.endswith(f"of {link}")
               for r in kl.kept[targets[-1]]), kl.kept[targets[-1]]


def test_a_dangling_symlink_is_kept_alone(tmp_path: Path) -> None:
    root, entries = link_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root))
    b.add("/usr/bin/dangling", Reason("traced", "readlink"))
    kl = b.build()
    assert "/usr/bin/dangling" in kl.kept and "/usr/bin/nowhere" not in kl.kept


def test_a_symlink_kept_through_a_hardlink_group_is_followed_too(tmp_path: Path) -> None:
    root, entries = link_root(tmp_path)
    group = ("/usr/bin/perl", "/usr/bin/perl5.36")
    b = KeepListBuilder(entries, RootFS(root),
                        hardlink_group=lambda p: group if p in group else (p,))
    b.add("/usr/bin/hop3", Reason("elf", "x"))
    kl = b.build()
    assert {"/usr/bin/perl", "/usr/bin/perl5.36"} <= set(kl.kept)


# ---- exclude loses to keep.paths whenever ANY reason is keep.paths ---------------------

ORDERS = [
    [Reason("keep.paths", "/usr/share/doc/**"), Reason("traced", "openat")],
    [Reason("traced", "openat"), Reason("keep.paths", "/usr/share/doc/**")],
    [Reason("elf", "a -> b"), Reason("traced", "openat"), Reason("keep.paths", "/x/**")],
    [Reason("symlink", "on the way"), Reason("keep.paths", "/x/**"), Reason("elf", "y")],
]


@pytest.mark.parametrize("reasons", ORDERS)
def test_keep_paths_anywhere_among_the_reasons_beats_exclude(tmp_path: Path,
                                                               reasons: list[Reason]) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), exclude=["/usr/share/doc/**"])
    for reason in reasons:
        b.add("/usr/share/doc/app/README", reason)
    kl = b.build()
    assert "/usr/share/doc/app/README" in kl.kept
    assert "/usr/share/doc/app/README" not in kl.excluded


@pytest.mark.parametrize("reasons", [[r for r in order if r.kind != "keep.paths"]
                                     for order in ORDERS])
def test_without_a_keep_paths_reason_exclude_removes_whatever_the_order(
        tmp_path: Path, reasons: list[Reason]) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), exclude=["/usr/share/doc/**"])
    for reason in reasons:
        b.add("/usr/share/doc/app/README", reason)
    kl = b.build()
    assert "/usr/share/doc/app/README" not in kl.kept
    assert list(kl.excluded["/usr/share/doc/app/README"].reasons) == reasons


def test_keep_paths_glob_added_after_other_evidence_still_wins(tmp_path: Path) -> None:
    """The pipeline adds traced evidence first and keep.paths after: the glob's reason is
    then the second one, and must still win over exclude."""
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), keep_paths=["/usr/share/doc/app/*"],
                        exclude=["/usr/share/doc/**"])
    b.add("/usr/share/doc/app/README", Reason("traced", "openat by /app in run"))
    b.add_keep_paths()
    kl = b.build()
    assert [r.kind for r in kl.kept["/usr/share/doc/app/README"]] == ["traced", "keep.paths"]


def test_excluded_lists_only_what_the_image_really_lacks(tmp_path: Path) -> None:
    """The closures run after exclude (a kept link keeps its target, a kept file its
    directory): a path they bring back is kept, and the report must not call it excluded."""
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), keep_paths=["/etc/app/conf.d/a.conf"],
                        exclude=["/etc/app/main.conf", "/etc/app", "/usr/share/doc/**"])
    b.add("/data/conf", Reason("traced", "openat by /app in run"))  # -> /etc/app/main.conf
    b.add("/etc/app", Reason("traced", "getdents64 by /app in run"))
    b.add("/usr/share/doc/app/README", Reason("traced", "openat by /app in run"))
    b.add_keep_paths()
    kl = b.build()
    assert {"/etc/app/main.conf", "/etc/app"} <= set(kl.kept)
    assert set(kl.excluded) == {"/usr/share/doc/app/README"}
    assert not set(kl.excluded) & set(kl.kept)


def test_a_big_hardlink_group_is_closed_once_not_once_per_member(tmp_path: Path) -> None:
    """An image may hardlink thousands of names to one file; each kept member used to add
    the whole group again (N * N work: hours for a 100k-name layer)."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    names = [f"/d/n{i:05d}" for i in range(5000)]
    (root / "d" / "n00000").write_bytes(b"x")
    entries: dict[str, E] = {"/": E("dir"), "/d": E("dir"), names[0]: E("file", size=1)}
    for name in names[1:]:
        entries[name] = E("hardlink", names[0])
    walked = 0

    class Group(tuple):
        """The group, counting how many member names the closure walks through."""

        def __iter__(self):
            nonlocal walked
            walked += len(self)
            return super().__iter__()

    group = Group(names)

    def hardlink_group(path: str) -> tuple[str, ...]:
        return group if path in entries and path != "/d" else (path,)

    b = KeepListBuilder(entries, RootFS(root), hardlink_group=hardlink_group)
    for name in names[:50]:
        b._want(name, Reason("traced", "open"))  # several members wanted at once
    kept = b.build().kept
    assert all(name in kept for name in names)
    # every member is visited once; the group's names are added once, not per member
    assert sum(len(r) for p, r in kept.items() if p.startswith("/d/n")) < 2 * len(names)
    assert walked <= 4 * len(names)  # linear in the group, not its square


def test_exclude_written_through_a_link_removes_what_it_names(tmp_path: Path) -> None:
    """Under merged /usr an operator writes `/lib/...` as programs do; the index holds
    `/usr/lib/...`. The rule must remove those files (it once matched nothing, silently),
    name itself as written, and leave other files of the directory alone."""
    root, entries = make_root(tmp_path)
    rule = "/lib/x86_64-linux-gnu/libz.so.1.2.*"
    b = KeepListBuilder(entries, RootFS(root), exclude=[rule])
    b.add("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", Reason("traced", "openat"))
    b.add("/usr/bin/perl", Reason("traced", "execve"))
    kl = b.build()
    assert "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13" not in kl.kept
    assert kl.excluded["/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"].rule == rule
    assert "/usr/bin/perl" in kl.kept


def test_exclude_through_a_link_still_loses_to_keep_paths(tmp_path: Path) -> None:
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), keep_paths=["/usr/lib/x86_64-linux-gnu/*"],
                        exclude=["/lib/x86_64-linux-gnu/**"])
    b.add_keep_paths()
    kl = b.build()
    assert "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13" in kl.kept and not kl.excluded


def test_fanotify_reasons_only_where_nothing_else_keeps_the_path(tmp_path: Path) -> None:
    """fanotify repeats what strace and ELF analysis say, less steadily (the process may be
    gone, the step is the one running when the event is read): echoed, it made two runs'
    keep-lists differ on every line. It stays where it is the only reason."""
    root, entries = make_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root))
    fan = Reason("traced", "fanotify:open by an unidentified process in run")
    strace = Reason("traced", "openat by /usr/bin/perl in smoke[0].command")
    b.add("/etc/app/main.conf", fan)
    b.add("/etc/app/main.conf", strace)
    b.add("/etc/app/conf.d/a.conf", fan)  # only fanotify saw it
    b.add("/usr/lib/x86_64-linux-gnu/libz.so.1", Reason("elf", "/usr/bin/perl -> libz.so.1"))
    b.add("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", fan)  # also kept as the link's target
    kl = b.build()
    assert kl.kept["/etc/app/main.conf"] == [strace]
    assert kl.kept["/etc/app/conf.d/a.conf"] == [fan]
    assert fan not in kl.kept["/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"]
    assert kl.kept["/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"][0].kind == "symlink"


# ---- exclude and the closure: the closure wins, and says so per path ----------------------

@pytest.mark.parametrize("how", ["traced", "elf"])
def test_an_excluded_target_of_a_kept_link_is_kept_and_reported(tmp_path: Path,
                                                                 how: str) -> None:
    """A kept `/etc/localtime`-like link brings back the zone file an exclude rule names
    (the contract closes the keep-list after exclude; a dangling link would change the
    program's behaviour silently), and the keep-list says which rule it overrode instead
    of the rule appearing to match nothing."""
    root, entries = link_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), exclude=["/usr/bin/perl", "/opt/v1/**"])
    b.add("/usr/bin/hop1", Reason(how, "x"))
    b.add("/opt/v1/lib/mod.so", Reason("traced", "openat"))  # excluded, nothing needs it
    kl = b.build()
    assert "/usr/bin/perl" in kl.kept
    assert kl.overridden == {"/usr/bin/perl": "/usr/bin/perl"}
    assert kl.overridden_json()["/usr/bin/perl"] == {
        "rule": "/usr/bin/perl", "kept_because": ["symlink: target of /usr/bin/hop1"]}
    # what no closure needs stays excluded, and is not called overridden
    assert "/opt/v1/lib/mod.so" not in kl.kept and "/opt/v1/lib/mod.so" in kl.excluded
    assert "/usr/bin/perl" not in kl.excluded


def test_keep_paths_through_a_link_is_not_an_overridden_exclude(tmp_path: Path) -> None:
    """keep.paths wins over exclude by the contract: nothing to report."""
    root, entries = link_root(tmp_path)
    b = KeepListBuilder(entries, RootFS(root), exclude=["/usr/bin/perl"],
                        keep_paths=["/usr/bin/hop1"])
    b.add_keep_paths()
    kl = b.build()
    assert "/usr/bin/perl" in kl.kept and kl.overridden == {}


def test_an_excluded_member_of_a_kept_hardlink_group_is_reported(tmp_path: Path) -> None:
    root, entries = link_root(tmp_path)
    group = ("/usr/bin/perl", "/usr/bin/perl5.36")
    b = KeepListBuilder(entries, RootFS(root), exclude=["/usr/bin/perl5*"],
                        hardlink_group=lambda p: group if p in group else (p,))
    b.add("/usr/bin/perl", Reason("traced", "execve"))
    kl = b.build()
    assert "/usr/bin/perl5.36" in kl.kept
    assert kl.overridden == {"/usr/bin/perl5.36": "/usr/bin/perl5*"}
    assert kl.overridden_json()["/usr/bin/perl5.36"]["kept_because"] == [
        "hardlink: same inode as /usr/bin/perl"]
