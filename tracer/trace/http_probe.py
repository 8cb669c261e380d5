"""One HTTP GET for a smoke step, bounded in time, size and reach.

The server answering is the application under test: hostile input. So the request
- never goes through a proxy: http.client talks to the URL's host itself (urllib's opener
  would honour `http_proxy` from the environment, and a step could pass on a proxy's answer);
- follows redirects only to loopback addresses (the rule the profile's URLs obey), at most
  `MAX_REDIRECTS` hops;
- has ONE deadline for everything (connect, request, headers, body, every hop): each read
  is given only the time that is left, so a server sending a byte every 2 s cannot hold the
  step past its timeout;
- reads at most `max_body` bytes of body: a longer body is judged on what was read;
- takes the response headers as http.client bounds them (a line of at most 64 KiB, at
  most 100 headers; more is a failed probe): `MAX_HEADER_BYTES` in all.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tracer.profile.sections import is_loopback

MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 64 * 1024
MAX_HEADER_BYTES = 1 << 20  # all header lines together (http.client bounds each and their count)


class ProbeFailed(Exception):
    """The request did not produce an answer to judge; the message says what happened."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        self.received = received


@dataclass(frozen=True)
class Answer:
    """What the server answered (after redirects): status, body (maybe cut), final URL."""

    status: int
    body: bytes
    cut: bool  # the body was longer than the cap; `body` is its beginning
    url: str
    hops: int
    # (name, value) as the server sent them, in order, repeats included
    headers: tuple[tuple[str, str], ...] = ()

    def header_values(self, name: str) -> list[str]:
        """Every value sent for `name`, compared case-insensitively (HTTP names are)."""
        want = name.lower()
        return [v for k, v in self.headers if k.lower() == want]


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes, each read allowed only the time left before the deadline."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        self.owner = owner
        owner.refs += 1

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        left = self.owner.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        self.owner.sock.settimeout(left)
        return self.owner.sock.recv_into(b)

    def close(self) -> None:
        if not self.closed:
            self.owner.refs -= 1
            self.owner.release()
        super().close()


class _DeadlineSocket:
    """The few socket methods http.client uses, each bounded by the step's deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.refs = 0  # open readers: like a real socket's makefile, they keep it open
        self.closed = False

    def sendall(self, data: bytes) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        self.sock.settimeout(left)
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *_args: object, **_kw: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self), CHUNK)

    def close(self) -> None:
        self.closed = True
        self.release()

    def release(self) -> None:
        if self.closed and self.refs <= 0:
            self.sock.close()


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose socket obeys one deadline; never a proxy or tunnel."""

    def __init__(self, host: str, port: int | None, deadline: float, tls: bool) -> None:
        super().__init__(host, port or (443 if tls else 80))
        self.deadline, self.tls = deadline, tls

    def connect(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        sock = socket.create_connection((self.host, self.port), timeout=left)
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = _DeadlineSocket(sock, self.deadline)  # type: ignore[assignment]


def get(url: str, *, timeout: float, max_body: int) -> Answer:
    """GET `url`; raise ProbeFailed with an operator's message when no answer can be judged."""
    start = time.monotonic()
    deadline = start + timeout
    for hop in range(MAX_REDIRECTS + 1):
        body = bytearray()
        try:  # after a redirect, the URL is the server's: a bad port or IPv6 literal
            parts = urlsplit(url)
            host, port = parts.hostname or "", parts.port
        except ValueError as exc:
            raise ProbeFailed(f"redirected to {url!r}, which is not a valid URL: "
                              f"{exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ProbeFailed(f"redirected to {url!r}: only http and https are followed")
        if not is_loopback(host):
            what = "redirected to" if hop else "refusing"
            raise ProbeFailed(f"{what} {url}: only loopback addresses are allowed "
                              "(127.0.0.0/8, ::1, localhost); the step never leaves this machine")
        conn = _Connection(host, port, deadline, parts.scheme == "https")
        resp: http.client.HTTPResponse | None = None
        try:
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            conn.request("GET", target, headers={"User-Agent": "tracer-smoke",
                                                 "Connection": "close"})
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in REDIRECTS and location:
                try:
                    url = urljoin(url, location)
                except ValueError as exc:
                    raise ProbeFailed(f"GET {url}: redirected to {location[:200]!r}, which "
                                      f"is not a valid URL: {exc}") from None
                continue
            while len(body) < max_body:
                chunk = resp.read1(min(CHUNK, max_body - len(body)))
                if not chunk:
                    break
                body += chunk
            cut = len(body) >= max_body and bool(resp.read1(1))
            headers = tuple(resp.getheaders())
            if sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
                raise ProbeFailed(f"GET {url}: the response headers are larger than "
                                  f"{MAX_HEADER_BYTES} bytes")
            return Answer(resp.status, bytes(body), cut, url, hop, headers)
        except TimeoutError:
            say = f", {len(body)} bytes of body received" if body else ""
            raise ProbeFailed(f"GET {url}: no complete answer within the step's timeout of "
                              f"{timeout:g}s{say}", bytes(body)) from None
        except ConnectionRefusedError:
            raise ProbeFailed(f"GET {url}: connection refused (nothing listens on "
                              f"{host}:{conn.port})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ProbeFailed(f"GET {url} failed: {exc!r}", bytes(body)) from None
        finally:
            if resp is not None:
                resp.close()
            conn.close()
    raise ProbeFailed(f"GET: more than {MAX_REDIRECTS} redirects, the last to {url}")
