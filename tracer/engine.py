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

Two engines speak that API: Docker, and Podman through its Docker-compatible socket
(`podman system service`). Which one is used is chosen once per process (`--engine`,
TRACER_ENGINE; by default the Docker engine when one answers, else Podman), and what the
engine says it is decides its `Flavour`: the one object that knows how Podman's answers
differ from Docker's (names, container states, resource limits, messages), so no other
module asks which engine it talks to.

The SDK is imported only here, and only when a client is made (`tracer ldd` of an archive
never pays for it); `NotInEngine` lets callers say "no such image" without importing it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tracer.envvars import env_number
from tracer.errors import BadInput, EnvironmentProblem

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


class NoEngine(EnvironmentProblem):
    """No engine answers where tracer looked (exit 4); `why` says it in a few words."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


# ---------------------------------------------------------------- which engine, and its flavour


ENGINE_ENV = "TRACER_ENGINE"  # docker | podman | auto (default)
ENGINES = ("docker", "podman")
DOCKER_SOCKET = "unix:///var/run/docker.sock"
PODMAN_ROOT_SOCKET = "unix:///run/podman/podman.sock"  # rootful `podman system service`


class Flavour:
    """How one kind of engine answers through Docker's API: the Docker engine's way.

    Everything tracer knows to differ between engines is a method here (PodmanFlavour
    overrides them), so the rest of tracer asks the flavour instead of the engine's name.
    """

    name = "docker"
    title = "the Docker engine"  # how messages name it
    noun = "Docker engine"  # what "no ... answers" misses
    cli = "docker"  # the engine's own command, for hints in messages
    socket_hint = ("start one (scripts/setup does) or point DOCKER_HOST at one")

    # layers the engine's overlay stacks between a container's own and its image's: Docker
    # adds one (`-init`: /etc/hosts and friends), tracer.trace.mountwatch looks past it
    init_layers = 1

    def local_name(self, name: str) -> str:
        """An image name as the engine lists it, in the spelling tracer writes it."""
        return name

    def container_state(self, status: str) -> str:
        """A container's State.Status in Docker's words (created, running, paused,
        restarting, removing, exited, dead)."""
        return status

    def root_mount_point(self, graph_driver: object) -> str:
        """Where the engine mounts a container's root on this host (its inspect's
        GraphDriver), "" when it names none (another storage driver)."""
        data = graph_driver.get("Data") if isinstance(graph_driver, dict) else None
        merged = data.get("MergedDir") if isinstance(data, dict) else None
        return merged if isinstance(merged, str) else ""

    def create_options(self, address: str, network: str) -> dict[str, Any]:
        """Extra arguments for every container tracer creates (on network `network`)."""
        return {}

    def adapt(self, api: Any) -> None:
        """Make the SDK's low-level client `api` raise what Docker's answers would raise."""


class PodmanFlavour(Flavour):
    """Podman's Docker-compatible socket: what it answers differently, found by running
    tracer's whole pipeline against Podman 4.3 (README, "Podman"):

    - it names images in full: `localhost/REPO:TAG` for what its CLI built or loaded,
      `docker.io/REPO:TAG` (`docker.io/library/NAME`) for what its compat socket loaded,
      where Docker lists `REPO:TAG` (a short name finds them all);
    - its own container states (configured, stopped, ...) show through in places;
    - its info does not say when it runs rootless (Engine.rootless asks the socket);
    - "not there" comes in its own words ("image not known"), and for a container
      removed while it was asked about as a 500 ("does not exist in database"): `adapt`
      turns them into the SDK's NotFound / ImageNotFound, as Docker's 404 would;
    - a container's overlay has no `-init` layer below its own (`init_layers`), and its
      mount point is said only while it is mounted (`root_mount_point` knows it after);
    - with `--network none`, Docker writes its own /etc/hosts (localhost on 127.0.0.1 and
      ::1, the ip6-* names); Podman copies the host's. Where the host's lacks `::1
      localhost`, getaddrinfo("localhost") gave one address on Podman and two on Docker,
      and only with two does glibc read /etc/gai.conf to sort them: the same profile kept
      another file. So Podman's containers get the names Docker's file has and the
      host's lacks (`missing_loopback_names`);
    - it gives every container RLIMIT_NOFILE and RLIMIT_NPROC of 1048576 unless told
      otherwise, which the runtime cannot set where the engine may not raise its own
      limits (a host that withholds CAP_SYS_RESOURCE, a rootless engine whose user has
      less): runc then fails with "error setting rlimit type 7". Docker gives containers
      the daemon's own limits; so tracer asks Podman for the limits its service process
      runs with (`engine_limits`), which the runtime can always set.
    """

    name = "podman"
    title = "Podman"
    noun = "Podman API socket"
    cli = "podman"
    socket_hint = ("start its API socket (`podman system service --time=0 "
                   f"{PODMAN_ROOT_SOCKET}` as root; scripts/setup does) or point "
                   "CONTAINER_HOST at one")
    _STATES = {"configured": "created", "initialized": "created", "stopped": "exited",
               "stopping": "running"}
    init_layers = 0  # a container's layer lies right on its image's top layer

    def local_name(self, name: str) -> str:
        if name.startswith("docker.io/"):
            name = name[len("docker.io/"):]
            rest = name.removeprefix("library/")
            return rest if "/" not in rest else name
        return name.removeprefix("localhost/")

    def container_state(self, status: str) -> str:
        return self._STATES.get(status, status)

    def root_mount_point(self, graph_driver: object) -> str:
        merged = super().root_mount_point(graph_driver)
        data = graph_driver.get("Data") if isinstance(graph_driver, dict) else None
        upper = data.get("UpperDir") if isinstance(data, dict) else None
        if merged or not isinstance(upper, str) or not upper.endswith("/diff"):
            return merged
        return upper[:-len("diff")] + "merged"  # where it was mounted, next to its layer

    def adapt(self, api: Any) -> None:
        """Podman says "not there" in its own words, and sometimes with a 500 (a container
        removed while it was asked about: "does not exist in database"): every error
        status goes through the SDK's `_raise_for_status` (ERROR_HOOK), where it becomes
        the NotFound / ImageNotFound Docker's answer would have raised."""
        import docker

        check = getattr(api, ERROR_HOOK, None)
        if not callable(check):
            raise EnvironmentProblem(
                f"the docker SDK {docker.__version__} has no APIClient.{ERROR_HOOK}, "
                "which tracer relies on to read Podman's errors; install the version "
                "pyproject.toml names (docker>=7,<8)")

        def raise_for_status(response: Any) -> None:
            try:
                check(response)
            except docker.errors.APIError as exc:
                raise self.docker_error(exc) from exc

        setattr(api, ERROR_HOOK, raise_for_status)

    _IMAGE_GONE = ("image not known", "no such image")
    _CONTAINER_GONE = ("no such container", "does not exist in database")

    def docker_error(self, exc: Any) -> Any:
        """The SDK error Docker's answer to the same request would have raised."""
        import docker

        text = str(exc.explanation or "").lower()
        status = exc.status_code
        if status in (404, 500) and any(w in text for w in self._IMAGE_GONE):
            if not isinstance(exc, docker.errors.ImageNotFound):
                return docker.errors.ImageNotFound(str(exc), exc.response, exc.explanation)
        elif status == 500 and any(w in text for w in self._CONTAINER_GONE):
            return docker.errors.NotFound(str(exc), exc.response, exc.explanation)
        return exc

    def create_options(self, address: str, network: str) -> dict[str, Any]:
        options: dict[str, Any] = {}
        limits = engine_limits(address)
        if limits:
            from docker.types import Ulimit

            options["ulimits"] = [Ulimit(name=n, soft=soft, hard=hard)
                                  for n, (soft, hard) in sorted(limits.items())]
        if network == "none":
            missing = missing_loopback_names()
            if missing:
                options["extra_hosts"] = missing
        return options


