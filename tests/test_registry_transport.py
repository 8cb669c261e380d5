"""The docker:// transport against real registries: pull, push, credentials, failures.

Images are made here (hand-made layers in an OCI layout, pushed with skopeo, the
reference client) and read or written by tracer through its transport, with no Docker
engine involved. Failures come from the real registries (a deleted tag, a blob
corrupted in their storage, a wrong password) or, for what a real registry never does
(hang, drip, loop, lie), from a small server in the test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from image_builders import M, layer
from registry import (
    Layout,
    Registry,
    manifest_digest,
    push_layout,
    repo,
    sha,
    skopeo,
    upload_requests,
)

from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError
from tracer.image import flatten, open_image, parse_reference, write_image
from tracer.image.platforms import Platform
from tracer.image.reference import RefOptions
from tracer.image.transports import transport

pytestmark = pytest.mark.integration
REPO_DIR = Path(__file__).resolve().parent.parent
PLAIN = RefOptions(tls_verify=False)


def tracer(*args: str, env: dict[str, str] | None = None, timeout: float = 300
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_DIR, env=env,
                          stdin=subprocess.DEVNULL)


def small_image(tmp: Path, *, marker: bytes = b"", compress: bool = True,
                config: dict | None = None) -> tuple[Layout, dict]:
    """A two-layer image; `marker` makes its top layer unique to the test."""
    lay = Layout(tmp / f"layout-{os.urandom(3).hex()}")
    base = layer(M("etc", "dir", mode=0o755), M("etc/motd", data=b"hello\n"),
                 M("bin", "dir", mode=0o755), M("bin/app", data=b"#!/bin/sh\n", mode=0o755))
    top = layer(M("srv", "dir", mode=0o755), M("srv/marker", data=b"marker " + marker))
    return lay, lay.image([base, top], compress=compress, config=config)


def read(ref: str, tmp: Path, options: RefOptions = PLAIN):
    with open_image(parse_reference(ref).with_options(options), tmp / "source") as image:
        pulled = image.pulled
        flat = flatten(image, tmp / "root")
    return flat, pulled


def content(flat, path: str) -> bytes:
    with flat.open_content(path) as f:
        return f.read()


# ---------------------------------------------------------------- pulling


def test_pull_by_tag_and_by_digest(plain_registry: Registry, tmp_path: Path) -> None:
    lay, desc = small_image(tmp_path, marker=os.urandom(8))
    name = repo("pull")
    digest = push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(name, "1"))
    assert digest == desc["digest"]

    flat, pulled = read(plain_registry.ref(name, "1"), tmp_path / "a")
    assert content(flat, "/etc/motd") == b"hello\n"
    assert pulled.input_digest == digest and pulled.manifest_digest == digest
    assert pulled.platform == "linux/amd64" and pulled.layers == 2

    flat2, pulled2 = read(plain_registry.ref(name, digest=digest), tmp_path / "b")
    assert flat2.source_digest == flat.source_digest
    assert content(flat2, "/srv/marker") == content(flat, "/srv/marker")
    # the pulled copy lives in the work dir only while the image is open
    assert not list((tmp_path / "a" / "source").glob("pulled-*"))

    with pytest.raises(BadInput, match="no such tag, digest or repository"):
        read(plain_registry.ref(name, digest=sha(b"another")), tmp_path / "c")
    # a single-platform image has no other platform to choose
    with pytest.raises(BadInput, match="is a single linux/amd64 image, not linux/arm64"):
        read(plain_registry.ref(name, "1"), tmp_path / "d",
             RefOptions(tls_verify=False, platform=Platform("linux", "arm64")))


def test_uncompressed_layers_are_read_in_place_after_the_pull(plain_registry: Registry,
                                                              tmp_path: Path) -> None:
    """tracer's own outputs have uncompressed layers: their files are read from the
    pulled blob, which must outlive the pull's temp directory."""
    lay, desc = small_image(tmp_path, marker=os.urandom(8), compress=False)
    name = repo("inplace")
    push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(name, "1"))
    flat, _ = read(plain_registry.ref(name, "1"), tmp_path / "w")
    assert content(flat, "/etc/motd") == b"hello\n"


