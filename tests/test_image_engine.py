"""Round trips through the real engine: a multi-layer image built with `docker build`,
flattened, written back (engine, docker-archive, OCI) and run with `docker run`; the
engine's own export of the result is the original's, path by path."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from conftest import run
from image_builders import (
    ENGINE_INIT_PATHS,
    M,
    Node,
    docker_archive,
    engine_tree,
    layer,
    oci_layout_as_docker_archive,
)
from prereq import missing

from tracer.errors import BadInput
from tracer.image import flatten, open_image, parse_reference, write_image
from tracer.image.daemon import EngineImages
from tracer.image.prepare import prepare
from tracer.progress import Progress

pytestmark = pytest.mark.integration

DOCKERFILE = """\
FROM tracer-fixture/base:bookworm
COPY setcap getcap /usr/local/sbin/
RUN mkdir -p /opt/app /opt/gone/sub /opt/opq/old && echo one > /opt/app/a \\
 && echo x > /opt/gone/sub/f && echo old > /opt/opq/old/f && echo f > /opt/willbedir \\
 && mkdir /opt/willbefile && echo c > /opt/willbefile/c
RUN echo two > /opt/app/b && ln /opt/app/b /opt/app/b-link && ln /opt/app/a /opt/app/a-link \\
 && cp /bin/true /opt/app/suid && chmod 4755 /opt/app/suid && chown 1234:5678 /opt/app/b \\
 && rm -rf /opt/gone && rm -rf /opt/opq && mkdir /opt/opq && echo new > /opt/opq/new \\
 && rm /opt/willbedir && mkdir /opt/willbedir && rm -rf /opt/willbefile \\
 && echo nowfile > /opt/willbefile && cp /bin/true /opt/app/capped \\
 && setcap cap_net_raw+ep /opt/app/capped
