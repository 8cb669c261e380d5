"""An http step's server names where to go next: hostile input, never a crash.

The app under test answers a smoke step's GET. Its `Location` header is read by tracer
to follow a redirect; a port out of range, a port that is not a number or a broken IPv6
literal there made Python's URL parser raise ValueError, which ended `tracer minimize`
with exit 70 (a bug) instead of a failed step naming what the server sent.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from tracer.profile_model import HttpStep
from tracer.trace.steps import run_http


@contextmanager
def redirecting(location: str) -> Iterator[int]:
    """A loopback server answering every GET with a 302 to `location`; yields its port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn, suppress(OSError):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: " + location.encode()
                             + b"\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:99999/",  # port out of range
    "http://127.0.0.1:eighty/",  # not a number
    "http://[::1/",  # IPv6 literal never closed
    "http://[127.0.0.1]/",  # not an IPv6 address in brackets
])
def test_a_redirect_to_a_malformed_url_is_a_failed_step(location):
    with redirecting(location) as port:
        out = run_http("smoke[0].http", HttpStep(url=f"http://127.0.0.1:{port}/", timeout=5))
    assert not out.passed
    assert "redirect" in out.message and location[:12] in out.message, out.message