def test_a_docker_v2_image_keeps_its_config(plain_registry: Registry, tmp_path: Path) -> None:
    """A Docker schema 2 image is read as the registry holds it: an OCI copy would
    rewrite its config and drop Docker-only fields such as Healthcheck."""
    health = {"Test": ["CMD", "/bin/app", "--check"], "Interval": 30_000_000_000}
    lay, desc = small_image(tmp_path, marker=os.urandom(8), config={
        "config": {"Entrypoint": ["/bin/app"], "Healthcheck": health}})
    name = repo("v2s2")
    digest = push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(name, "1"),
                         docker_format=True)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", plain_registry.ref(name, "1"))
    assert "vnd.docker.distribution.manifest.v2" in raw.stdout
    config_digest = json.loads(raw.stdout)["config"]["digest"]
    flat, pulled = read(plain_registry.ref(name, "1"), tmp_path / "w")
    assert pulled.manifest_digest == digest
    assert flat.source_digest == config_digest
    assert flat.config["config"]["Healthcheck"] == health


# ---------------------------------------------------------------- pushing


def test_push_then_an_unchanged_push_sends_nothing(plain_registry: Registry,
                                                   tmp_path: Path) -> None:
    lay, desc = small_image(tmp_path, marker=os.urandom(8))
    src = repo("pushsrc")
    push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(src, "1"))
    flat, _ = read(plain_registry.ref(src, "1"), tmp_path / "r")
    keep = ["/etc", "/etc/motd", "/srv", "/srv/marker"]
    name = repo("push")
    out = parse_reference(plain_registry.ref(name, "min")).with_options(PLAIN)
    log = Path("/var/log/tracer/registry-plain.log")
    before = log.stat().st_size

    written = write_image(flat, keep, out, workdir=tmp_path / "o1", comment="test")
    assert not written.unchanged
    assert manifest_digest(plain_registry, str(out)) == written.manifest_digest
    # the same bytes and digest as an oci: output of the same image (reproducible)
    oci = write_image(flat, keep, parse_reference(f"oci:{tmp_path}/oci:min"),
                      workdir=tmp_path / "o2", comment="test")
    assert oci.manifest_digest == written.manifest_digest
    assert upload_requests(log, before, name) == 2  # layer and config

    middle = log.stat().st_size
    again = write_image(flat, keep, out, workdir=tmp_path / "o3", comment="test")
    assert again.unchanged and again.manifest_digest == written.manifest_digest
    # another tag of the same image: the manifest is put, no blob is sent again
    other = write_image(flat, keep, out.__class__("docker", None, out.name, "other",
                                                  options=PLAIN),
                        workdir=tmp_path / "o4", comment="test")
    assert not other.unchanged
    assert upload_requests(log, middle, name) == 0
    # pulled back by the reference client: the files tracer kept
    copy = skopeo("copy", "--quiet", "--src-tls-verify=false", str(out),
                  f"dir:{tmp_path}/back")
    assert copy.returncode == 0, copy.stderr
    assert (tmp_path / "back" / written.layer_digest[7:]).exists()


def test_an_output_by_digest_is_refused(plain_registry: Registry) -> None:
    out = parse_reference(plain_registry.ref("x/y", digest=sha(b"x")))
    with pytest.raises(BadInput, match="needs a tag"):
        transport(out).check_output(out)


# ---------------------------------------------------------------- credentials


HELPER = """#!/bin/sh
read server
echo "$1 $server" >> {log}
printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{password}"}}' "$server"
"""


