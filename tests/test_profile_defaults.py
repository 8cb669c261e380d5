"""The defaults docs/profile.md states are the loader's, key by key.

A default decides what a profile that leaves a key out checks: `exit: 0` on a step is what
makes a broken image fail verification, and a loader whose default drifted from the
documented one would let it pass with nobody noticing. This test reads every
`Default:` of the reference and compares it with what the loader gives for a profile that
leaves that key out. A new key with a literal default is checked as soon as it is
documented; one the test cannot find in the model fails it until it is taught here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tracer.budgets import parse_size
from tracer.profile.checker import parse_duration
from tracer.profile.sections import parse_profile

DOC = Path(__file__).resolve().parent.parent / "docs" / "profile.md"
NONE = object()  # the documented default is "none": the model holds None
PROSE = object()  # a default in words ("the image's Entrypoint"): the model holds None


def documented() -> dict[str, tuple[str, str]]:
    """dotted key -> (its first paragraph, the text after `Default:` in it)."""
    out: dict[str, tuple[str, str]] = {}
    sections = re.split(r"^#### `([^`]+)`[^\n]*\n", DOC.read_text(), flags=re.M)
    for key, body in zip(sections[1::2], sections[2::2], strict=True):
        paragraph = " ".join(body.strip().split("\n\n", 1)[0].split())
        m = re.search(r"Default:\s*(.*)", paragraph)
        if m:
            out[key] = (paragraph, m.group(1))
    return out


def expected(type_line: str, default: str) -> Any:
    text = default.strip()
    m = re.match(r"^`([^`]*)`", text)
    if m is None:
        return NONE if re.match(r"^(none|nothing is sent)\b", text) else PROSE
    literal = m.group(1)
    if "duration" in type_line:
        return parse_duration(literal)
    if "[size]" in type_line:
        return parse_size(literal)
    if literal in ("[]", "{}"):
        return [] if literal == "[]" else {}
    if re.fullmatch(r"\d+", literal):
        return int(literal)
    return literal


MINIMAL = {"version": 1, "name": "x", "image": "docker-daemon:x:1"}


def yaml_text(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data)


def _limit(name: str) -> Any:
    """run.limits.NAME as a run applies it: the model leaves it None, tracer.trace.limits
    fills in the default (on a host big enough that no host-derived cap applies)."""
    from tracer.trace.limits import resolve

    def value(profile: Any) -> Any:
        return getattr(resolve(profile.run.limits, 1 << 50, 1 << 10), name)
    return value


# keys whose model value is None and whose default a later stage fills in: how to get it
FILLED_IN = {"run.limits.pids": _limit("pids"), "run.limits.memory": _limit("memory")}


def loaded(key: str) -> Any:
    """The model's value for `key` in a profile that leaves `key` out (for FILLED_IN keys:
    the value the stage that fills it in uses)."""
    if key in FILLED_IN:
        return FILLED_IN[key](parse_profile(yaml_text(MINIMAL), "defaults.yaml"))
    import yaml

    data: dict[str, Any] = dict(MINIMAL)
    parts = key.split(".")
    if parts[0] == "smoke[]":
        data["run"] = {"network": "host"}
        if len(parts) > 2 and parts[1] == "http":
            data["smoke"] = [{"http": {"url": "http://127.0.0.1/"}}]
        elif len(parts) > 2 and parts[1] == "tcp":
            data["smoke"] = [{"tcp": {"port": 1}}]
        else:
            data["smoke"] = [{"command": ["true"]}]
        profile = parse_profile(yaml.safe_dump(data), "defaults.yaml")
        obj: Any = profile.smoke[0].step
        parts = parts[2:] if len(parts) > 2 and parts[1] in ("http", "tcp") else parts[1:]
    else:
        obj = parse_profile(yaml.safe_dump(data), "defaults.yaml")
    for part in parts:
        if not hasattr(obj, part) and part.endswith("_file") and hasattr(obj, part[:-5]):
            part = part[:-5]  # stdin_file is read into stdin
        assert hasattr(obj, part), f"{key}: no {part!r} in {type(obj).__name__}; teach " \
            "this test where the model keeps it"
        obj = getattr(obj, part)
    return obj


DOCUMENTED = documented()


def test_the_reference_states_defaults_for_the_keys_that_decide_verification() -> None:
    for key in ("smoke[].exit", "run.exit", "smoke[].http.status", "run.timeout",
                "smoke[].timeout", "run.ready.timeout", "run.network", "run.mode",
                "keep.granularity", "exclude"):
        assert key in DOCUMENTED, key


@pytest.mark.parametrize("key", sorted(k for k in DOCUMENTED
                                       if k not in ("version", "name", "image", "output")))
def test_documented_default_is_the_loaders(key: str) -> None:
    type_line, default = DOCUMENTED[key]
    want = expected(type_line, default)
    value = loaded(key)
    if want is PROSE:
        # "the image's Cmd", "everything from the image", "nothing extra": the model either
        # leaves it to the image (None) or holds an empty section/collection
        assert not isinstance(value, int | float | str), (key, default, value)
    elif want is NONE:
        assert value is None, (key, default, value)
    else:
        assert value == want and type(value) is type(want), (key, default, value)
