"""The resource limits and privilege rule of every container a smoke run starts.

The image under test is hostile input, and so is what it does when it runs: a fork bomb or
a runaway allocation in a container without limits takes the build host with it. Every
container of a run (traced, untraced, command steps, verification) gets a process, memory
and CPU limit: the profile's `run.limits`, else defaults that fit real applications and
stay below what the engine's host has. And `no-new-privileges` wherever no program of the
app can need to gain privilege: the app runs as root, or the image has no setuid/setgid or
file-capability programs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tracer.budgets import GiB
from tracer.engine import Engine
from tracer.profile.model import Limits

DEFAULT_PIDS = 4096  # a JVM or a busy worker pool stays far below; a fork bomb hits it
DEFAULT_MEMORY = 8 * GiB  # ... or half the host's memory, whichever is less


@dataclass(frozen=True)
class ContainerLimits:
    """What the engine is asked for: `--pids-limit`, `--memory` (= `--memory-swap`: no
    swap beyond), `--cpus` (as nano-CPUs)."""

    pids: int
    memory: int
    nano_cpus: int



def host_resources(engine: Engine) -> tuple[int, int]:
    """(memory bytes, CPUs) of the engine's host, from the engine (it may be remote);
    this machine's when the engine does not say."""
    info = engine.info()  # asked once per process
    memory = info.get("MemTotal")
    cpus = info.get("NCPU")
    if not isinstance(memory, int) or memory <= 0:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if not isinstance(cpus, int) or cpus <= 0:
        cpus = os.cpu_count() or 1
    return memory, cpus


def resolve(limits: Limits, host_memory: int, host_cpus: int) -> ContainerLimits:
    """The profile's limits with the defaults filled in; CPUs at most the host's (the
    engine refuses more than it has)."""
    memory = limits.memory or min(DEFAULT_MEMORY, host_memory // 2)
    cpus = min(limits.cpus or float(host_cpus), float(host_cpus))
    return ContainerLimits(pids=limits.pids or DEFAULT_PIDS, memory=memory,
                           nano_cpus=int(cpus * 1e9))


def no_new_privileges(app_is_root: bool, privileged_programs: bool) -> bool:
    """True when the app cannot need to gain privilege by exec (setuid/setgid bits or
    file capabilities): it runs as root already, or the image has no such programs."""
    return app_is_root or not privileged_programs
