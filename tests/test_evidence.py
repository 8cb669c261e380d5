"""From recorded uses to the keep-list, on a real flattened image: every use counts, with
its meaning, and what is kept is written with the image's own metadata."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from image_builders import M, flat_from_layers, flatten_ref, layer

from tracer.analysis.evidence import RUNTIME_DIRS, build_keeplist, needed_path
from tracer.budgets import BudgetExceeded, Budgets
from tracer.image.config import ImageConfig
from tracer.image.model import FlatImage
from tracer.image.reference import parse_reference
from tracer.image.sink import write_image
from tracer.pipeline import Plan, analyse
from tracer.profile.model import KeepSpec, Profile
from tracer.static import Closure, Resolver
from tracer.trace.result import Access, Meaning, SmokeResult

SVC_UID = 999


def image(tmp_path: Path, *, runtime: bool = True) -> FlatImage:
    """A small image: a service user's /run/app (0750) and /var/lib/app, sticky /tmp and
    /var/tmp, /var/run -> /run as Debian has it, programs on PATH, an interpreter."""
    d = [M("usr", "dir", mode=0o755), M("usr/bin", "dir", mode=0o755),
         M("bin", "symlink", linkname="usr/bin"), M("etc", "dir", mode=0o755),
         M("etc/app.conf", data=b"x"), M("var", "dir", mode=0o755),
         M("var/lib", "dir", mode=0o755),
         M("var/lib/app", "dir", mode=0o700, uid=SVC_UID, gid=SVC_UID),
         M("usr/bin/app", data=b"\x7fELF-not-really", mode=0o755),
         M("usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o755),
         M("usr/bin/sh", data=b"shell", mode=0o755),
         M("usr/bin/python3.11", data=b"py", mode=0o755),
         M("usr/bin/python3", "symlink", linkname="python3.11"),
         M("usr/lib", "dir"), M("usr/lib/python3.11", "dir"),
         M("usr/lib/python3.11/os.py", data=b"import sys\n"),
         M("srv", "dir"), M("data", "dir")]
    if runtime:
        d += [M("tmp", "dir", mode=0o1777), M("var/tmp", "dir", mode=0o1777),
              M("run", "dir", mode=0o755),
              M("run/app", "dir", mode=0o750, uid=SVC_UID, gid=SVC_UID),
              M("run/lock", "dir", mode=0o1777), M("var/run", "symlink", linkname="/run"),
              M("var/lock", "symlink", linkname="/run/lock"),
              M("tmp/leftover", data=b"from the build")]
    tmp_path.mkdir(parents=True, exist_ok=True)
    return flat_from_layers(tmp_path, layer(*d))


def prepared(flat: FlatImage) -> SimpleNamespace:
    return SimpleNamespace(flat=flat, root=flat.rootfs(),
                           config=ImageConfig.from_image_json(flat.config, "test image"))


def use(path: str, meaning: Meaning, *, syscall: str = "openat", ok: bool = True,
        errno: str | None = None, program: str = "/usr/sbin/appd") -> Access:
    return Access(path=path, syscall=syscall, ok=ok, errno=errno, pid=3, program=program,
                  cmdline=(program,), step="run", meaning=meaning)


def keep(flat: FlatImage, accesses: list[Access] = (), *, exclude: list[str] = (),
         binaries: list[str] = (), closure: Closure | None = None,
         execs: list[str] = (), mapping: dict[str, str] | None = None):
    profile = Profile(name="t", image="docker-daemon:t:1", exclude=list(exclude),
                      keep=KeepSpec(binaries=list(binaries)))
    trace = SmokeResult(passed=True, accesses=list(accesses), execs=list(execs))
    return build_keeplist(profile, prepared(flat), trace, closure or Closure(), mapping)


def test_created_names_keep_the_directory_they_were_made_in(tmp_path: Path) -> None:
    flat = image(tmp_path)
    kl = keep(flat, [
        use("/run/app/app.sock", Meaning.CREATE, syscall="bind"),
        use("/var/lib/app/lock", Meaning.CREATE),
        use("/var/lib/app/cache", Meaning.CREATE, syscall="mkdir"),
        use("/var/lib/app/state.tmp", Meaning.REMOVE, syscall="renameat2"),
        use("/var/run/app/peer.sock", Meaning.CONNECT, syscall="connect", program=""),
    ])
    assert "traced: created in by /usr/sbin/appd (bind) in run" in [
        f"{r.kind}: {r.detail}" for r in kl.kept["/run/app"]]
    assert {r.detail for r in kl.kept["/var/lib/app"]} >= {
        "created in by /usr/sbin/appd (openat) in run",
        "created in by /usr/sbin/appd (mkdir) in run",
        "removed from by /usr/sbin/appd (renameat2) in run"}
    # reached through the /var/run link: the link is kept as a link, and honestly unnamed
    assert any(r.detail == "a socket in it connected to by an unidentified process "
               "(connect) in run" for r in kl.kept["/run/app"])
    assert "/var/run" in kl.kept
    for made in ("/run/app/app.sock", "/var/lib/app/lock", "/var/lib/app/cache"):
        assert made not in kl.kept


def test_written_image_has_the_kept_directories_with_their_owner_and_mode(
        tmp_path: Path) -> None:
    """Kept directories carry the image's metadata into the output: a non-root service can
    only bind in /run/app if it is still its own, and /tmp must stay sticky 1777."""
    flat = image(tmp_path / "in")
    kl = keep(flat, [use("/run/app/app.sock", Meaning.CREATE, syscall="bind")])
    out = tmp_path / "out.tar"
    write_image(flat, sorted(kl.kept), parse_reference(f"docker-archive:{out}:t/out:1"),
                workdir=tmp_path / "w", comment="test")
    written = flatten_ref(f"docker-archive:{out}", tmp_path / "back").entries
    app = written["/run/app"]
    assert (app.kind, app.mode & 0o7777, app.uid, app.gid) == ("dir", 0o750, SVC_UID, SVC_UID)
    assert (written["/tmp"].mode & 0o7777, written["/var/tmp"].mode & 0o7777) == (0o1777, 0o1777)
    assert written["/var/run"].kind == "symlink" and written["/var/run"].linkname == "/run"
    assert written["/var/lock"].kind == "symlink" and "/run/lock" in written
    assert "/tmp/leftover" not in written, "the directory is kept, not what the build left in it"


def test_a_create_of_a_name_the_image_has_keeps_that_entry(tmp_path: Path) -> None:
    flat = image(tmp_path)
    kl = keep(flat, [use("/etc/app.conf", Meaning.CREATE),
                     use("/var/lib/app", Meaning.CREATE, syscall="mkdir", ok=False,
                         errno="EEXIST")])
    assert [r.detail for r in kl.kept["/etc/app.conf"]] == ["openat by /usr/sbin/appd in run"]
    # mkdir -p of a directory the image has: it relied on the image's (owned) directory
    assert any(r.detail == "mkdir by /usr/sbin/appd in run" for r in kl.kept["/var/lib/app"])


@pytest.mark.parametrize("meaning", list(Meaning))
def test_failed_uses_keep_nothing(tmp_path: Path, meaning: Meaning) -> None:
    flat = image(tmp_path)
    failed = use("/var/lib/app/x" if meaning.in_parent else "/etc/app.conf", meaning,
                 ok=False, errno="EACCES")
    assert needed_path(failed, flat.rootfs()) is None
    kl = keep(flat, [failed])
    assert "/etc/app.conf" not in kl.kept and "/var/lib/app" not in kl.kept


def test_a_failed_execve_is_not_evidence_for_the_program(tmp_path: Path) -> None:
    """PATH search misses (ENOENT) and refused execs (EACCES) of a file the image has keep
    nothing, whatever recorded them; a successful exec keeps the program."""
    flat = image(tmp_path)
    misses = [use("/usr/local/bin/tool", Meaning.EXEC, syscall="execve", ok=False,
                  errno="ENOENT"),
              use("/usr/bin/tool", Meaning.EXEC, syscall="execve", ok=False, errno="EACCES"),
              use("/bin/tool", Meaning.EXEC, syscall="execveat", ok=False, errno="ENOEXEC")]
    kl = keep(flat, misses)
    assert "/usr/bin/tool" not in kl.kept and "/bin" not in kl.kept
    kl = keep(flat, [*misses, use("/usr/bin/app", Meaning.EXEC, syscall="execve")])
    assert "/usr/bin/app" in kl.kept and "/usr/bin/tool" not in kl.kept


def test_runtime_directories_are_kept_as_the_image_has_them(tmp_path: Path) -> None:
    flat = image(tmp_path)
    kl = keep(flat)
    for path in RUNTIME_DIRS:
        assert path in kl.kept, path
    assert any(r.kind == "runtime" for r in kl.kept["/tmp"])
    assert "/tmp/leftover" not in kl.kept
    excluded = keep(flat, exclude=["/var/tmp/**"])
    assert "/var/tmp" not in excluded.kept and excluded.excluded["/var/tmp"].rule == \
        "/var/tmp/**"
    bare = keep(image(tmp_path / "bare", runtime=False))
    assert not set(RUNTIME_DIRS) & set(bare.kept) and not bare.missing


def test_the_root_directory_is_always_kept(tmp_path: Path) -> None:
    flat = image(tmp_path)
    kl = keep(flat, [use("/", Meaning.ENTRY, syscall="chdir")], exclude=["/**"])
    assert [r.kind for r in kl.kept["/"]] == ["root"]
    assert any(line.startswith("/\troot: ") for line in kl.lines())


def test_no_placeholder_for_an_unknown_program(tmp_path: Path) -> None:
    flat = image(tmp_path)
    kl = keep(flat, [use("/etc/app.conf", Meaning.READ, syscall="fanotify:open", program="")])
    assert [r.detail for r in kl.kept["/etc/app.conf"]] == [
        "fanotify:open by an unidentified process in run"]
    assert not [line for line in kl.lines() if "?" in line]


def test_keep_binaries_roots_are_labelled_with_their_rule(tmp_path: Path) -> None:
    flat = image(tmp_path)
    closure = Resolver(flat.rootfs(), env={"PATH": "/usr/bin:/bin"}).closure(["tool", "/bin/app"])
    kl = keep(flat, binaries=["tool"], closure=closure, execs=["/bin/app"])
    assert [f"{r.kind}: {r.detail}" for r in kl.kept["/usr/bin/tool"]] == ["keep.binaries: tool"]
    assert any(r.kind == "elf" and "/usr/bin/tool" in r.detail
               for r in kl.kept["/usr/bin/sh"]), "its closure says where it came from"
    # the pipeline passes expanded globs: the rule that matched is the reason
    globbed = keep(flat, binaries=["/usr/bin/t*"], closure=closure, execs=["/bin/app"],
                   mapping={"/usr/bin/tool": "/usr/bin/t*"})
    assert [r.detail for r in globbed.kept["/usr/bin/tool"] if r.kind == "keep.binaries"] == [
        "/usr/bin/t*"]
    # a root that also runs keeps its elf reason next to keep.binaries
    both = keep(flat, binaries=["/bin/app"], closure=closure, execs=["/bin/app"])
    assert {r.kind for r in both.kept["/usr/bin/app"]} == {"keep.binaries", "elf"}


def test_keep_packages_reads_the_package_database_within_the_runs_budget(
        tmp_path: Path) -> None:
    """keep.packages reads the image's dpkg database like package granularity does: a
    crafted database is bounded by the run's package_db_bytes, not the default."""
    status = b"Package: tzdata\nStatus: install ok installed\nArchitecture: all\n\n"
    flat = flat_from_layers(tmp_path, layer(
        M("usr/share/zoneinfo/UTC", data=b"TZif"), M("var/lib/dpkg/status", data=status),
        M("var/lib/dpkg/info/tzdata.list", data=b"/usr/share/zoneinfo/UTC\n")))
    profile = Profile(name="t", image="docker-daemon:t:1", keep=KeepSpec(packages=["tzdata"]))
    trace = SmokeResult(passed=True)
    plan = Plan(profile, parse_reference(profile.image), parse_reference("t:min"),
                Budgets(package_db_bytes=len(status)), "file", None, "test")
    with pytest.raises(BudgetExceeded, match="package_db_bytes"):
        analyse(plan, prepared(flat), trace)
    plan = replace(plan, budgets=Budgets())
    kept = analyse(plan, prepared(flat), trace).keeplist.kept
    assert [r.detail for r in kept["/usr/share/zoneinfo/UTC"]] == ["tzdata"]


def test_who_names_the_runs_start_and_never_prints_a_placeholder() -> None:
    """The first exec of a traced run comes from strace's child before any program ran in
    it: that is the run's start, said so; an unknown opener is said honestly."""
    from tracer.analysis.evidence import STARTER, UNIDENTIFIED, who

    assert who(use("/usr/sbin/appd", Meaning.EXEC, syscall="execve", program="")) == STARTER
    assert who(use("/etc/x", Meaning.READ, syscall="fanotify:open", program="")) == UNIDENTIFIED
    assert who(use("/etc/x", Meaning.READ)) == "/usr/sbin/appd"
    assert "?" not in STARTER + UNIDENTIFIED
