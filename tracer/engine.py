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
- one client per process (and per timeout), pinged once: not a new connection and a ping
  per question.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tracer.errors import BadInput, EnvironmentProblem

CALL_TIMEOUT = 60.0  # seconds of silence after which one engine call counts as hung
TRANSFER_TIMEOUT = 300.0  # image save/load: silence allowed while the engine unpacks a layer
PING_TIMEOUT = 10.0  # the first contact: an engine that cannot ping in 10 s is not usable
CALL_TIMEOUT_ENV = "TRACER_ENGINE_TIMEOUT"
TRANSFER_TIMEOUT_ENV = "TRACER_ENGINE_TRANSFER_TIMEOUT"


def _env_seconds(name: str, default: float) -> float:
    """A deadline from the environment variable `name`, else `default`; bad values are
    bad input (exit 2) naming the variable, never silently ignored."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise BadInput(f"{name}={text!r}: expected a positive number of seconds")
    return value


def call_timeout() -> float:
    """Seconds of silence after which one engine call counts as hung (env override)."""
    return _env_seconds(CALL_TIMEOUT_ENV, CALL_TIMEOUT)


def transfer_timeout() -> float:
    """The same for image save/load: TRACER_ENGINE_TRANSFER_TIMEOUT, else
    TRACER_ENGINE_TIMEOUT when set (one knob to make every call quick to fail), else
    `TRANSFER_TIMEOUT` (the engine may unpack a big layer before answering a load)."""
    default = call_timeout() if os.environ.get(CALL_TIMEOUT_ENV, "").strip() \
        else TRANSFER_TIMEOUT
    return _env_seconds(TRANSFER_TIMEOUT_ENV, default)


class Engine:
    """A connected engine: the SDK's high-level client (`sdk`) and low-level one (`api`)."""

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
    """The process's engine client for this per-call timeout (default `call_timeout()`;
    None: no deadline, only for streams whose caller enforces its own, like a smoke step's
    exec). Pinged on first use; EnvironmentProblem when no engine answers."""
    if isinstance(timeout, _Default):
        timeout = call_timeout()
    return _connect(timeout, min(PING_TIMEOUT, call_timeout()))


def connected() -> bool:
    """Has this process already connected to the engine? (Housekeeping such as sweeping
    leftovers uses the engine only then: a command that needs no engine never waits for
    one.)"""
    return _connect.cache_info().currsize > 0


@functools.lru_cache(maxsize=8)
def _connect(timeout: float | None, ping_timeout: float) -> Engine:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise EnvironmentProblem("the docker Python SDK is not installed") from exc
    try:
        sdk = docker.from_env(timeout=ping_timeout)
        sdk.ping()
    except Exception as exc:  # noqa: BLE001 - every failure here means "no usable engine"
        raise EnvironmentProblem(
            f"no Docker engine answers at {_engine_address()} ({_why_not(exc)}); start one "
            "(scripts/setup does) or point DOCKER_HOST at one") from None
    # the SDK passes this to every request; None means wait forever (see the docstring)
    sdk.api.timeout = timeout
    if timeout is not None:
        # The SDK switches the socket's timeout off for its streamed answers (an image
        # save, a container's archive or logs): an engine that went silent mid-stream
        # held tracer forever. With a deadline, a stream too must keep flowing.
        sdk.api._disable_socket_timeout = lambda _socket: None
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
