"""Every output transport, checked with the engine's own reader: the written image is
loaded with `docker load` (an OCI layout re-packed as a docker-archive, which this engine
version reads), a container of it is `docker export`ed, and the tree is compared with the
export of the original image: paths, kinds, modes (setuid), owners, link targets, device
numbers, content hashes, hardlinks and the security.capability xattr."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from image_builders import (
    ENGINE_INIT_PATHS,
    M,
    Node,
    docker_archive,
    engine_tree,
    flatten_ref,
    layer,
    oci_layout_as_docker_archive,
)

from tracer.image import WrittenImage, parse_reference, write_image

pytestmark = pytest.mark.integration

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
LONG = "opt/" + "n" * 150
CONFIG_FIELDS = ("Env", "Entrypoint", "Cmd", "User", "WorkingDir", "ExposedPorts", "Volumes",
                 "Labels", "StopSignal", "Healthcheck")

LAYERS = [
    layer(M("usr", "dir"), M("usr/bin", "dir", mode=0o751, uid=2, gid=3),
          M("usr/bin/app", data=b"A" * 3000, mode=0o4755, gid=50, mtime=1_500_000_123),
          M("usr/bin/app-link", "hardlink", linkname="usr/bin/app", mode=0o4755, gid=50),
          M("usr/bin/ping", data=b"P" * 10, mode=0o755, xattrs={"security.capability": CAP}),
          M("usr/bin/sh", "symlink", linkname="dash"),
          M("usr/bin/abs", "symlink", linkname="/usr/bin/app"),
          M("usr/share", "dir"), M("usr/share/doc", data=b"docs" * 1000),
          M("opt", "dir", mode=0o700, uid=1000, gid=1000),
          M("opt/null", "char", mode=0o666, devmajor=1, devminor=3),
          M("opt/pipe", "fifo", mode=0o600),
          M("opt/x", data=b"x", uid=65534, gid=65534),
          M("opt/x2", "hardlink", linkname="opt/x", uid=65534, gid=65534),
          M("opt/sgid", data=b"g", mode=0o2755), M("opt/sticky", "dir", mode=0o1777)),
    # parents listed again, as Docker's own layers do, except /usr/bin: the engine gives a
    # parent missing from a later layer mode 0755 root, over the lower layer's 0751 2:3
    layer(M("usr", "dir"), M("usr/share", "dir"), M("usr/share/.wh.doc"),
          M("usr/bin/late", data=b"late"),
          M("opt", "dir", mode=0o700, uid=1000, gid=1000), M(LONG, data=b"long"),
          M("opt/ünï", data=b"utf8")),
]
KEEP = ["/usr/bin/app-link", "/usr/bin/ping", "/usr/bin/sh", "/usr/bin/abs", "/opt/null",
        "/opt/pipe", "/opt/x", "/opt/x2", "/opt/sgid", "/opt/sticky", "/" + LONG,
        "/opt/ünï", "/usr/bin/late"]


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, (cmd, res.stderr)
    return res.stdout


# `docker create` also makes the config's WorkingDir and Volumes (image_builders.BASE_CONFIG)
CREATED_BY_ENGINE = ENGINE_INIT_PATHS | {"/srv", "/data"}


def _without_init(tree: dict[str, Node]) -> dict[str, Node]:
    return {p: n for p, n in tree.items() if p not in CREATED_BY_ENGINE
            and not any(p.startswith(i + "/") for i in ("/dev", "/proc", "/sys"))}


def _expected(original: dict[str, Node], keep: list[str]) -> dict[str, Node]:
    """The original's tree restricted to the kept paths and their parents."""
    want = {"/"}
    for p in keep:
        while p not in want:
            want.add(p)
            p = p.rsplit("/", 1)[0] or "/"
    return {p: n for p, n in original.items() if p in want}


