"""Round trips through the real engine: a multi-layer image built with `docker build`,
flattened, written back (engine, docker-archive, OCI) and run with `docker run`; the
engine's own export of the result is the original's, path by path."""

from __future__ import annotations

import hashlib
import os
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

from tracer.errors import BadInput, ImageFormatError
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


# ---------------------------------------------------------------- writing into the engine


STREAMED = [layer(M("app", "dir"), M("app/big", data=bytes(range(256)) * 8192),
                  M("app/small", data=b"s", mode=0o4755), M("app/link", "hardlink",
                                                             linkname="app/small", mode=0o4755))]


def _small_flat(tmp_path: Path):  # noqa: ANN202 - a FlatImage
    archive = docker_archive(tmp_path / "in.tar", STREAMED)
    with open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "src") as src:
        return flatten(src, tmp_path / "src" / "root")


def test_output_is_streamed_into_the_engine_and_never_written_here(tmp_path: Path,
                                                                     docker_client) -> None:
    flat = _small_flat(tmp_path)
    tag = f"tracer-test/exact-streamed:{uuid.uuid4().hex[:8]}"
    try:
        w = write_image(flat, list(flat.entries), parse_reference(tag),
                        workdir=tmp_path / "w", comment="streamed")
        assert list((tmp_path / "w").iterdir()) == []  # no archive was written first
        assert docker_client.images.get(tag).id == w.image_id
        tree = engine_tree(tag)
        assert tree["/app/big"].sha256 == hashlib.sha256(bytes(range(256)) * 8192).hexdigest()
        assert tree["/app/small"].mode == 0o4755
        assert tree["/app/small"].hardlink_of == "/app/link"  # one inode, written once
        # the same image written to a file has the same id: one image whatever the transport
        archived = write_image(flat, list(flat.entries),
                               parse_reference(f"docker-archive:{tmp_path / 'out.tar'}"),
                               workdir=tmp_path / "w2", comment="streamed")
        assert archived.image_id == w.image_id and archived.layer_digest == w.layer_digest
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_stream_that_is_not_the_verified_image_loads_nothing(tmp_path: Path,
                                                               docker_client) -> None:
    """The image id is known only once the layer has been sent: a different one than
    expected ends the stream before the manifest, and the engine keeps nothing."""
    import docker

    from tracer.image import daemon
    from tracer.image.sink import one_layer

    flat = _small_flat(tmp_path)
    image = one_layer(flat, list(flat.entries), comment="not the candidate")
    real_id = daemon._described(image).image_id
    tag = f"tracer-test/exact-refused:{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError, match="is not the verified candidate"):
        daemon.DaemonTransport().write(image, parse_reference(tag), tmp_path,
                                       expect_id="sha256:" + "0" * 64)
    for name in (tag, real_id):
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(name)


def test_layer_data_that_fails_mid_stream_is_reported_as_such(tmp_path: Path,
                                                                docker_client) -> None:
    """The source's layer data cut short while the layer is being sent: the image's own
    error (exit 2), not a lost engine, and the engine keeps nothing."""
    import docker

    flat = _small_flat(tmp_path)
    ref = flat.content_ref("/app/big")
    os.truncate(ref.blob, ref.offset + 1000)
    tag = f"tracer-test/exact-cut:{uuid.uuid4().hex[:8]}"
    with pytest.raises(ImageFormatError, match="ends .* bytes short"):
        write_image(flat, list(flat.entries), parse_reference(tag), workdir=tmp_path / "w",
                    comment="cut")
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)


def test_publishing_the_candidate_moves_the_tag_without_a_load(tmp_path: Path, docker_client,
                                                              monkeypatch) -> None:
    from tracer.image import daemon

    flat = _small_flat(tmp_path)
    candidate = f"tracer-test/exact-candidate:{uuid.uuid4().hex[:8]}"
    out = f"tracer-test/exact-published:{uuid.uuid4().hex[:8]}"
    keep = ["/app/small", "/app/link"]
    try:
        first = write_image(flat, keep, parse_reference(candidate), workdir=tmp_path / "w",
                            comment="c")

        def no_load(*args: object) -> None:
            raise AssertionError("the candidate was loaded again")

        monkeypatch.setattr(daemon, "_load", no_load)
        published = write_image(flat, keep, parse_reference(out), workdir=tmp_path / "w",
                                comment="c", expect_id=first.image_id)
        assert published.image_id == first.image_id and not published.unchanged
        assert docker_client.images.get(out).id == first.image_id
        again = write_image(flat, keep, parse_reference(out), workdir=tmp_path / "w",
                            comment="c", expect_id=first.image_id)
        assert again.unchanged and again.layer_size == first.layer_size
        with pytest.raises(RuntimeError, match="is not the verified candidate"):
            write_image(flat, ["/app/big"], parse_reference(out), workdir=tmp_path / "w",
                        comment="c", expect_id=first.image_id)
        assert docker_client.images.get(out).id == first.image_id
    finally:
        for tag in (candidate, out):
            docker_client.images.remove(tag, force=True)