FLAVOURS: dict[str, Flavour] = {f.name: f for f in (Flavour(), PodmanFlavour())}

# The /etc/hosts Docker writes for a container without a network (moby's etchosts).
DOCKER_HOSTS = (("localhost", "127.0.0.1"), ("localhost", "::1"), ("ip6-localhost", "::1"),
                ("ip6-loopback", "::1"), ("ip6-localnet", "fe00::0"),
                ("ip6-mcastprefix", "ff00::0"), ("ip6-allnodes", "ff02::1"),
                ("ip6-allrouters", "ff02::2"))
HOST_HOSTS = "/etc/hosts"  # what Podman copies into a container's /etc/hosts


def missing_loopback_names(hosts_file: str = HOST_HOSTS) -> dict[str, str]:
    """The name -> address lines of Docker's container /etc/hosts that `hosts_file` (the
    host's, which Podman copies) lacks, in the SDK's `extra_hosts` form. A name with
    two addresses (localhost) can only be given once that way: its IPv6 one, the one a
    host file lacks."""
    try:
        with open(hosts_file, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        text = ""
    have = set()
    for line in text.splitlines():
        words = line.partition("#")[0].split()
        have.update((name, words[0]) for name in words[1:])
    return {name: address for name, address in DOCKER_HOSTS
            if (name, address) not in have and ":" in address}

_LIMITS = {"Max open files": "nofile", "Max processes": "nproc"}
_limits_of: dict[str, dict[str, tuple[int, int]]] = {}


def engine_process(address: str) -> tuple[int, int] | None:
    """(pid, uid) of the process serving the unix socket at `address`, as SO_PEERCRED
    says; None when it cannot be known here (a remote engine; pid 0: another PID
    namespace)."""
    if not address.startswith("unix://"):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(PING_TIMEOUT)
            s.connect(address[len("unix://"):])
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return (pid, uid) if pid > 0 else None


def engine_limits(address: str) -> dict[str, tuple[int, int]]:
    """The (soft, hard) nofile and nproc limits of the process serving the unix socket at
    `address` (SO_PEERCRED names it; /proc/PID/limits says them), once per address.
    Empty when that cannot be known here (a remote engine, another PID namespace)."""
    if address in _limits_of:
        return _limits_of[address]
    found: dict[str, tuple[int, int]] = {}
    peer = engine_process(address)
    if peer is not None:
        try:
            with open(f"/proc/{peer[0]}/limits", encoding="ascii") as f:
                text = f.read(16384)
        except (OSError, UnicodeDecodeError):
            text = ""
        for line in text.splitlines():
            for label, name in _LIMITS.items():
                words = line[len(label):].split()
                if line.startswith(label) and len(words) >= 2 and \
                        words[0].isdigit() and words[1].isdigit():
                    found[name] = (int(words[0]), int(words[1]))
    _limits_of[address] = found
    return found


def wanted() -> str:
    """The engine asked for: TRACER_ENGINE (set by --engine), docker, podman or auto."""
    text = os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"
    if text not in (*ENGINES, "auto"):
        raise BadInput(f"{ENGINE_ENV}={text!r}: expected docker, podman or auto")
    return text


def choose(name: str | None) -> None:
    """Use engine `name` (docker, podman or auto) in this process and every tracer process
    it starts (`tracer batch` jobs): it goes into the environment, where `wanted` reads
    it. None leaves the choice to TRACER_ENGINE."""
    if name is None:
        return
    os.environ[ENGINE_ENV] = name
    wanted()
    _resolved.clear()


def address_of(name: str) -> str:
    """Where engine `name` listens: DOCKER_HOST, else Docker's socket; for Podman
    CONTAINER_HOST (Podman's own variable), else its rootful socket as root, else the
    rootless one under $XDG_RUNTIME_DIR."""
    if name == "docker":
        return os.environ.get("DOCKER_HOST") or DOCKER_SOCKET
    host = os.environ.get("CONTAINER_HOST")
    if host:
        return host
    if os.geteuid() == 0:
        return PODMAN_ROOT_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return f"unix://{runtime}/podman/podman.sock"


def _title(name: str) -> str:
    return FLAVOURS[name].title


def current_title() -> str:
    """How messages name the engine this process uses (or would use)."""
    if _resolved:
        return next(iter(_resolved.values())).title
    choice = os.environ.get(ENGINE_ENV, "").strip().lower()
    return _title(choice) if choice in ENGINES else _title("docker")


class Engine:
    """A connected engine: the SDK's high-level client (`sdk`) and low-level one (`api`),
    where it listens (`address`) and what it is (`flavour`). Used by the thread that got
    it from `connect()` only."""

    def __init__(self, sdk: Any, timeout: float | None, address: str = DOCKER_SOCKET,
                 flavour: Flavour | None = None) -> None:
        self.sdk = sdk
        self.api = sdk.api
        self.timeout = timeout
        self.address = address
        self.flavour = flavour or FLAVOURS["docker"]

    @property
    def local(self) -> bool:
        """Does the engine run on this host (a unix socket), so that its storage and its
        containers' processes may be visible here?"""
        return self.address.startswith("unix://")

    def info(self) -> dict[str, Any]:
        """The engine's `info` (what `docker info` shows), asked once per process: it
        describes the engine, not anything a run changes (Podman takes 0.2 s to answer)."""
        if self.address not in _infos:
            with self.errors("describe itself (info)"):
                info = self.api.info()
            if not isinstance(info, dict):
                raise EnvironmentProblem(f"{self.flavour.title} sent a malformed answer "
                                         "while trying to describe itself (info): not an "
                                         "object")
            _infos[self.address] = info
        return _infos[self.address]

    @property
    def rootless(self) -> bool:
        """Does the engine run without root (rootless Podman, rootless Docker)? Then its
        containers' root is an unprivileged user of this host and its storage holds
        shifted owners. Rootless Docker says so in its info; Podman's compat info does
        not, so a local engine is also asked who it runs as (SO_PEERCRED)."""
        if self.address not in _rootless:
            options = self.info().get("SecurityOptions")
            said = any(isinstance(o, str) and "name=rootless" in o for o in options or ())
            peer = engine_process(self.address)
            _rootless[self.address] = said or (peer is not None and peer[1] != 0)
        return _rootless[self.address]

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
            raise NotInEngine(f"{self.flavour.title} has no such object while trying to "
                              f"{what}: {exc.explanation or exc}") from None


_rootless: dict[str, bool] = {}  # engine address -> runs rootless (learnt from its info)
_infos: dict[str, dict[str, Any]] = {}  # engine address -> its info, asked once


@contextmanager
def engine_errors(what: str, timeout: float | None = CALL_TIMEOUT) -> Iterator[None]:
    """The mapping `Engine.errors` applies, usable without an Engine at hand."""
    import docker
    import requests
    import urllib3

    title = current_title()
    try:
        yield
    except docker.errors.NotFound:
        raise
    except docker.errors.APIError as exc:
        detail = exc.explanation or str(exc)
        raise EnvironmentProblem(f"{title} failed to {what}: {detail}") from None
    except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        raise EnvironmentProblem(
            f"{title} did not answer within {timeout:g}s while trying to {what}; "
            "is it overloaded or hung?") from None
    except (requests.exceptions.JSONDecodeError, json.JSONDecodeError,
            UnicodeDecodeError) as exc:
        raise EnvironmentProblem(
            f"{title} sent a malformed answer while trying to {what}: "
            f"{str(exc)[:200]}") from None
    except requests.exceptions.ConnectionError as exc:
        # a stream's read that timed out comes wrapped as a lost connection
        if isinstance(exc.args[0] if exc.args else None, urllib3.exceptions.TimeoutError):
            raise EnvironmentProblem(
                f"{title} did not answer within {timeout:g}s while trying to "
                f"{what}; is it overloaded or hung?") from None
        raise EnvironmentProblem(
            f"lost {title} while trying to {what}: {str(exc)[:300]}") from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
            docker.errors.DockerException) as exc:
        raise EnvironmentProblem(
            f"lost {title} while trying to {what}: {str(exc)[:300]}") from None


