"""The engine client (tracer.engine): one client per thread, a deadline on streamed answers
through the one private hook of the docker SDK it replaces (checked here against the SDK
pyproject allows), and only a connection that really fails is "no engine" (exit 4): a bug
in tracer while connecting stays a bug (exit 70).
"""

from __future__ import annotations

import inspect
import re
import socketserver
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TypeVar

import pytest
from image_builders import run_tracer
from test_bounds_engine_streams import IMAGE_ID, stalling_engine  # noqa: F401 - a fixture

from tracer.engine import ERROR_HOOK, SOCKET_TIMEOUT_HOOK, Engine, connect, connected
from tracer.errors import EnvironmentProblem
from tracer.image.daemon import EngineImages

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def in_new_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a thread of its own (its own engine clients); its error re-raised here."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the thread still runs after 120 s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


# ---------------------------------------------------------------- the SDK's shape


def _allowed_docker_majors() -> range:
    """The docker SDK major versions pyproject's dependency allows (>=A.x,<B)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"docker\b", d))
    low = re.search(r">=\s*(\d+)", spec)
    high = re.search(r"<\s*(\d+)(?:\.0)*\s*(?:,|$)", spec)
    assert low and high, f"pyproject must bound the docker SDK on both sides: {spec!r}"
    return range(int(low.group(1)), int(high.group(1)))


def test_the_sdk_still_has_the_hook_tracer_replaces() -> None:
    """tracer.engine switches off the SDK's `_disable_socket_timeout` so that a streamed
    answer keeps its deadline. That is a private method: this fails as soon as the SDK
    installed (within what pyproject allows) renames it, changes its arguments, or stops
    calling it from the helpers that stream (an image save, a container's archive, logs)."""
    import docker
    from docker.api.client import APIClient

    assert int(docker.__version__.split(".")[0]) in _allowed_docker_majors(), \
        f"docker SDK {docker.__version__} is outside what pyproject allows"
    hook = getattr(APIClient, SOCKET_TIMEOUT_HOOK)
    assert list(inspect.signature(hook).parameters) == ["self", "socket"]
    for helper in ("_stream_raw_result", "_multiplexed_response_stream_helper"):
        assert f"self.{SOCKET_TIMEOUT_HOOK}(" in inspect.getsource(getattr(APIClient, helper))
    # Podman's errors are read through the hook every error status passes through
    errors = getattr(APIClient, ERROR_HOOK)
    assert list(inspect.signature(errors).parameters) == ["self", "response"]
    for helper in ("_result", "_stream_raw_result", "_get_result_tty"):
        assert f"self.{ERROR_HOOK}(" in inspect.getsource(getattr(APIClient, helper)), helper


def test_a_stream_that_goes_silent_fails_after_the_deadline(stalling_engine,  # noqa: F811
                                                             monkeypatch) -> None:
    server, host = stalling_engine
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setenv("TRACER_ENGINE_TIMEOUT", "1")

    def save() -> float:
        engine = connect()
        t0 = time.monotonic()
        with pytest.raises(EnvironmentProblem, match="did not answer within 1s"), \
                engine.errors("save the image"):
            for _ in engine.api.get_image(IMAGE_ID, chunk_size=512):
                pass
        return time.monotonic() - t0

    assert in_new_thread(save) < 15
    assert server.stalled.is_set()


def test_an_sdk_without_the_hook_is_refused_not_left_to_hang(stalling_engine,  # noqa: F811
                                                             monkeypatch) -> None:
    from docker.api.client import APIClient

    _, host = stalling_engine
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.delattr(APIClient, SOCKET_TIMEOUT_HOOK)
    with pytest.raises(EnvironmentProblem, match=f"has no APIClient.{SOCKET_TIMEOUT_HOOK}"):
        in_new_thread(connect)


# ---------------------------------------------------------------- one client per thread


@pytest.mark.integration
def test_each_thread_gets_its_own_client(docker_client) -> None:
    """docker-py's client is not documented as thread-safe: the image read in a thread
    (pipeline._Background) and the traced run in the main thread must not share one."""
    main = connect()
    assert connect() is main  # one per thread: made once
    other = in_new_thread(connect)
    assert other is not main and other.sdk is not main.sdk and other.api is not main.api
    assert connected()
    images = EngineImages()
    assert in_new_thread(lambda: images.engine) is not images.engine

    answers: list[object] = []

    def ask() -> None:
        engine = connect()
        for _ in range(20):
            with engine.errors("say its version"):
                answers.append(engine.api.version()["ApiVersion"])

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 120 and len(set(answers)) == 1


def test_a_thread_keeps_its_client_and_another_thread_gets_a_new_one(
        monkeypatch, tmp_path: Path) -> None:
    """Without an engine: the clients of two threads are two Engine objects (a fake SDK
    answers the version), and one thread asking twice gets the same one."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/fake.sock")  # its own clients
    made: list[Engine] = []

    def twice() -> bool:
        a, b = connect(), connect()
        made.append(a)
        return a is b

    with _fake_sdk():
        assert in_new_thread(twice) and in_new_thread(twice)
    assert made[0] is not made[1] and made[0].sdk is not made[1].sdk


# ---------------------------------------------------------------- exit 4 and exit 70


def test_no_engine_at_the_socket_is_exit_4(tmp_path: Path) -> None:
    res = run_tracer(["ldd", "docker-daemon:tracer-test/none:1"],
                     env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
                          "TRACER_WORKDIR": str(tmp_path)}, timeout=60)
    assert res.returncode == 4, res.stderr
    assert f"no Docker engine answers at unix://{tmp_path}/no-engine.sock (no such " \
        "socket)" in res.stderr


class _NotAnEngine(BaseHTTPRequestHandler):
    """An HTTP server on the socket that is not an engine: 404 for everything."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_error(404, "nothing here")


@pytest.fixture
def not_an_engine(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "web.sock")
    server = socketserver.UnixStreamServer(sock, _NotAnEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"unix://{sock}"
    finally:
        server.shutdown()
        server.server_close()


def test_something_else_on_the_socket_is_exit_4(not_an_engine: str, tmp_path: Path) -> None:
    res = run_tracer(["ldd", "docker-daemon:tracer-test/none:1"],
                     env={"DOCKER_HOST": not_an_engine, "TRACER_WORKDIR": str(tmp_path)},
                     timeout=60)
    assert res.returncode == 4, res.stderr
    assert f"no Docker engine answers at {not_an_engine}" in res.stderr


def test_a_bug_while_connecting_is_exit_70_not_no_engine(tmp_path: Path) -> None:
    """A TypeError inside the connection code is tracer's bug: it must not be reported
    as a missing engine (exit 4), which would send the operator looking for one."""
    script = (
        "import sys, docker\n"
        "def broken(**kw):\n"
        "    raise TypeError('a bug in the code that connects')\n"
        "docker.from_env = broken\n"
        "from tracer.cli import main\n"
        "sys.exit(main(['ldd', 'docker-daemon:tracer-test/none:1']))\n")
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "DOCKER_HOST": f"unix://{tmp_path}/any.sock",
                               "TRACER_WORKDIR": str(tmp_path)}, timeout=120)
    assert done.returncode == 70, done.stderr
    assert "internal error: TypeError: a bug in the code that connects" in done.stderr
    assert "no Docker engine" not in done.stderr


# ---------------------------------------------------------------- helpers


class _FakeSdk:
    """Stands in for docker.DockerClient where no engine is needed (the identity of the
    clients is what is tested, not a conversation)."""

    def __init__(self) -> None:
        pong = type("Response", (), {"headers": {"Api-Version": "1.41"}})()
        self.api = type("Api", (), {SOCKET_TIMEOUT_HOOK: lambda self, s: None,
                                    ERROR_HOOK: lambda self, response: None,
                                    "get": lambda self, url, timeout=None: pong,
                                    "base_url": "http+docker://localhost",
                                    "api_version": "1.41", "timeout": None})()

    def ping(self) -> bool:
        return True

    def version(self, api_version: bool = True) -> dict[str, object]:
        return {"ApiVersion": "1.41", "Components": [{"Name": "Engine"}]}

    def close(self) -> None:
        pass


class _fake_sdk:  # noqa: N801 - used as a context manager like a function
    def __enter__(self) -> None:
        import docker

        self._was = docker.from_env
        docker.from_env = lambda **kw: _FakeSdk()

    def __exit__(self, *exc: object) -> None:
        import docker

        docker.from_env = self._was
