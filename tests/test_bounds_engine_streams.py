"""An engine that starts a stream and then goes silent: exit 4 within the deadline.

The docker SDK switches the socket's timeout off for its streaming answers (`docker save`,
a container's archive, its logs), so once the engine had sent the headers nothing ended
a silent stream: `tracer minimize` waited forever on an engine that hung mid-save,
although every engine call is meant to fail after its deadline of silence. The engine
here is a unix socket server the test owns (a real engine cannot be made to hang); it
answers like an engine and stalls the stream after its first bytes.
"""

from __future__ import annotations

import hashlib
import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from image_builders import run_tracer

CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()
IMAGE_ID = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.release = threading.Event()
        self.stalled = threading.Event()
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Engine

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _json(self, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.endswith("/_ping"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
        elif self.path.endswith("/version"):
            self._json({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "24.0.0"})
        elif self.path.endswith("/json") and "/images/" in self.path:
            self._json({"Id": IMAGE_ID, "Size": 1024, "RepoTags": ["tracer-test/rsec:1"],
                        "GraphDriver": {"Name": "vfs", "Data": {}}})
        elif self.path.endswith("/get"):
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"200\r\n" + bytes(512) + b"\r\n")  # a first block, then silence
            self.wfile.flush()
            self.server.stalled.set()
            self.server.release.wait(300)
        else:
            self.send_error(404)


@pytest.fixture
def stalling_engine(tmp_path: Path) -> Iterator[tuple[_Engine, str]]:
    sock = str(tmp_path / "engine.sock")
    server = _Engine(sock)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"unix://{sock}"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def test_a_save_that_stalls_after_its_first_bytes_is_exit_4(stalling_engine, tmp_path):
    server, host = stalling_engine
    res = run_tracer(["ldd", "docker-daemon:tracer-test/rsec:1", "/bin/true"],
                     env={"DOCKER_HOST": host, "TRACER_ENGINE_TIMEOUT": "2",
                          "TRACER_IMAGE_READER": "save", "TRACER_WORKDIR": str(tmp_path)},
                     timeout=60)
    assert server.stalled.is_set(), "the save stream was started"
    assert res.returncode == 4, res.stderr
    assert "did not answer within 2s while trying to save image" in res.stderr, res.stderr