class _Default:
    """Marker: "the per-call deadline", read from the environment when connecting."""


CALL: float | None | _Default = _Default()


def connect(timeout: float | None | _Default = CALL) -> Engine:
    """This thread's engine client for this per-call timeout (default `call_timeout()`;
    None: no deadline, only for streams whose caller enforces its own, like a smoke step's
    exec). Pinged when made; EnvironmentProblem when no engine answers."""
    if isinstance(timeout, _Default):
        timeout = call_timeout()
    ping = min(PING_TIMEOUT, call_timeout())
    address = _address(ping)
    key = (address, timeout, ping)
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


def engine_name() -> str:
    """The engine this process uses, "docker" or "podman" (connecting if need be)."""
    return connect().flavour.name


_local = threading.local()  # .clients: this thread's Engine per (address, timeouts)
_made = threading.Event()
# engine address -> (API version, flavour name), learnt when this process first reached it
_known: dict[str, tuple[str, str]] = {}
_resolved: dict[str, Flavour] = {}  # the address `auto` settled on -> its flavour
_resolving = threading.Lock()

# The SDK's own name for "switch the socket's timeout off for a streamed answer": its
# stream helpers (_stream_raw_result, _multiplexed_response_stream_helper, ...) call it.
# A private method, so tests/test_engine_client.py checks the installed SDK still has it
# and still calls it, and connecting refuses an SDK that does not (pyproject pins the
# major version this was checked against).
SOCKET_TIMEOUT_HOOK = "_disable_socket_timeout"
# The SDK's own name for "turn an error status into an exception": every request's answer
# passes through it, so a Flavour that reads an engine's errors differently wraps it
# (tests/test_engine_client.py checks it is still there and still used).
ERROR_HOOK = "_raise_for_status"


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


