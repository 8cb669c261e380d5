"""The one door to the Docker engine: a client with a deadline on every call.

Every module that talks to the engine gets its client here, so three things hold
everywhere at once:

- a deadline: the docker SDK waits 60 s by default per HTTP read, and tracer used to ask
  for 300-600 s; an engine that answers the ping and then hangs held a run for minutes.
  Every call now fails after `CALL_TIMEOUT` seconds of silence (streams of data, like an
  image save, only need to keep flowing). Operators and tests set the deadlines in seconds
  with TRACER_ENGINE_TIMEOUT (every call, the ping included) and
  TRACER_ENGINE_TRANSFER_TIMEOUT (image save and load only);
- one meaning for failures: whatever goes wrong between tracer and the engine (refused
  connection, timeout, an error status, an answer that is not JSON) is an environment
  problem, exit 4, with what tracer was trying to do. Only "no such image" keeps its own
  meaning, because the caller knows whether that is bad input;
- one client per thread (and per timeout): not a new connection and a ping per question.
  docker-py's client is a requests Session, which is not documented as safe to share
  between threads; the image is read in a thread while the main one runs the traced
  container, and smoke steps exec and follow logs from threads, so each thread that asks
  gets its own client. The first one pings the engine and learns its API version; later
  ones reuse that version and cost no request to make.

The SDK is imported only here, and only when a client is made (`tracer ldd` of an archive
never pays for it); `NotInEngine` lets callers say "no such image" without importing it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tracer.envvars import env_number
from tracer.errors import EnvironmentProblem

CALL_TIMEOUT = 60.0  # seconds of silence after which one engine call counts as hung
TRANSFER_TIMEOUT = 300.0  # image save/load: silence allowed while the engine unpacks a layer
PING_TIMEOUT = 10.0  # the first contact: an engine that cannot ping in 10 s is not usable
CALL_TIMEOUT_ENV = "TRACER_ENGINE_TIMEOUT"
TRANSFER_TIMEOUT_ENV = "TRACER_ENGINE_TRANSFER_TIMEOUT"


def call_timeout() -> float:
    """Seconds of silence after which one engine call counts as hung (env override)."""
    return env_number(CALL_TIMEOUT_ENV, CALL_TIMEOUT)


def transfer_timeout() -> float:
    """The same for image save/load: TRACER_ENGINE_TRANSFER_TIMEOUT, else
    TRACER_ENGINE_TIMEOUT when set (one knob to make every call quick to fail), else
    `TRANSFER_TIMEOUT` (the engine may unpack a big layer before answering a load)."""
    default = call_timeout() if os.environ.get(CALL_TIMEOUT_ENV, "").strip() \
        else TRANSFER_TIMEOUT
    return env_number(TRANSFER_TIMEOUT_ENV, default)


class NotInEngine(Exception):
    """The engine has no object by that name (an image, a container): a verdict the caller
    turns into bad input or an environment problem, from what it expected (Engine.lookup)."""


class Engine:
    """A connected engine: the SDK's high-level client (`sdk`) and low-level one (`api`).
    Used by the thread that got it from `connect()` only."""

    def __init__(self, sdk: Any, timeout: float | None) -> None:
        self.sdk = sdk
        self.api = sdk.api
        self.timeout = timeout

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Map engine failures inside the block to EnvironmentProblem naming `what`.

        docker.errors.NotFound (ImageNotFound, a removed container) passes through
        unchanged: "not there" is a verdict the caller turns into bad input or an
        environment problem, depending on what was expected to be there.
        """
        with engine_errors(what, self.timeout):
            yield

    @contextmanager
    def lookup(self, what: str) -> Iterator[None]:
        """`errors`, with the engine's "no such object" raised as NotInEngine."""
        import docker

        try:
            with engine_errors(what, self.timeout):
                yield
        except docker.errors.NotFound as exc:
            raise NotInEngine(f"the Docker engine has no such object while trying to "
                              f"{what}: {exc.explanation or exc}") from None


@contextmanager
def engine_errors(what: str, timeout: float | None = CALL_TIMEOUT) -> Iterator[None]:
    """The mapping `Engine.errors` applies, usable without an Engine at hand."""
    import docker
    import requests
    import urllib3

    try:
        yield
    except docker.errors.NotFound:
        raise
    except docker.errors.APIError as exc:
        detail = exc.explanation or str(exc)
        raise EnvironmentProblem(f"the Docker engine failed to {what}: {detail}") from None
    except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        raise EnvironmentProblem(
            f"the Docker engine did not answer within {timeout:g}s while trying to {what}; "
            "is it overloaded or hung?") from None
    except (requests.exceptions.JSONDecodeError, json.JSONDecodeError,
            UnicodeDecodeError) as exc:
        raise EnvironmentProblem(
            f"the Docker engine sent a malformed answer while trying to {what}: "
            f"{str(exc)[:200]}") from None
    except requests.exceptions.ConnectionError as exc:
        # a stream's read that timed out comes wrapped as a lost connection
        if isinstance(exc.args[0] if exc.args else None, urllib3.exceptions.TimeoutError):
            raise EnvironmentProblem(
                f"the Docker engine did not answer within {timeout:g}s while trying to "
                f"{what}; is it overloaded or hung?") from None
        raise EnvironmentProblem(
            f"lost the Docker engine while trying to {what}: {str(exc)[:300]}") from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
            docker.errors.DockerException) as exc:
        raise EnvironmentProblem(
            f"lost the Docker engine while trying to {what}: {str(exc)[:300]}") from None


