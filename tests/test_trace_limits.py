"""Resource limits of a run's containers: the profile's `run.limits`, else the defaults.

No engine: how the profile says it, what the defaults are on a given host, and what the
engine is asked for. tests/test_security_limits.py runs them against the engine.
"""

from __future__ import annotations

import pytest

from tracer.budgets import GiB, MiB
from tracer.profile.document import ProfileErrors
from tracer.profile.model import Limits
from tracer.profile.sections import parse_profile
from tracer.trace.docker_runner import ContainerSpec, _resources
from tracer.trace.limits import DEFAULT_PIDS, ContainerLimits, no_new_privileges, resolve

HEAD = "version: 1\nname: a\nimage: a:1\n"


def test_the_profile_sets_each_limit():
    p = parse_profile(HEAD + "run:\n  limits: {pids: 512, memory: 3GiB, cpus: 1.5}\n")
    assert p.run.limits == Limits(pids=512, memory=3 * GiB, cpus=1.5)
    assert parse_profile(HEAD).run.limits == Limits()


@pytest.mark.parametrize("value, message", [
    ("{pids: 2}", "run.limits.pids: expected an integer from 8"),
    ("{pids: many}", "run.limits.pids: expected an integer"),
    ("{memory: 1MiB}", "run.limits.memory: at least 6MiB"),
    ("{memory: lots}", "run.limits.memory: expected a positive number or a size"),
    ("{cpus: 0}", "run.limits.cpus: expected a number of CPUs from 0.01"),
    ("{cpus: true}", "run.limits.cpus: expected a number of CPUs"),
    ("{cpus: [1]}", "run.limits.cpus: expected a scalar"),
    ("{swap: 1GiB}", "run.limits.swap: unknown key"),
])
def test_a_bad_limit_is_named_with_its_line(value: str, message: str):
    with pytest.raises(ProfileErrors) as info:
        parse_profile(HEAD + f"run:\n  limits: {value}\n", filename="p.yaml")
    assert any(p.startswith("p.yaml:5: ") and message in p for p in info.value.problems), \
        info.value.problems


def test_defaults_fit_real_apps_and_stay_below_the_host():
    big = resolve(Limits(), host_memory=64 * GiB, host_cpus=16)
    assert big == ContainerLimits(pids=DEFAULT_PIDS, memory=8 * GiB, nano_cpus=16 * 10**9)
    small = resolve(Limits(), host_memory=4 * GiB, host_cpus=2)
    assert small.memory == 2 * GiB  # half the host's memory: the host keeps the rest
    assert small.nano_cpus == 2 * 10**9
    # the profile wins, but never more CPUs than the host has (the engine refuses them)
    mine = resolve(Limits(pids=64, memory=100 * MiB, cpus=8.0), 4 * GiB, 2)
    assert mine == ContainerLimits(pids=64, memory=100 * MiB, nano_cpus=2 * 10**9)


def test_the_engine_is_asked_for_every_limit_and_no_swap_beyond():
    spec = ContainerSpec(image="i", argv=["x"], limits=ContainerLimits(64, 100 * MiB, 10**9),
                         no_new_privileges=True)
    assert _resources(spec) == {"pids_limit": 64, "mem_limit": 100 * MiB,
                                "memswap_limit": 100 * MiB, "nano_cpus": 10**9,
                                "security_opt": ["no-new-privileges"]}


@pytest.mark.parametrize("root, privileged, expected", [
    (True, True, True),  # root gains nothing by exec
    (False, False, True),  # nothing in the image could make it gain
    (False, True, False),  # sudo, ping, a file-capability helper must keep working
])
def test_no_new_privileges_unless_the_app_may_need_them(root, privileged, expected):
    assert no_new_privileges(root, privileged) is expected