@pytest.fixture(scope="module")
def auth_image(auth_registry: Registry, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("auth")
    lay, desc = small_image(tmp, marker=os.urandom(8))
    ref = auth_registry.ref(repo("auth"), "1")
    push_layout(auth_registry, lay.tag(desc, "t"), ref)
    return ref


def clean_env(tmp: Path) -> dict[str, str]:
    """An environment with no credentials of the host's: HOME and the runtime dir here."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "HOME": str(home),
            "PYTHONPATH": str(REPO_DIR), "TMPDIR": str(tmp)}


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def helper(tmp: Path, registry: Registry, name: str, password: str | None = None) -> Path:
    (tmp / "bin").mkdir(exist_ok=True)
    log = tmp / f"{name}.log"
    script = tmp / "bin" / f"docker-credential-{name}"
    script.write_text(HELPER.format(log=log, user=registry.user,
                                    password=password or registry.password))
    script.chmod(0o755)
    return log


@pytest.mark.parametrize("kind", ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "docker config",
                                  "credHelpers", "credsStore"])
def test_credentials_from_each_place_container_tools_read(
        auth_registry: Registry, auth_image: str, tmp_path: Path, kind: str) -> None:
    env = clean_env(tmp_path)
    home = Path(env["HOME"])
    creds = auth_registry.auth_json()
    called = None
    if kind == "REGISTRY_AUTH_FILE":
        env["REGISTRY_AUTH_FILE"] = str(write_json(tmp_path / "auth.json", creds))
    elif kind == "XDG_RUNTIME_DIR":
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
        write_json(tmp_path / "run" / "containers" / "auth.json", creds)
    elif kind == "docker config":
        write_json(home / ".docker" / "config.json", creds)
    elif kind == "credHelpers":
        called = helper(tmp_path, auth_registry, "tt")
        write_json(home / ".docker" / "config.json", {"credHelpers": {auth_registry.host: "tt"}})
    else:  # skopeo 1.9 does not read credsStore: tracer bridges it
        called = helper(tmp_path, auth_registry, "store")
        write_json(home / ".docker" / "config.json",
                   {"auths": {auth_registry.host: {}}, "credsStore": "store"})
    done = tracer("ldd", auth_image, "/bin/app", *auth_registry.flags(), env=env)
    assert done.returncode == 0, done.stderr
    if called is not None:
        assert f"get {auth_registry.host}" in called.read_text()
    assert auth_registry.password not in done.stdout + done.stderr


def test_a_wrong_password_is_exit_2_naming_the_file_never_the_password(
        auth_registry: Registry, auth_image: str, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    wrong = "Wr0ng-" + os.urandom(6).hex()
    token = base64.b64encode(f"{auth_registry.user}:{wrong}".encode()).decode()
    path = write_json(tmp_path / "auth.json", {"auths": {auth_registry.host: {"auth": token}}})
    env["REGISTRY_AUTH_FILE"] = str(path)
    done = tracer("ldd", auth_image, *auth_registry.flags(), env=env)
    assert done.returncode == 2, done.stderr
    assert f"REGISTRY_AUTH_FILE={path}" in done.stderr and "refused" in done.stderr
    assert wrong not in done.stderr and token not in done.stderr
    # without any credentials: the places looked in are named
    env.pop("REGISTRY_AUTH_FILE")
    done = tracer("ldd", auth_image, *auth_registry.flags(), env=env)
    assert done.returncode == 2 and ".docker/config.json" in done.stderr


def test_tls_is_verified_unless_told_otherwise(auth_registry: Registry, auth_image: str,
                                               tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["REGISTRY_AUTH_FILE"] = str(write_json(tmp_path / "a.json", auth_registry.auth_json()))
    done = tracer("ldd", auth_image, env=env)  # the test CA is not trusted by default
    assert done.returncode == 4 and "--cert-dir" in done.stderr, done.stderr
    done = tracer("ldd", auth_image, "--tls-verify=false", env=env)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- what registries do


def test_a_deleted_tag_is_exit_2(plain_registry: Registry, tmp_path: Path) -> None:
    lay, desc = small_image(tmp_path, marker=os.urandom(8))
    name = repo("deleted")
    push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(name, "1"))
    tag = plain_registry.tag_dir(name, "1")
    assert tag.is_dir()
    shutil.rmtree(tag)  # what deleting a tag in a registry's UI leaves
    done = tracer("ldd", plain_registry.ref(name, "1"), "--tls-verify=false")
    assert done.returncode == 2, done.stderr
    assert "manifest unknown" in done.stderr and "no such tag" in done.stderr


def test_a_corrupted_blob_is_exit_2_and_leaves_nothing(plain_registry: Registry,
                                                       tmp_path: Path) -> None:
    lay, desc = small_image(tmp_path, marker=os.urandom(16), compress=False)
    name = repo("corrupt")
    push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(name, "1"))
    manifest = json.loads((lay.path / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    top = manifest["layers"][1]["digest"]  # the layer only this test has
    blob = plain_registry.blob_file(top)
    data = bytearray(blob.read_bytes())
    at = data.index(b"marker ")
    data[at] ^= 0x20
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageFormatError, match="does not match its digest"):
        read(plain_registry.ref(name, "1"), tmp_path / "w")
    assert not list((tmp_path / "w" / "source").glob("pulled-*"))


def test_a_manifest_that_does_not_hash_to_its_digest_is_exit_2(plain_registry: Registry,
                                                                tmp_path: Path) -> None:
    """skopeo 1.9's inspect does not check a digest reference's manifest: tracer does."""
    lay, desc = small_image(tmp_path, marker=os.urandom(16))
    name = repo("badmanifest")
    digest = push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(name, "1"))
    stored = plain_registry.blob_file(digest)
    stored.write_bytes(stored.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
    done = tracer("ldd", plain_registry.ref(name, digest=digest), "--tls-verify=false")
    assert done.returncode == 2, done.stderr
    assert "not the digest asked for" in done.stderr and digest in done.stderr


# ---------------------------------------------------------------- hostile registries


class Hostile(BaseHTTPRequestHandler):
    """A registry that misbehaves as `server.mode` says; `/v2/` answers normally."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        self.server.requests.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self.do_GET()

    def send(self, code: int, body: bytes = b"", media: str = "application/json",
             length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if self.command == "GET" and "manifests/" in self.path and code == 200:
            self.send_header("Docker-Content-Digest", sha(body))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.log_message()
        mode = self.server.mode  # type: ignore[attr-defined]
        if self.path == "/v2/":
            return self.send(200, b"{}")
        try:
            if mode == "503":
                return self.send(503, b"{}")
            if mode == "redirect":
                self.send_response(302)
                self.send_header("Location", self.path + "x")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if mode in ("huge-json", "endless-manifest"):
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                if mode == "endless-manifest":
                    self.send_header("Content-Length", str(1 << 40))
                self.end_headers()
                self.wfile.write(b'{"schemaVersion":2,"x":"')
                while True:
                    self.wfile.write(b"a" * 65536)
            if mode == "endless-blob":
                manifest, blobs = self.server.image  # type: ignore[attr-defined]
                if "/manifests/" in self.path:
                    return self.send(200, manifest, "application/vnd.oci.image.manifest.v1+json")
                digest = self.path.rsplit("/", 1)[1]
                if digest in blobs and blobs[digest] is not None:
                    return self.send(200, blobs[digest], "application/octet-stream")
                self.send_response(200)  # the layer: declared small, sent without end
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                while True:
                    self.wfile.write(os.urandom(65536))
        except (BrokenPipeError, ConnectionResetError):
            return None
        return self.send(404, b"{}")


@pytest.fixture
def hostile():
    servers = []

    def start(mode: str, image: tuple[bytes, dict] | None = None) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        server.daemon_threads = True
        server.mode, server.requests, server.image = mode, [], image
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fast(**more: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_DIR), "TRACER_REGISTRY_TIMEOUT": "3",
            "TRACER_REGISTRY_RETRIES": "1", **more}


def test_a_registry_that_accepts_and_never_answers_is_exit_4_in_bounded_time() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        started = time.monotonic()
        done = tracer("ldd", f"docker://127.0.0.1:{port}/app:1", "--tls-verify=false",
                      env=fast())
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()
    assert done.returncode == 4, done.stderr
    assert "no progress for 3s" in done.stderr and "tried 2 times" in done.stderr
    assert took < 30, took  # two attempts of 3 s of silence, a second of backoff


def test_5xx_is_retried_with_backoff_then_exit_4(hostile) -> None:
    host = hostile("503")
    done = tracer("ldd", f"docker://{host}/app:1", "--tls-verify=false",
                  env=fast(TRACER_REGISTRY_RETRIES="2"))
    assert done.returncode == 4, done.stderr
    assert "503" in done.stderr and "tried 3 times" in done.stderr


@pytest.mark.parametrize("mode,code,words", [
    ("redirect", 4, "redirects"),
    ("huge-json", 2, "4 MiB"),
    ("endless-manifest", 2, "4 MiB"),
])
def test_hostile_answers_are_bounded(hostile, mode: str, code: int, words: str) -> None:
    started = time.monotonic()
    done = tracer("ldd", f"docker://{hostile(mode)}/app:1", "--tls-verify=false", env=fast())
    assert done.returncode == code, done.stderr
    assert words in done.stderr
    assert time.monotonic() - started < 30


def test_an_endless_blob_is_cut_at_what_the_manifest_declares(hostile, tmp_path: Path) -> None:
    lay, desc = small_image(tmp_path, compress=False)
    blobs_dir = lay.path / "blobs" / "sha256"
    manifest = (blobs_dir / desc["digest"][7:]).read_bytes()
    layers = [d["digest"] for d in json.loads(manifest)["layers"]]
    blobs = {f"sha256:{p.name}": p.read_bytes() for p in blobs_dir.iterdir()}
    blobs[layers[1]] = None  # this one never ends
    host = hostile("endless-blob", (manifest, blobs))
    started = time.monotonic()
    done = tracer("ldd", f"docker://{host}/app@{desc['digest']}", "--tls-verify=false",
                  env=fast(TMPDIR=str(tmp_path)))
    assert done.returncode == 2, done.stderr
    assert "sent more than the manifest declares" in done.stderr
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------- a push refused midway


class _RefuseManifests:
    """A TCP proxy to a real registry that answers every manifest PUT with 500: blobs
    go through, the push fails at its last step."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.listener.settimeout(0.5)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk or head.startswith(b"\x16") or chunk.startswith(b"\x16"):
                client.close()  # skopeo tries TLS first: plain HTTP only here
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"PUT ") and b"/manifests/" in line:
            self.refused += 1
            client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            client.close()
            return
        # one request per connection: the upstream closes after answering
        head = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        up = socket.create_connection(self.upstream)

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        up.sendall(head)
        threading.Thread(target=pipe, args=(client, up), daemon=True).start()
        pipe(up, client)
        client.close()
        up.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_a_push_refused_midway_is_exit_4_and_nothing_is_written(
        plain_registry: Registry, tmp_path: Path) -> None:
    lay, desc = small_image(tmp_path, marker=os.urandom(8))
    src = repo("midsrc")
    push_layout(plain_registry, lay.tag(desc, "t"), plain_registry.ref(src, "1"))
    flat, _ = read(plain_registry.ref(src, "1"), tmp_path / "r")
    proxy = _RefuseManifests(("127.0.0.1", 5000))
    name = repo("midway")
    out = parse_reference(f"docker://127.0.0.1:{proxy.port}/{name}:min").with_options(PLAIN)
    os.environ["TRACER_REGISTRY_RETRIES"] = "1"
    try:
        with pytest.raises(EnvironmentProblem, match="nothing was written"):
            write_image(flat, ["/etc", "/etc/motd"], out, workdir=tmp_path / "o",
                        comment="test")
    finally:
        os.environ.pop("TRACER_REGISTRY_RETRIES")
        proxy.close()
    assert proxy.refused == 2  # tried twice, refused at the manifest both times
    assert manifest_digest(plain_registry, plain_registry.ref(name, "min")) is None
