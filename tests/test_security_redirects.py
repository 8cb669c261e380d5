"""An http step's server names where to go next: hostile input, never a crash.

The app under test answers a smoke step's GET. Its `Location` header is read by tracer
to follow a redirect; a port out of range, a port that is not a number or a broken IPv6
literal there made Python's URL parser raise ValueError, which ended `tracer minimize`
with exit 70 (a bug) instead of a failed step naming what the server sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from loopback import read_request, server

from tracer.profile.model import HttpStep
from tracer.trace.steps import run_http


@contextmanager
def redirecting(location: str) -> Iterator[int]:
    """A loopback server answering every GET with a 302 to `location`; yields its port."""
    def answer(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: " + location.encode()
                     + b"\r\nContent-Length: 0\r\n\r\n")

    with server(answer) as port:
        yield port


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