RUN rm /opt/app/a
ENV FOO=bar
WORKDIR /opt/app
EXPOSE 8080/tcp
VOLUME /data
LABEL org.example.test=yes
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s CMD true
USER 1234
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"""

# (a-link is left out of the link-count check: overlayfs still reports the lower inode's
# two names after its sibling was whited out; the flattened image rightly says one)
CHECK = ("stat -c '%n %a %u %g %h' /opt/app/b /opt/app/b-link /opt/app/suid; "
         "cat /opt/app/a-link /opt/opq/new /opt/willbefile; ls /opt/opq /opt/willbedir; "
         "test ! -e /opt/gone && test ! -e /opt/app/a && test ! -e /opt/opq/old && echo ABSENT; "
         "/usr/local/sbin/getcap /opt/app/capped")
CONFIG_FIELDS = ("Env", "Entrypoint", "Cmd", "User", "WorkingDir", "ExposedPorts", "Volumes",
                 "Labels", "StopSignal", "Healthcheck")


@pytest.fixture(scope="module")
def layered_image(docker_client, fixture_image, tmp_path_factory):
    """A four-layer image exercising whiteouts, opaque dirs, hardlinks, setuid, caps."""
    fixture_image("base")
    ctx = tmp_path_factory.mktemp("ctx")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for tool in ("setcap", "getcap"):  # the host's libcap2-bin: the build has no network
        found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if not found:
            missing(f"{tool} (libcap2-bin) is not installed on the host; run scripts/setup")
        shutil.copy(found, ctx / tool)
    tag = f"tracer-test/image-layers:{uuid.uuid4().hex[:8]}"
    res = run(["docker", "build", "--network", "none", "--force-rm", "-q", "-t", tag, str(ctx)])
    assert res.returncode == 0, res.stderr
    yield tag
    docker_client.images.remove(tag, force=True)


def _docker_run(image: str, script: str) -> str:
    res = run(["docker", "run", "--rm", "--network", "none", "--user", "0",
               "--entrypoint", "/bin/sh", image, "-c", script])
    assert res.returncode == 0, res.stderr
    return res.stdout


def _config(docker_client, ref: str) -> dict:
    return docker_client.images.get(ref).attrs["Config"]


def test_engine_image_flattens_exactly(layered_image: str, tmp_path: Path) -> None:
    with open_image(parse_reference(layered_image), tmp_path) as src:
        assert len(src.layers) >= 4
        flat = flatten(src, tmp_path / "root")
    e = flat.entries
    assert "/opt/app/a" not in e and "/opt/gone" not in e and "/opt/opq/old" not in e
    assert e["/opt/app/a-link"].kind == "file"
    with flat.open_content("/opt/app/a-link") as f:
        assert f.read() == b"one\n"
    assert set(flat.hardlink_group("/opt/app/b")) == {"/opt/app/b", "/opt/app/b-link"}
    assert e["/opt/app/suid"].mode == 0o4755
    assert (e["/opt/app/b"].uid, e["/opt/app/b"].gid) == (1234, 5678)
    assert e["/opt/willbedir"].kind == "dir" and e["/opt/willbefile"].kind == "file"
    assert "security.capability" in e["/opt/app/capped"].xattrs
    assert e["/bin"].kind == "symlink"  # merged /usr of the base
    # the input's own saved archive was cleaned up with the source
    assert [p.name for p in tmp_path.iterdir()] == ["root"]


def _tree(image: str) -> dict[str, Node]:
    """The engine's export, without what `docker create` adds and with no hardlink
    bookkeeping (overlayfs keeps reporting a whited-out sibling's inode in the original)."""
    out = {}
    for path, n in engine_tree(image).items():
        if path in ENGINE_INIT_PATHS | {"/opt/app", "/data"} or path.startswith(
                ("/dev/", "/proc/", "/sys/")):
            continue  # /opt/app is the WorkingDir, /data the Volume: created by the engine
        out[path] = Node(n.kind, n.mode, n.uid, n.gid, 0 if n.kind == "dir" else n.mtime,
                         n.linkname, n.sha256, n.xattrs, n.dev)
    return out


def test_round_trip_engine_archive_and_oci(layered_image: str, docker_client,
                                           tmp_path: Path) -> None:
    original = _docker_run(layered_image, CHECK)
    assert "ABSENT" in original and "cap_net_raw=ep" in original
    original_tree = _tree(layered_image)
    with open_image(parse_reference(layered_image), tmp_path / "w") as src:
        flat = flatten(src, tmp_path / "w" / "root")
    keep = list(flat.entries)
    out_tag = f"tracer-test/image-layers-min:{uuid.uuid4().hex[:8]}"
    archive = tmp_path / "out.tar"
    layout = tmp_path / "layout"
    loaded_tags = [out_tag, f"{out_tag}-archive", f"{out_tag}-oci"]
    try:
        # 1. straight into the engine
        w = write_image(flat, keep, parse_reference(out_tag), workdir=tmp_path / "w",
                        comment="tracer round trip")
        assert docker_client.images.get(out_tag).id == w.image_id
        # 2. a docker-archive, loaded with the docker CLI
        write_image(flat, keep, parse_reference(f"docker-archive:{archive}:{out_tag}-archive"),
                    workdir=tmp_path / "w", comment="tracer round trip")
        res = run(["docker", "load", "-i", str(archive)])
        assert res.returncode == 0, res.stderr
        # 3. an OCI layout, re-packed for the docker CLI (this engine cannot load OCI)
        write_image(flat, keep, parse_reference(f"oci:{layout}:v1"), workdir=tmp_path / "w",
                    comment="tracer round trip")
        repacked = oci_layout_as_docker_archive(layout, "v1", f"{out_tag}-oci",
                                                tmp_path / "repacked.tar")
        res = run(["docker", "load", "-i", str(repacked)])
        assert res.returncode == 0, res.stderr
        want = _config(docker_client, layered_image)
        for tag in loaded_tags:
            image = docker_client.images.get(tag)
            assert image.id == w.image_id  # one image, whatever the transport
            assert len(image.attrs["RootFS"]["Layers"]) == 1
            got = image.attrs["Config"]
            for field in CONFIG_FIELDS:
                assert got.get(field) == want.get(field), (tag, field)
            assert image.attrs["Architecture"] == "amd64" and image.attrs["Os"] == "linux"
            assert _docker_run(tag, CHECK) == original
            history = image.history()
            assert history[0]["CreatedBy"] == "tracer round trip"
        got_tree = _tree(out_tag)
        assert sorted(got_tree) == sorted(original_tree)
        for path, node in original_tree.items():
            assert got_tree[path] == node, path
    finally:
        for tag in loaded_tags:
            docker_client.images.remove(tag, force=True)


def test_a_non_engine_input_runs_under_a_temp_tag_only(tmp_path: Path, docker_client,
                                                        fixture_image) -> None:
    """The archive's own RepoTags never retag an engine image: an input is loaded under a
    tag of this run only, which is removed at the end with the image."""
    fixture_image("base")
    victim = f"tracer-test/image-victim:{uuid.uuid4().hex[:8]}"
    docker_client.images.get("tracer-fixture/base:bookworm").tag(*victim.split(":"))
    before = docker_client.images.get(victim).id
    archive = docker_archive(tmp_path / "in.tar", [layer(M("hello", data=b"hi\n"))],
                             repo_tag=victim)
    engine = EngineImages()
    try:
        prepared = prepare(f"docker-archive:{archive}", "my app..", tmp_path / "work", engine,
                           Progress(quiet=True), {})
        assert prepared.engine_ref.startswith("tracer-tmp/my-app:input-")
        loaded = docker_client.images.get(prepared.engine_ref)
        assert docker_client.images.get(victim).id == before != loaded.id
        assert loaded.attrs["Config"]["Env"] == ["PATH=/usr/bin:/bin", "FOO=bar"]
    finally:
        engine.cleanup()
        docker_client.images.remove(victim)
    assert not docker_client.images.list(name="tracer-tmp/my-app")
    with pytest.raises(BadInput, match="not in the Docker engine"):
        open_image(parse_reference("tracer-test/does-not-exist:nope"), tmp_path)
