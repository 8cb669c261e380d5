"""`http` steps assert response headers (`headers: {Name: REGEX}`).

Against a real server on loopback (tests/loopback.py) and, in the integration test, the
nginx fixture's own headers: names are case-insensitive, a header sent several times
passes when any value matches, a failure names the header and what came back, and the
headers a server may send are bounded.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from loopback import read_request, server

from tracer.profile.document import ProfileErrors
from tracer.profile.model import HttpStep
from tracer.profile.sections import parse_profile
from tracer.trace.steps import run_http

HEAD = (b"HTTP/1.1 200 OK\r\nServer: demo/1.4\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Set-Cookie: lang=de\r\nSet-Cookie: sid=abc123; HttpOnly\r\n"
        b"X-Time-Zone: CET\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")


def answers(head: bytes):
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(head)

    return server(handle)


def check(port: int, **headers: str):
    step = HttpStep(url=f"http://127.0.0.1:{port}/", timeout=10,
                    headers={k.replace("_", "-"): v for k, v in headers.items()})
    return run_http("smoke[0].http", step)


def test_headers_that_match_pass_whatever_the_case_of_their_names() -> None:
    with answers(HEAD) as port:
        out = check(port, server="^demo/", CONTENT_TYPE="charset=utf-8", X_Time_Zone="^CET$")
    assert out.passed, out.message


def test_a_header_sent_twice_passes_when_any_of_its_values_matches() -> None:
    with answers(HEAD) as port:
        assert check(port, Set_Cookie="^sid=[a-z0-9]+").passed
        out = check(port, Set_Cookie="^token=")
    assert not out.passed
    assert out.message == ("header Set-Cookie: none of its 2 values matches '^token=': "
                           "'lang=de', 'sid=abc123; HttpOnly'")


def test_a_value_that_does_not_match_is_named_with_what_came_back() -> None:
    with answers(HEAD) as port:
        out = check(port, X_Time_Zone="^CET$", server="^nginx")
    assert not out.passed
    assert out.message == "header server: 'demo/1.4' does not match '^nginx'"
    assert "HTTP 200" in out.output and "Server: demo/1.4" in out.output


def test_a_missing_header_is_named_with_the_headers_the_response_had() -> None:
    with answers(HEAD) as port:
        out = check(port, X_Time_Zone="CET", X_Request_Id=".")
    assert not out.passed
    assert out.message.startswith("header X-Request-Id: not in the response (its headers: "
                                  "Server, Content-Type, Set-Cookie, X-Time-Zone, ")


def test_a_long_value_is_quoted_bounded() -> None:
    head = HEAD.replace(b"X-Time-Zone: CET", b"X-Time-Zone: " + b"Europe/" * 5000)
    with answers(head) as port:
        out = check(port, X_Time_Zone="^CET$")
    assert not out.passed and "(34800 more characters)" in out.message
    assert len(out.message) < 400


def test_a_server_sending_endless_headers_fails_the_step_bounded() -> None:
    def endless(conn: socket.socket, stop) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        n = 0
        while not stop.is_set():
            conn.sendall(b"X-Filler-%d: %s\r\n" % (n, b"y" * 1000))
            n += 1

    with server(endless) as port:
        out = check(port, Server=".")
    assert not out.passed and "got more than 100 headers" in out.message


def test_headers_in_a_profile() -> None:
    p = parse_profile("""\
version: 1
name: web
image: web:1
run: {network: host}
smoke:
  - http:
      url: "http://127.0.0.1:8080/"
      headers: {Server: "^nginx", content-type: "text/html"}
""")
    assert p.smoke[0].step.headers == {"Server": "^nginx", "content-type": "text/html"}


def test_bad_headers_name_the_line_and_field() -> None:
    text = """\
version: 1
name: web
image: web:1
run: {network: host}
smoke:
  - http:
      url: "http://127.0.0.1:8080/"
      headers:
        Server: "^nginx"
        server: "x"
        "Bad Name": "x"
        X-Zone: "("
  - http:
      url: "http://127.0.0.1:8080/"
      headers: [Server]
"""
    with pytest.raises(ProfileErrors) as info:
        parse_profile(text, "p.yaml")
    problems = info.value.problems
    assert problems[0] == ("p.yaml:10: smoke[0].http.headers.server: given twice (as "
                           "'Server'; header names are case-insensitive)")
    assert problems[1].startswith("p.yaml:11: smoke[0].http.headers.Bad Name: expected a "
                                  "header name")
    assert problems[2].startswith("p.yaml:12: smoke[0].http.headers.X-Zone: invalid regular "
                                  "expression")
    assert problems[3].startswith("p.yaml:15: smoke[1].http.headers: expected a mapping")
    assert len(problems) == 4


@pytest.mark.integration
def test_the_nginx_fixture_headers_pass_and_fail_as_asserted(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    """nginx's real `Server: nginx/1.22.1` and `Content-Type: text/html`: a profile
    asserting them passes on the image; one asserting a header nginx does not send fails
    on the original (exit 3) naming the header and what nginx sent."""
    import subprocess
    import sys

    import yaml

    fixture_image("nginx")
    repo = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((repo / "profiles/nginx.yaml").read_text())
    url = next(s["http"]["url"] for s in data["smoke"] if "http" in s)
    data["smoke"] = [{"http": {"url": url, "headers": {"server": "^nginx(/[0-9.]+)?$",
                                                       "Content-Type": "^text/html"}}}]
    data["output"] = f"docker-daemon:tracer-test/headers:{uuid.uuid4().hex[:8]}"
    from tracer.profile.load import load_profile
    from tracer.trace.run import run_smoke

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data, sort_keys=False))
    r = run_smoke(load_profile(good), data["image"].removeprefix("docker-daemon:"),
                  traced=False, workdir=tmp_path / "good")
    assert r.passed, r.failure

    data["smoke"][0]["http"]["headers"] = {"Server": "^Apache", "X-Time-Zone": "CET"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "tracer", "minimize", str(bad), "--quiet"],
                          capture_output=True, text=True, cwd=repo, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "header Server: 'nginx" in proc.stderr and "does not match '^Apache'" in proc.stderr