def _address(ping_timeout: float) -> str:
    """The address of the engine this process uses. `auto`: DOCKER_HOST when set (an
    explicit choice), else the Docker engine when one answers, else Podman; settled once
    per process, and said as "no engine answers" naming both places when neither does."""
    name = wanted()
    if name != "auto":
        return address_of(name)
    if os.environ.get("DOCKER_HOST"):
        return address_of("docker")
    with _resolving:
        if _resolved:
            return next(iter(_resolved))
        problems = []
        for candidate in ENGINES:
            address = address_of(candidate)
            try:
                engine = _new_engine(address, None, ping_timeout)
            except NoEngine as exc:
                problems.append(f"{_title(candidate)} at {address} ({exc.why})")
                continue
            _resolved[address] = engine.flavour
            return address
    raise NoEngine(
        f"no container engine answers: neither {problems[0]} nor {problems[1]}; start "
        "one (scripts/setup starts both) or choose one with --engine / TRACER_ENGINE",
        "no engine")


def _new_engine(address: str, timeout: float | None, ping_timeout: float) -> Engine:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise EnvironmentProblem("the docker Python SDK is not installed") from exc
    environment = {**os.environ, "DOCKER_HOST": address}
    try:
        known = _known.get(address)
        if known is None:
            known = _known[address] = _identify(docker, environment, ping_timeout)
        # this process has reached that engine: the client is made without a question
        sdk = docker.from_env(timeout=ping_timeout, version=known[0], environment=environment)
    except engine_failures() as exc:
        why = _why_not(exc)
        flavour = FLAVOURS[_asked_for(address)]
        raise NoEngine(f"no {flavour.noun} answers at {address} "
                       f"({why}); {flavour.socket_hint}", why) from None
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
    flavour = FLAVOURS[known[1]]
    flavour.adapt(sdk.api)
    _made.set()
    return Engine(sdk, timeout, address, flavour)


