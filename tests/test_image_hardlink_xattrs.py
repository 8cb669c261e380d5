"""xattrs and file capabilities through hardlink headers: a link and its target are one
inode, so what a header says about one says it about both, exactly as the engine applies
it, and a written image never loses a capability when the engine loads it.

The engine applies a hardlink header like a file's: link(), then lchown(), then the
header's xattrs. The lchown makes the kernel drop the inode's `security.capability`
(chown(2) does so on anything but a directory, even to the same owner), so:
- a capability on a link header is the file's too (both names have it);
- a file's capability survives a later link header only when that header carries it too:
  a link header without it leaves neither name with it (what the engine shows below, and
  what the traced original ran with); other xattrs (user.*) are kept;
- tracer's writer puts an inode's xattrs on every name's header, so loading its output
  keeps every capability the index has, whichever names of a group are kept.
Flatteners have shipped the opposite bugs (DESIGN.md, "Traps"): lost capabilities, and a
minimized image that gains one its original never had would run with more privilege.

The layers are real tars built here; the engine's own view comes from `docker export` of a
container of the loaded image (which carries security.capability, the only xattr the
engine exports).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from image_builders import M, docker_archive, engine_tree, flatten_ref, layer
from overlay_storage import read_in_place
from prereq import missing

from tracer.image import FlatImage, parse_reference, read_image, write_image

# cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2)
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
CAP_KEY = "security.capability"
MEMBERS = [
    M("bin", "dir", mode=0o755),
    # the file and its link header both carry it (what Docker's own layers hold)
    M("bin/ping", data=b"\x7fELF ping", mode=0o755, xattrs={CAP_KEY: CAP}),
    M("bin/ping-alias", "hardlink", linkname="bin/ping", mode=0o755, xattrs={CAP_KEY: CAP}),
    # the file has none, its link header brings it
    M("bin/arping", data=b"\x7fELF arping", mode=0o755),
    M("bin/arping-alias", "hardlink", linkname="bin/arping", mode=0o755,
      xattrs={CAP_KEY: CAP}),
    # the file has it and another xattr, its link header none: the engine's lchown drops
    # the capability, the other xattr stays
    M("bin/tracepath", data=b"\x7fELF tracepath", mode=0o755,
      xattrs={CAP_KEY: CAP, "user.origin": b"debian"}),
    M("bin/tracepath-alias", "hardlink", linkname="bin/tracepath", mode=0o755),
    M("bin/plain", data=b"no capability", mode=0o755),
]
NAMES = ["/bin/arping", "/bin/arping-alias", "/bin/ping", "/bin/ping-alias",
         "/bin/plain", "/bin/tracepath", "/bin/tracepath-alias"]
EXPECTED = {"/bin/arping": CAP, "/bin/arping-alias": CAP, "/bin/ping": CAP,
            "/bin/ping-alias": CAP, "/bin/plain": None, "/bin/tracepath": None,
            "/bin/tracepath-alias": None}


def _caps(flat: FlatImage, names: list[str] = NAMES) -> dict[str, bytes | None]:
    return {p: flat.entries[p].xattrs.get(CAP_KEY) for p in names}


def test_flattening_applies_link_headers_as_the_engine_does(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "in.tar", [layer(*MEMBERS)])
    flat = flatten_ref(f"docker-archive:{archive}", tmp_path / "work")
    assert _caps(flat) == EXPECTED
    assert flat.entries["/bin/tracepath-alias"].xattrs == {"user.origin": b"debian"}
    assert flat.hardlink_group("/bin/arping") == ("/bin/arping", "/bin/arping-alias")
    assert flat.has_privileged_programs()


def test_the_in_place_reader_applies_them_alike(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    flat = read_in_place(tmp_path / "storage", [MEMBERS])
    assert _caps(flat) == EXPECTED
    assert flat.entries["/bin/tracepath"].xattrs == {"user.origin": b"debian"}


def _written_members(path: Path) -> dict[str, tarfile.TarInfo]:
    """The members of the one layer of a docker-archive tracer wrote."""
    with tarfile.open(path) as outer:
        layer_name = next(m.name for m in outer if m.name.startswith("blobs/")
                          and m.size > 1024)
        data = outer.extractfile(layer_name).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {"/" + m.name.rstrip("/"): m for m in tf}


def _cap_of(m: tarfile.TarInfo) -> bytes | None:
    value = m.pax_headers.get(f"SCHILY.xattr.{CAP_KEY}")
    return value.encode("utf-8", "surrogateescape") if value is not None else None


@pytest.mark.parametrize("keep", [
    ["/bin/arping", "/bin/arping-alias", "/bin/ping", "/bin/ping-alias"],
    ["/bin/ping-alias"],  # the name whose file header had it left out
    ["/bin/arping"],  # the name whose link header brought it left out
])
def test_every_written_header_of_a_capable_inode_carries_it(tmp_path: Path,
                                                            keep: list[str]) -> None:
    """File and link headers alike: an engine loading the output lchowns each name, so a
    link header without the capability would take it from the file."""
    archive = docker_archive(tmp_path / "in.tar", [layer(*MEMBERS)])
    flat = flatten_ref(f"docker-archive:{archive}", tmp_path / "work")
    out = tmp_path / "out.tar"
    write_image(flat, keep, parse_reference(f"docker-archive:{out}"),
                workdir=tmp_path / "w", comment="test")
    members = _written_members(out)
    assert {p: _cap_of(members[p]) for p in keep} == dict.fromkeys(keep, CAP)
    assert any(members[p].isreg() for p in keep)
    again, _ = read_image(parse_reference(f"docker-archive:{out}"), tmp_path / "again")
    assert _caps(again, keep) == dict.fromkeys(keep, CAP)


def _exported_caps(tag: str) -> dict[str, bytes | None]:
    tree = engine_tree(tag)
    return {p: dict(tree[p].xattrs).get(CAP_KEY, "").encode("utf-8", "surrogateescape")
            or None for p in NAMES if p in tree}


@pytest.mark.integration
def test_the_engine_agrees_before_and_after_minimizing(docker_client, tmp_path: Path) -> None:
    tag = f"tracer-test/hardlink-caps:{uuid.uuid4().hex[:8]}"
    out_tag = f"{tag}-min"
    archive = docker_archive(tmp_path / "in.tar", [layer(*MEMBERS)], repo_tag=tag)
    subprocess.run(["docker", "load", "-i", str(archive)], check=True, capture_output=True)
    try:
        assert _exported_caps(tag) == EXPECTED  # what the engine makes of the layer
        flat, _ = read_image(parse_reference(tag), tmp_path / "read")
        assert _caps(flat) == EXPECTED  # tracer's index of the engine image agrees
        keep = ["/bin/arping", "/bin/arping-alias", "/bin/ping-alias", "/bin/plain",
                "/bin/tracepath"]
        write_image(flat, keep, parse_reference(out_tag), workdir=tmp_path / "w",
                    comment="test")
        assert _exported_caps(out_tag) == {p: EXPECTED[p] for p in keep}
    finally:
        for t in (tag, out_tag):
            subprocess.run(["docker", "rmi", "-f", t], capture_output=True)
