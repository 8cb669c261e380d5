"""Which engine tracer uses, and how Podman's answers are made Docker's (tracer.engine).

The choice: `--engine` / TRACER_ENGINE, else the Docker engine when one answers, else
Podman, said in one message naming both places when neither does. The Flavour: what the
engine says it is decides it, and it alone knows Podman's names, states, limits, hosts
file and errors.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from pathlib import Path

import pytest
from image_builders import run_tracer

import tracer.engine as engine_mod
from tracer.engine import (
    FLAVOURS,
    NoEngine,
    address_of,
    choose,
    connect,
    engine_limits,
    missing_loopback_names,
    wanted,
)
from tracer.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_choice(monkeypatch):
    """No engine settled on yet in this process, and none asked for."""
    for name in ("TRACER_ENGINE", "DOCKER_HOST", "CONTAINER_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(engine_mod, "_resolved", {})
    monkeypatch.setattr(engine_mod, "_local", threading.local())


def test_the_engine_asked_for_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("TRACER_ENGINE", "Podman ")
    assert wanted() == "podman"
    monkeypatch.setenv("TRACER_ENGINE", "containerd")
    with pytest.raises(BadInput, match="TRACER_ENGINE='containerd': expected docker, "
                       "podman or auto"):
        wanted()
    choose("docker")  # what --engine does: for this process and the ones it starts
    assert os.environ["TRACER_ENGINE"] == "docker" and wanted() == "docker"


def test_where_each_engine_is_looked_for(monkeypatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    assert address_of("docker") == "unix:///var/run/docker.sock"
    if os.geteuid() == 0:
        assert address_of("podman") == "unix:///run/podman/podman.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2376")
    monkeypatch.setenv("CONTAINER_HOST", "unix:///srv/podman.sock")
    assert address_of("docker") == "tcp://192.0.2.1:2376"
    assert address_of("podman") == "unix:///srv/podman.sock"


def test_no_engine_at_all_is_one_message_naming_both_places(fresh_choice, monkeypatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setattr(engine_mod, "DOCKER_SOCKET", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{tmp_path}/podman.sock")
    with pytest.raises(NoEngine) as exc:
        connect()
    assert str(exc.value) == (
        f"no container engine answers: neither the Docker engine at unix://{tmp_path}/"
        f"docker.sock (no such socket) nor Podman at unix://{tmp_path}/podman.sock (no "
        "such socket); start one (scripts/setup starts both) or choose one with --engine "
        "/ TRACER_ENGINE")


def test_podman_asked_for_and_absent_says_how_to_start_it(tmp_path: Path) -> None:
    res = run_tracer(["ldd", "docker-daemon:tracer-test/none:1", "--engine", "podman"],
                     env={"CONTAINER_HOST": f"unix://{tmp_path}/podman.sock",
                          "TRACER_WORKDIR": str(tmp_path)}, timeout=60)
    assert res.returncode == 4, res.stderr
    assert (f"no Podman API socket answers at unix://{tmp_path}/podman.sock (no such "
            "socket); start its API socket (`podman system service --time=0 "
            "unix:///run/podman/podman.sock` as root") in res.stderr


def test_podmans_image_names_are_said_as_docker_says_them() -> None:
    docker, podman = FLAVOURS["docker"], FLAVOURS["podman"]
    assert podman.local_name("localhost/tracer-tmp/app:candidate-x") == \
        "tracer-tmp/app:candidate-x"
    assert podman.local_name("docker.io/tracer-test/app:min") == "tracer-test/app:min"
    assert podman.local_name("docker.io/library/nginx:1") == "nginx:1"
    assert podman.local_name("registry.example/app:1") == "registry.example/app:1"
    assert docker.local_name("localhost/app:1") == "localhost/app:1"  # a real registry name
    assert podman.container_state("stopped") == "exited"
    assert podman.container_state("configured") == "created"
    assert podman.container_state("running") == docker.container_state("running")


def test_podmans_not_there_is_the_sdks_not_found() -> None:
    """A 500 "does not exist in database" (a container removed while asked about) and a
    404 "image not known" raise what Docker's 404 "No such ..." raises."""
    import docker
    import requests

    def error(status: int, text: str) -> docker.errors.APIError:
        response = requests.Response()
        response.status_code = status
        return docker.errors.APIError("x", response, text)

    podman = FLAVOURS["podman"]
    gone = podman.docker_error(error(500, "container 7f39 does not exist in database: no "
                                          "such container"))
    assert type(gone) is docker.errors.NotFound
    image = podman.docker_error(error(404, "tracer-test/x:1: image not known"))
    assert type(image) is docker.errors.ImageNotFound
    other = error(500, "runc create failed")
    assert podman.docker_error(other) is other


