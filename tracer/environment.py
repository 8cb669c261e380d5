"""Checks of the machine the pipeline runs on (exit code 4 when something is missing).

Checked up front so a nightly job fails in a second with "no Docker engine" rather than
after flattening a large image.
"""

from __future__ import annotations

import shutil

from tracer.errors import EnvironmentProblem


def docker_client(timeout: int = 300):  # -> docker.DockerClient
    """A client for a live engine, or EnvironmentProblem saying how to get one."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - every failure here means "no usable engine"
        raise EnvironmentProblem(
            f"no Docker engine answers ({exc}); start one (scripts/setup does) or set "
            "DOCKER_HOST"
        ) from None
    return client


def require_strace() -> str:
    path = shutil.which("strace")
    if path is None:
        raise EnvironmentProblem("strace is not installed on this machine (apt-get install "
                                 "strace); it is what records the traced run")
    return path
