"""A bad day in production: a full disk, an engine that hangs or talks nonsense, an output
that is a symlink. Each ends with the exit code of the contract (4 for the machine's
problems, 2 for bad input), a message that says what to do, and nothing left behind."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from image_builders import M, docker_archive, flat_from_layers, flatten_ref, layer, run_tracer
from prereq import missing

from tracer.errors import EnvironmentProblem
from tracer.image import parse_reference, write_image

BIG = os.urandom(6 << 20)  # does not compress, does not fit the 4 MB tmpfs below


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for this test (root only), unmounted whatever happens."""
    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                          str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        missing(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _flat(tmp_path: Path):
    return flat_from_layers(tmp_path, layer(M("opt", "dir"), M("opt/big", data=BIG),
                                            M("opt/small", data=b"s")))


@pytest.mark.parametrize("kind", ["docker-archive", "oci"])
def test_disk_full_while_writing_the_output_is_exit_4_and_keeps_the_previous(
        kind: str, tmp_path: Path, small_tmpfs: Path) -> None:
    flat = _flat(tmp_path)
    out = parse_reference(f"docker-archive:{small_tmpfs}/out.tar" if kind == "docker-archive"
                          else f"oci:{small_tmpfs}/layout:v1")
    write_image(flat, ["/opt/small"], out, workdir=tmp_path / "w", comment="first")
    before = {p.relative_to(small_tmpfs): p.read_bytes()
              for p in small_tmpfs.rglob("*") if p.is_file()}
    # the directory named is on the full filesystem (the output's, or the temp beside it)
    with pytest.raises(EnvironmentProblem, match=rf"no space left in {small_tmpfs}\S* "
                                                 r"\(needed about \d+ MB\)") as caught:
        write_image(flat, ["/opt/big"], out, workdir=tmp_path / "w", comment="second")
    assert caught.value.exit_code == 4
    after = {p.relative_to(small_tmpfs): p.read_bytes()
             for p in small_tmpfs.rglob("*") if p.is_file()}
    assert after == before  # no temp file, the previous output untouched


def test_disk_full_while_decompressing_an_archive_is_exit_4(tmp_path: Path,
                                                            small_tmpfs: Path) -> None:
    import gzip

    archive = docker_archive(tmp_path / "in.tar", [layer(M("big", data=BIG))])
    gz = tmp_path / "in.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=1))
    res = run_tracer(["ldd", f"docker-archive:{gz}", "/big"],
                     env={"TRACER_WORKDIR": str(small_tmpfs)}, timeout=120)
    assert res.returncode == 4, res.stderr
    assert f"no space left in {small_tmpfs}/" in res.stderr
    assert list(small_tmpfs.iterdir()) == []


def test_output_symlink_to_a_layout_is_written_through(tmp_path: Path) -> None:
    """`--output oci:LINK`: the layout the link names is replaced, the link stays a link,
    and nothing is left beside either."""
    flat = _flat(tmp_path)
    real = tmp_path / "layouts" / "real"
    real.parent.mkdir()
    write_image(flat, ["/opt/small"], parse_reference(f"oci:{real}:old"),
                workdir=tmp_path / "w", comment="c")
    links = tmp_path / "links"
    links.mkdir()
    link = links / "current"
    link.symlink_to(real)
    w = write_image(flat, ["/opt/big"], parse_reference(f"oci:{link}:new"),
                    workdir=tmp_path / "w", comment="c")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(p.name for p in links.iterdir()) == ["current"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["real"]
    assert "/opt/big" in flatten_ref(f"oci:{link}:new", tmp_path / "b1").entries
    assert "/opt/small" in flatten_ref(f"oci:{real}:old", tmp_path / "b2").entries
    index = json.loads((real / "index.json").read_text())
    assert index["manifests"][0]["digest"] == w.manifest_digest
    # the same for an archive output that is a link to a file
    target = tmp_path / "archives" / "app.tar"
    target.parent.mkdir()
    write_image(flat, ["/opt/small"], parse_reference(f"docker-archive:{target}"),
                workdir=tmp_path / "w", comment="c")
    alink = links / "app.tar"
    alink.symlink_to(target)
    write_image(flat, ["/opt/big"], parse_reference(f"docker-archive:{alink}"),
                workdir=tmp_path / "w", comment="c")
    assert alink.is_symlink() and sorted(p.name for p in target.parent.iterdir()) == ["app.tar"]
    assert "/opt/big" in flatten_ref(f"docker-archive:{alink}", tmp_path / "b3").entries


# ---------------------------------------------------------------- a misbehaving engine


class _FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the ping and the version like an engine, then `mode`: hang, garbage, shape."""

    daemon_threads = True

    def __init__(self, path: str, mode: str) -> None:
        self.mode = mode
        self.release = threading.Event()
        self.requests: list[str] = []
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FakeEngine

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # a unix socket has no client address to log

    def _send(self, body: bytes, kind: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        if self.path.endswith("/_ping"):
            self._send(b"OK", "text/plain")
        elif self.path.endswith("/version"):
            self._send(json.dumps({"ApiVersion": "1.41", "MinAPIVersion": "1.12",
                                   "Version": "20.10.24"}).encode())
        elif self.server.mode == "hang":
            self.server.release.wait(120)
        elif self.server.mode == "garbage":
            self._send(b'{"Id": "sha256:' + b"\xff" * 10 + b"not json")
        else:
            self._send(b'[{"Id": 42}]')

    do_HEAD = do_GET  # noqa: N815


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[callable]:
    servers: list[_FakeEngine] = []

    def start(mode: str) -> tuple[_FakeEngine, str]:
        sock = str(tmp_path / f"engine-{mode}.sock")
        server = _FakeEngine(sock, mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"unix://{sock}"

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode,message", [
    ("hang", "the Docker engine did not answer within 2s while trying to inspect image"),
    ("garbage", "the Docker engine sent a malformed answer while trying to inspect image"),
    ("shape", "the Docker engine sent a malformed answer while trying to inspect image"),
])
def test_an_engine_that_pings_and_then_misbehaves_is_exit_4(fake_engine, tmp_path: Path,
                                                             mode: str, message: str) -> None:
    server, host = fake_engine(mode)
    res = run_tracer(["ldd", "docker-daemon:tracer-test/image-fake:1", "/bin/true"],
                     env={"DOCKER_HOST": host, "TRACER_ENGINE_TIMEOUT": "2"}, timeout=120)
    assert res.returncode == 4, res.stderr
    assert message in res.stderr
    assert any("/images/" in r for r in server.requests)  # it got past the ping
    assert res.seconds < 60  # the 2 s deadline, not the minutes an SDK call may wait


@pytest.mark.integration
def test_disk_full_while_saving_the_engine_image_is_exit_4(fixture_image,
                                                           small_tmpfs: Path) -> None:
    image = fixture_image("base")
    # the `docker save` reader (the in-place one needs no space to read)
    res = run_tracer(["ldd", f"docker-daemon:{image}", "/bin/true"],
                     env={"TRACER_WORKDIR": str(small_tmpfs), "TRACER_IMAGE_READER": "save"},
                     timeout=600)
    assert res.returncode == 4, res.stderr
    assert f"no space left in {small_tmpfs}/" in res.stderr and "needed about" in res.stderr
    assert list(small_tmpfs.iterdir()) == []


@pytest.mark.integration
def test_writing_to_the_engine_needs_no_room_in_the_work_dir(docker_client, tmp_path: Path,
                                                             small_tmpfs: Path) -> None:
    """The image is streamed into the engine's load: a work dir too small for its layer
    (a 4 MB tmpfs, a 6 MB file) holds nothing and fills up nothing."""
    flat = _flat(tmp_path)
    tag = f"tracer-test/image-full:{uuid.uuid4().hex[:8]}"
    try:
        written = write_image(flat, ["/opt/big"], parse_reference(tag), workdir=small_tmpfs,
                              comment="c")
        assert written.layer_size > 4 << 20
        assert list(small_tmpfs.iterdir()) == []
        assert docker_client.images.get(tag).id == written.image_id
    finally:
        docker_client.images.remove(tag, force=True)
