"""Checks of the machine the pipeline runs on (exit code 4 when something is missing).

Checked up front so a nightly job fails in a second with "no Docker engine" rather than
after flattening a large image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from urllib.parse import urlsplit

from tracer.errors import EnvironmentProblem
from tracer.profile.model import HttpStep, Profile, TcpStep


def require_strace() -> str:
    path = shutil.which("strace")
    if path is None:
        raise EnvironmentProblem("strace is not installed on this machine (apt-get install "
                                 "strace); it is what records the traced run")
    return path


UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def _listening_ports(profile: Profile) -> set[int]:
    """The loopback ports the smoke test talks to: where the app listens."""
    ports = {profile.run.ready.tcp} if profile.run.ready.tcp else set()
    for smoke in profile.smoke:
        step = smoke.step
        if isinstance(step, TcpStep):
            ports.add(step.port)
        elif isinstance(step, HttpStep):
            url = urlsplit(step.url)
            with contextlib.suppress(ValueError):
                ports.add(url.port or (443 if url.scheme == "https" else 80))
    return ports


def require_engine_can_run(profile: Profile) -> None:
    """Refuse up front (exit 4, naming the missing capability) what the engine cannot do
    for this profile, rather than fail halfway with a verdict about the app.

    A rootless engine (rootless Podman: tracer run by a normal user) runs containers in
    a user namespace: root there has no capability on the host. With `network: host` the
    app binds its ports in the host's network namespace, where a port below
    net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE on the host: the app
    would fail to start, and the run would blame the image (exit 3). What rootless cannot
    record (fanotify needs CAP_SYS_ADMIN on the host) is not refused: strace records
    alone, and the run's notes and the report say so.
    """
    from tracer.engine import connect

    engine = connect()
    if profile.run.network != "host" or not engine.rootless:
        return
    try:
        with open(UNPRIVILEGED_PORT_START, encoding="ascii") as f:
            first = int(f.read(32).strip())
    except (OSError, ValueError):
        first = 1024
    low = sorted(p for p in _listening_ports(profile) if p < first)
    if low:
        raise EnvironmentProblem(
            f"profile {profile.name}: the app listens on port {low[0]} of the host's network "
            f"(network: host); binding a port below {first} there needs "
            f"CAP_NET_BIND_SERVICE on the host, which {engine.flavour.title} running "
            f"rootless (uid {os.geteuid()}) cannot give its containers. Run tracer as root "
            f"with a rootful engine, let the app listen on a port from {first} up, or "
            "lower net.ipv4.ip_unprivileged_port_start on this host")