def _comparable(node: Node) -> Node:
    """Which name of a hardlink group export writes first depends on what was kept: the
    group is compared separately."""
    return Node(node.kind, node.mode, node.uid, node.gid, node.mtime if node.kind != "dir"
                else 0, node.linkname, node.sha256, node.xattrs, node.dev)


def _groups(tree: dict[str, Node]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for path, node in tree.items():
        if node.hardlink_of:
            groups.setdefault(node.hardlink_of, {node.hardlink_of}).add(path)
    return {frozenset(g) for g in groups.values()}


@pytest.fixture(scope="module")
def original(docker_client, tmp_path_factory):
    """The hand-made input, as a docker-archive and as the engine reads it."""
    tmp = tmp_path_factory.mktemp("original")
    tag = f"tracer-test/image-original:{uuid.uuid4().hex[:8]}"
    archive = docker_archive(tmp / "in.tar", LAYERS, repo_tag=tag)
    _run(["docker", "load", "-i", str(archive)])
    try:
        yield archive, tag, _without_init(engine_tree(tag))
    finally:
        docker_client.images.remove(tag, force=True)


def _load_output(kind: str, written: WrittenImage, tmp_path: Path, tag: str) -> None:
    if kind == "docker-archive":
        _run(["docker", "load", "-i", str(written.ref.path)])
    elif kind == "oci":
        repacked = oci_layout_as_docker_archive(Path(str(written.ref.path)), written.ref.tag,
                                                tag, tmp_path / "repacked.tar")
        _run(["docker", "load", "-i", str(repacked)])


def _output_ref(kind: str, tmp_path: Path, tag: str) -> str:
    return {"docker-daemon": f"docker-daemon:{tag}",
            "docker-archive": f"docker-archive:{tmp_path}/out.tar:{tag}",
            "oci": f"oci:{tmp_path}/layout:v1"}[kind]


@pytest.mark.parametrize("kind", ["docker-daemon", "docker-archive", "oci"])
def test_output_read_by_the_engine_is_the_kept_part_of_the_original(
        kind: str, original, docker_client, tmp_path: Path) -> None:
    archive, original_tag, original_tree = original
    # the engine keeps the capability: comparing it below is not vacuous
    assert dict(original_tree["/usr/bin/ping"].xattrs).keys() == {"security.capability"}
    flat = flatten_ref(f"docker-archive:{archive}", tmp_path / "work")
    tag = f"tracer-test/image-out:{uuid.uuid4().hex[:8]}"
    try:
        written = write_image(flat, KEEP, parse_reference(_output_ref(kind, tmp_path, tag)),
                              workdir=tmp_path / "w", comment="tracer transport test")
        _load_output(kind, written, tmp_path, tag)
        image = docker_client.images.get(tag)
        assert image.id == written.image_id
        assert len(image.attrs["RootFS"]["Layers"]) == 1
        got = _without_init(engine_tree(tag))
        want = _expected(original_tree, KEEP)
        assert sorted(got) == sorted(want)
        for path in want:
            assert _comparable(got[path]) == _comparable(want[path]), path
        # the hardlink whose first name was not kept is still one inode with its sibling
        assert _groups(got) == {frozenset({"/opt/x", "/opt/x2"})}
        assert got["/usr/bin/app-link"].mode == 0o4755 and got["/opt/sgid"].mode == 0o2755
        assert got["/usr/bin/ping"].xattrs and dict(got["/usr/bin/ping"].xattrs).keys() == {
            "security.capability"}
        assert got["/opt/null"].dev == (1, 3)
        bin_dir = got["/usr/bin"]
        assert (bin_dir.mode, bin_dir.uid, bin_dir.gid) == (0o755, 0, 0)
        want_cfg = docker_client.images.get(original_tag).attrs["Config"]
        got_cfg = image.attrs["Config"]
        for field in CONFIG_FIELDS:
            assert got_cfg.get(field) == want_cfg.get(field), field
    finally:
        docker_client.images.remove(tag, force=True)