def _identify(docker: Any, environment: dict[str, str], timeout: float) -> tuple[str, str]:
    """(API version, flavour name) of the engine at environment's DOCKER_HOST, from its
    ping: the answer's headers say both (Api-Version; Podman adds Libpod-Api-Version),
    as the docker CLI negotiates. Podman's /version takes about a second (it asks its
    runtime and conmon theirs), its ping a millisecond; an engine whose ping says neither
    is asked its /version."""
    probe = docker.from_env(timeout=timeout, environment=environment,
                            version=docker.constants.DEFAULT_DOCKER_API_VERSION)
    try:
        answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=timeout)
        probe.api._raise_for_status(answer)  # the SDK's errors, as for every answer
        version = answer.headers.get("Api-Version")
        flavour = "podman" if answer.headers.get("Libpod-Api-Version") else "docker"
        if not version:
            said = probe.version(api_version=False)
            version = said.get("ApiVersion") if isinstance(said, dict) else None
            flavour = _flavour_of(said)
    finally:
        probe.close()
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
        raise docker.errors.DockerException(f"not an engine's API version: {str(version)[:80]}")
    return version, flavour


def _flavour_of(version: object) -> str:
    """What the engine says it is (GET /version): Podman names itself in a component."""
    components = version.get("Components") if isinstance(version, dict) else None
    for component in components if isinstance(components, list) else ():
        if isinstance(component, dict) and "podman" in str(component.get("Name")).lower():
            return "podman"
    return "docker"


def _asked_for(address: str) -> str:
    """Which engine was looked for at `address` (for the message when none answers)."""
    name = wanted()
    if name != "auto":
        return name
    return "podman" if address == address_of("podman") and \
        address != address_of("docker") else "docker"


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