def test_podman_gets_the_loopback_names_dockers_hosts_file_has(tmp_path: Path) -> None:
    """Podman copies the host's /etc/hosts into a container without a network; Docker
    writes its own. Only what the host's lacks is added."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 vm  # this host\n")
    assert missing_loopback_names(str(hosts)) == {
        "localhost": "::1", "ip6-localhost": "::1", "ip6-loopback": "::1",
        "ip6-localnet": "fe00::0", "ip6-mcastprefix": "ff00::0", "ip6-allnodes": "ff02::1",
        "ip6-allrouters": "ff02::2"}
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
                     "fe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\n"
                     "ff02::2 ip6-allrouters\n")
    assert missing_loopback_names(str(hosts)) == {}
    options = FLAVOURS["podman"].create_options("tcp://192.0.2.1:1", "host")
    assert options == {}  # a remote engine's limits are unknown; host network: its hosts
    assert FLAVOURS["docker"].create_options("unix:///x", "none") == {}


def test_the_limits_of_the_process_behind_a_socket(tmp_path: Path) -> None:
    """SO_PEERCRED names the process serving the socket (here this test's own), whose
    limits a container can always get: Podman is asked for exactly those."""
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    try:
        limits = engine_limits(f"unix://{path}")
    finally:
        server.close()
    assert limits["nofile"] == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits["nproc"] == resource.getrlimit(resource.RLIMIT_NPROC)
    assert engine_limits(f"unix://{tmp_path}/none.sock") == {}


@pytest.mark.integration
def test_without_a_docker_engine_auto_is_podman(fresh_choice, monkeypatch, podman,
                                                tmp_path: Path) -> None:
    monkeypatch.setattr(engine_mod, "DOCKER_SOCKET", f"unix://{tmp_path}/docker.sock")
    engine = connect()
    assert engine.flavour.name == "podman" and engine.address == address_of("podman")
    assert engine.api.version()["Components"][0]["Name"] == "Podman Engine"


@pytest.mark.integration
def test_the_flavour_is_what_the_engine_says_it_is(fresh_choice, monkeypatch, podman) -> None:
    """DOCKER_HOST pointed at Podman's socket (a common setup): still Podman's flavour."""
    monkeypatch.setenv("DOCKER_HOST", address_of("podman"))
    monkeypatch.setenv("TRACER_ENGINE", "docker")
    assert connect().flavour.name == "podman"


@pytest.mark.integration
def test_podman_containers_get_limits_the_runtime_can_set_and_dockers_hosts(
        podman, monkeypatch, tmp_path: Path) -> None:
    """Podman's default RLIMIT_NOFILE/NPROC (1048576) cannot be set where root may not
    raise its limits; tracer's containers get the API socket's own, as Docker's get
    dockerd's. And `localhost` resolves to ::1 too, as in Docker's /etc/hosts."""
    from tracer.profile.model import Profile, RunSpec
    from tracer.trace.run import run_smoke

    monkeypatch.setenv("TRACER_ENGINE", "podman")
    limits = engine_limits(address_of("podman"))
    assert limits, "the local Podman service's limits are readable"
    base = podman.image("base")
    soft, hard = limits["nofile"]
    profile = Profile(name="limits", image=base, run=RunSpec(
        mode="job", entrypoint=["sh", "-c", "ulimit -n; ulimit -Hn; getent ahosts localhost"],
        cmd=[], stdout=f"^{soft}\n{hard}\n(.|\n)*::1 ", timeout=60))
    result = run_smoke(profile, base, traced=False, workdir=tmp_path)
    assert result.passed, (result.failure, result.steps[0].output)
