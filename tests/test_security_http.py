"""http and tcp smoke steps against servers that misbehave, on loopback (no engine needed).

Each server is owned by the test and bounded: it serves one test and stops. The claims:
a step ends within its timeout with a message that says what happened, reads a bounded
body, never leaves loopback through a redirect, never talks to a proxy from the
environment.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from loopback import read_request, server

from tracer.budgets import DEFAULT
from tracer.profile.model import HttpStep, TcpStep
from tracer.trace.steps import run_http, run_tcp


def test_a_server_sending_a_byte_every_two_seconds_cannot_hold_the_step():
    def slow(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        for b in b"HTTP/1.0 200 OK\r\n\r\nslow body":
            if stop.wait(2):
                return
            conn.sendall(bytes([b]))

    with server(slow) as port:
        start = time.monotonic()
        out = run_http("smoke[0].http", HttpStep(url=f"http://127.0.0.1:{port}/", timeout=3))
        took = time.monotonic() - start
    assert not out.passed
    assert took < 3 + 1.5, f"held for {took:.1f}s past a 3 s timeout"
    assert "no complete answer within the step's timeout of 3s" in out.message


def test_an_endless_body_is_read_up_to_the_cap_and_judged_on_that():
    def endless(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello world\n")
        while not stop.is_set():
            conn.sendall(b"x" * 65536)

    with server(endless) as port:
        ok = run_http("h", HttpStep(url=f"http://127.0.0.1:{port}/", body="^hello world$",
                                    max_body=1 << 20, timeout=20))
        bad = run_http("h", HttpStep(url=f"http://127.0.0.1:{port}/", body="^never there$",
                                     timeout=20), DEFAULT)
    assert ok.passed, ok.message
    assert "cut at 1048576 bytes" in ok.message
    assert not bad.passed
    assert bad.message == (f"body does not match '^never there$' (the body was cut at "
                           f"{DEFAULT.http_body} bytes: judged on those)")
    assert len(bad.output) < 64 * 1024, "a failed step's output is bounded too"


def test_redirects_are_followed_on_loopback_only():
    seen: list[bytes] = []

    def redirecting(conn: socket.socket) -> None:
        req = read_request(conn)
        seen.append(req.split(b"\r\n", 1)[0])
        if req.startswith(b"GET /away"):
            # a documentation address (never routed): refused before any packet leaves
            conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: http://192.0.2.10/steal\r\n\r\n")
        elif req.startswith(b"GET /hop"):
            conn.sendall(b"HTTP/1.0 301 Moved\r\nLocation: /final\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\narrived\n")

    with server(redirecting) as port:
        away = run_http("h", HttpStep(url=f"http://127.0.0.1:{port}/away", timeout=10))
        hop = run_http("h", HttpStep(url=f"http://localhost:{port}/hop", body="arrived",
                                     timeout=10))
    assert not away.passed
    assert away.message.startswith("redirected to http://192.0.2.10/steal: only loopback")
    assert hop.passed, hop.message
    assert seen == [b"GET /away HTTP/1.1", b"GET /hop HTTP/1.1", b"GET /final HTTP/1.1"]


def test_a_redirect_loop_ends_with_a_message():
    def loop(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: /again\r\n\r\n")

    with server(loop) as port:
        out = run_http("h", HttpStep(url=f"http://127.0.0.1:{port}/", timeout=10))
    assert not out.passed and "more than 5 redirects" in out.message


def test_the_proxy_in_the_environment_is_never_contacted(monkeypatch):
    proxied: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        proxied.append(read_request(conn))
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nfrom the proxy\n")

    def app(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nfrom the app\n")

    with server(proxy) as proxy_port, server(app) as app_port:
        for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{proxy_port}")
        monkeypatch.delenv("no_proxy", raising=False)
        out = run_http("h", HttpStep(url=f"http://127.0.0.1:{app_port}/", body="from the app",
                                     timeout=10))
    assert out.passed, out.message
    assert proxied == []


def test_refused_connection_says_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        http = run_http("h", HttpStep(url=f"http://127.0.0.1:{port}/", timeout=5))
        tcp = run_tcp("t", TcpStep(port=port, send="PING\n", expect="PONG", timeout=5))
    assert not http.passed and "connection refused" in http.message
    assert not tcp.passed and tcp.message == (f"127.0.0.1:{port}: connection refused "
                                              "(nothing listens there)")


def test_tcp_failure_says_what_was_sent_and_received():
    def wrong(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"-ERR unknown command\r\n")

    def silent(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(100)
        stop.wait(10)

    with server(wrong) as port:
        out = run_tcp("t", TcpStep(port=port, send="PING\r\n", expect="^\\+PONG", timeout=5))
    assert not out.passed
    assert out.message == (f"127.0.0.1:{port}: connected, sent 6 bytes, received "
                           "'-ERR unknown command\\r\\n' which did not match expect /^\\+PONG/ "
                           "(the server closed the connection)")
    assert "-ERR unknown command" in out.output
    with server(silent) as port:
        out = run_tcp("t", TcpStep(port=port, send="PING\r\n", expect="PONG", timeout=1))
    assert out.message == (f"127.0.0.1:{port}: connected, sent 6 bytes, received nothing "
                           "which did not match expect /PONG/ (nothing matched within 1s)")


def test_tcp_success_when_the_answer_matches():
    def pong(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"+PO")
        time.sleep(0.05)
        conn.sendall(b"NG\r\n")

    with server(pong) as port:
        out = run_tcp("t", TcpStep(port=port, send="PING\r\n", expect="^\\+PONG", timeout=5))
    assert out.passed, out.message


@pytest.mark.parametrize("cap", [1, 7, 100])
def test_tail_buffer_keeps_the_last_bytes_and_counts_all(cap):
    from tracer.trace.capture import TailBuffer

    tail = TailBuffer(cap)
    data = bytes(range(256)) * 50
    for i in range(0, len(data), 33):
        tail.write(data[i:i + 33])
    assert tail.bytes() == data[-cap:] and tail.total == len(data) and tail.cut == len(data) - cap
