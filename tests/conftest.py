"""Shared test fixtures.

Integration tests (marker `integration`) need the real Docker engine, strace and the
fixture images built by `scripts/setup`. Locally they skip with the reason when the engine
is absent; in CI (CI=true) a missing component is a failure, never a skip.

The core pipeline tests run on both engines: a test that takes the `engine` fixture runs
once on the Docker engine and once on Podman (through its API socket, as tracer drives
it), with TRACER_ENGINE set for the test and every tracer process it starts. Podman
missing is a failure in CI, like a missing Docker engine.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prereq import missing
from registry import auth_registry, plain_registry  # noqa: F401 - the test registries

FIXTURE_IMAGES = {
    "base": "tracer-fixture/base:bookworm",
    "nginx": "tracer-fixture/nginx:test",
    "pyapp": "tracer-fixture/pyapp:test",
    "hardcases": "tracer-fixture/hardcases:test",
    "layers": "tracer-fixture/layers:test",
    "unixsock": "tracer-fixture/unixsock:test",
    "tmpjob": "tracer-fixture/tmpjob:test",
    "codecs": "tracer-fixture/codecs:test",
    "privhelper": "tracer-fixture/privhelper:test",
    "prodapps": "tracer-fixture/prodapps:test",
}


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client talking to a live engine."""
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        missing(f"no Docker engine answers ({exc}); run scripts/setup")
    return client


@pytest.fixture(scope="session")
def fixture_image(docker_client):
    """Return a function mapping a fixture name to its image reference, checking it exists."""
    import docker

    def get(name: str) -> str:
        ref = FIXTURE_IMAGES[name]
        try:
            docker_client.images.get(ref)
        except docker.errors.ImageNotFound:
            missing(f"fixture image {ref} is not built; run scripts/setup")
        return ref

    return get


class EngineUnderTest:
    """One engine as a test drives it: its SDK client (`client`), its fixture images
    (`image`), the environment that makes tracer use it (`env`)."""

    def __init__(self, name: str, client) -> None:
        self.name = name
        self.client = client

    def image(self, fixture: str) -> str:
        """The fixture image's reference, checked to be in this engine's store."""
        import docker

        ref = FIXTURE_IMAGES[fixture]
        try:
            self.client.images.get(ref)
        except docker.errors.NotFound:
            missing(f"fixture image {ref} is not in {self.name}'s store; run scripts/setup")
        return ref

    def image_id(self, ref: str) -> str:
        return self.client.images.get(ref).id

    def has_image(self, ref: str) -> bool:
        import docker

        try:
            self.client.images.get(ref)
        except docker.errors.NotFound:
            return False
        return True

    def remove_image(self, ref: str) -> None:
        with contextlib.suppress(Exception):
            self.client.images.remove(ref, force=True)

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        import os

        return {**(os.environ if base is None else base), "TRACER_ENGINE": self.name,
                **extra}

    def __repr__(self) -> str:
        return self.name


ENGINE_NAMES = ("docker", "podman")
_engines: dict[str, EngineUnderTest] = {}


def engine_under_test(name: str) -> EngineUnderTest:
    """The engine `name` (its client made once per session); missing() when it does not
    answer."""
    if name not in _engines:
        import docker

        from tracer.engine import address_of

        address = address_of(name)
        try:
            client = docker.DockerClient(base_url=address, timeout=300)
            version = client.version()
        except Exception as exc:  # noqa: BLE001 - any failure means no engine
            missing(f"no {name} engine answers at {address} ({exc}); run scripts/setup")
        said = " ".join(str(c.get("Name")) for c in version.get("Components") or [])
        if ("Podman" in said) != (name == "podman"):
            missing(f"the engine at {address} is not {name} ({said})")
        _engines[name] = EngineUnderTest(name, client)
    return _engines[name]


@pytest.fixture(params=ENGINE_NAMES)
def engine(request, monkeypatch) -> EngineUnderTest:
    """Each engine in turn, chosen for this test and the tracer processes it starts."""
    e = engine_under_test(request.param)
    monkeypatch.setenv("TRACER_ENGINE", e.name)
    return e


@pytest.fixture(scope="session")
def podman() -> EngineUnderTest:
    """Podman alone (tests of what only Podman does)."""
    return engine_under_test("podman")


@pytest.fixture(scope="session")
def host_strace() -> str:
    path = shutil.which("strace")
    if not path:
        missing("strace is not installed; run scripts/setup")
    return path


@pytest.fixture(scope="session")
def gcc() -> str:
    path = shutil.which("gcc")
    if not path:
        missing("gcc is not installed; run scripts/setup")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; used by tests that drive real tools."""
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Interrupted(subprocess.CompletedProcess):
    """A finished, interrupted run, with the containers it made (`containers()`)."""

    def __init__(self, proc: subprocess.Popen, out: str, err: str, docker_client,
                 pids: set[int]) -> None:
        super().__init__(proc.args, proc.returncode, out, err)
        self._client = docker_client
        self.pids = pids

    def containers(self, *, all: bool = True) -> list:
        """The containers, running or not, that the run's processes made and are still
        there: only these, whatever else uses the engine meanwhile."""
        return containers_of(self._client, self.pids, all=all)


def containers_of(docker_client, pids: set[int], *, all: bool = True) -> list:
    """Containers whose owner label names one of `pids` on this host (tracer labels every
    container it makes with HOST:PID:START of the process that made it)."""
    import socket

    from tracer.workdir import OWNER_LABEL

    host = socket.gethostname()
    out = []
    for c in docker_client.containers.list(all=all, filters={"label": OWNER_LABEL}):
        owner_host, _, rest = (c.labels.get(OWNER_LABEL) or "").rpartition(":")[0] \
            .rpartition(":")
        if owner_host == host and rest.isdigit() and int(rest) in pids:
            out.append(c)
    return out


def write_sleeping_profiles(profiles: Path, names: tuple[str, ...] = ("slow-a", "slow-b")
                            ) -> None:
    """Profiles of the hardcases fixture whose one smoke step sleeps for 300 s (a fresh
    container per step: the command step keeps one up for long), one per name, writing to
    `tracer-test/NAME:never`: jobs to interrupt while they run."""
    repo = Path(__file__).resolve().parent.parent
    profiles.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = yaml.safe_load((repo / "profiles" / "hardcases.yaml").read_text())
        data["name"] = name
        data["output"] = f"docker-daemon:tracer-test/{name}:never"
        data["smoke"] = [{"command": ["sleep", "300"], "timeout": "400s"}]
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def interrupt_when_running(argv: list[str], docker_client, started, *, cwd, env=None,
                           timeout: float = 300) -> Interrupted:
    """Start `python -m tracer ARGV`, wait until `started(its_containers)` holds, Ctrl-C it.

    Returns the finished process; the test then asserts what cleanup left behind. Polls
    for the containers the run made: those labelled with the pid of the run or of one of
    its children (`tracer batch` runs `tracer minimize` children), never anything else on
    the engine, so other users of the engine cannot trigger or fail the test.
    """
    import signal
    import sys
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "tracer", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = {proc.pid}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            if started(containers_of(docker_client, pids, all=False)):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        else:
            pytest.fail("the run's containers never started")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    return Interrupted(proc, out, err, docker_client, pids)