class _Default:
    """Marker: "the per-call deadline", read from the environment when connecting."""


CALL: float | None | _Default = _Default()


def connect(timeout: float | None | _Default = CALL) -> Engine:
    """This thread's engine client for this per-call timeout (default `call_timeout()`;
    None: no deadline, only for streams whose caller enforces its own, like a smoke step's
    exec). Pinged when made; EnvironmentProblem when no engine answers."""
    if isinstance(timeout, _Default):
        timeout = call_timeout()
    key = (_engine_address(), timeout, min(PING_TIMEOUT, call_timeout()))
    clients: dict[tuple[str, float | None, float], Engine] | None = \
        getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    engine = clients.get(key)
    if engine is None:
        engine = clients[key] = _new_engine(*key)
    return engine


def connected() -> bool:
    """Has this process already connected to the engine, in any thread? (Housekeeping
    such as sweeping leftovers uses the engine only then: a command that needs no engine
    never waits for one.)"""
    return _made.is_set()


_local = threading.local()  # .clients: this thread's Engine per (address, timeouts)
_made = threading.Event()
_api_versions: dict[str, str] = {}  # engine address -> its API version, learnt by a ping

# The SDK's own name for "switch the socket's timeout off for a streamed answer": its
# stream helpers (_stream_raw_result, _multiplexed_response_stream_helper, ...) call it.
# A private method, so tests/test_engine_client.py checks the installed SDK still has it
# and still calls it, and connecting refuses an SDK that does not (pyproject pins the
# major version this was checked against).
SOCKET_TIMEOUT_HOOK = "_disable_socket_timeout"


def engine_failures() -> tuple[type[BaseException], ...]:
    """What a call raises when the engine, not tracer, went wrong: the SDK's errors (an
    unreachable socket, an error status, a bad DOCKER_HOST), the HTTP stack's, a
    malformed answer and the socket's. Anything else is a bug of tracer (exit 70), never
    "no engine" or a failed step."""
    import docker
    import requests
    import urllib3

    return (docker.errors.DockerException, requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError, json.JSONDecodeError, OSError)


def _new_engine(address: str, timeout: float | None, ping_timeout: float) -> Engine:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise EnvironmentProblem("the docker Python SDK is not installed") from exc
    try:
        version = _api_versions.get(address)
        if version is not None:  # this process reached that engine: no ping, no query
            sdk = docker.from_env(timeout=ping_timeout, version=version)
        else:
            sdk = docker.from_env(timeout=ping_timeout)
            sdk.ping()
            _api_versions[address] = sdk.api.api_version
    except engine_failures() as exc:
        raise EnvironmentProblem(
            f"no Docker engine answers at {address} ({_why_not(exc)}); start one "
            "(scripts/setup does) or point DOCKER_HOST at one") from None
    # the SDK passes this to every request; None means wait forever (see the docstring)
    sdk.api.timeout = timeout
    if timeout is not None:
        # The SDK switches the socket's timeout off for its streamed answers (an image
        # save, a container's archive or logs): an engine that went silent mid-stream
        # held tracer forever. With a deadline, a stream too must keep flowing.
        if not callable(getattr(type(sdk.api), SOCKET_TIMEOUT_HOOK, None)):
            raise EnvironmentProblem(
                f"the docker SDK {docker.__version__} has no APIClient.{SOCKET_TIMEOUT_HOOK}"
                ", which tracer relies on to give streamed answers a deadline; install the "
                "version pyproject.toml names (docker>=7,<8)")
        setattr(sdk.api, SOCKET_TIMEOUT_HOOK, lambda _socket: None)
    _made.set()
    return Engine(sdk, timeout)


def _engine_address() -> str:
    """Where the SDK looks for the engine: DOCKER_HOST, else the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _why_not(exc: BaseException) -> str:
    """The SDK's error chain said in a few words: the cause an operator can act on."""
    text = str(exc)
    for needle, words in (("FileNotFoundError", "no such socket"),
                          ("Connection refused", "connection refused"),
                          ("PermissionError", "permission denied on the socket"),
                          ("timed out", "timed out")):
        if needle in text:
            return words
    return text[:300]
