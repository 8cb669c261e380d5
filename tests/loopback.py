"""A loopback TCP server for tests of tracer's http and tcp steps (no engine needed).

Each server is owned by one test and stops with it; its handler plays the app under test,
which may misbehave in any way a hostile image can.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


@contextmanager
def server(handle: Callable[..., None]) -> Iterator[int]:
    """A loopback TCP server running `handle(conn)` (or `handle(conn, stop)`, `stop` set when
    the test ends) per connection; yields its port."""
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
            threading.Thread(target=_serve, args=(handle, conn, stop), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        srv.close()


def _serve(handle: Callable[..., None], conn: socket.socket, stop: threading.Event) -> None:
    with conn, suppress(OSError):
        handle(conn, stop) if handle.__code__.co_argcount == 2 else handle(conn)


def read_request(conn: socket.socket) -> bytes:
    """The request's head as the client sent it (up to the blank line)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
