"""Profile errors that say what to write: a lone value where a list belongs is the most
common first mistake (`binaries: getent`, `command: ls -l /srv`), and the message's
suggestion must itself be a valid profile."""

from __future__ import annotations

import re

import pytest

from tracer.profile.document import ProfileErrors
from tracer.profile.sections import parse_profile

HEAD = "version: 1\nname: a\nimage: a:1\nrun: {mode: job}\n"


def _problem(text: str) -> str:
    with pytest.raises(ProfileErrors) as info:
        parse_profile(HEAD + text, filename="p.yaml")
    (problem,) = info.value.problems
    return problem


@pytest.mark.parametrize("line, key, value", [
    ("keep: {binaries: getent}", "keep.binaries", "getent"),
    ("exclude: /usr/share/doc/**", "exclude", "/usr/share/doc/**"),
    ("smoke:\n  - command: ls -l /srv", "smoke[0].command", "ls -l /srv"),
])
def test_a_lone_value_where_a_list_belongs_says_how_to_write_it(line: str, key: str,
                                                               value: str) -> None:
    problem = _problem(line + "\n")
    assert f"{key}: expected a list, got {value!r}; " in problem
    suggested = re.search(r"(\[[^]]*\])", problem.split("; ", 1)[1])
    assert suggested is not None, problem
    fixed = parse_profile(HEAD + line.replace(value, suggested.group(1)) + "\n",
                          filename="p.yaml")
    assert fixed.name == "a"
    if " " in value:  # a command: its words, not one program named "ls -l /srv"
        assert fixed.smoke[0].step.argv == value.split()
        assert "no shell" in problem


def test_a_typo_in_a_steps_kind_is_one_problem_naming_the_kind_meant() -> None:
    problem = _problem("smoke:\n  - comand: [ls]\n")
    assert "smoke[0].comand: unknown key; did you mean 'command'?" in problem
    # without a kind at all, the step still says which kinds there are
    with pytest.raises(ProfileErrors) as info:
        parse_profile(HEAD + "smoke:\n  - exit: 0\n", filename="p.yaml")
    assert any("expected exactly one of http, tcp, exec, command, sleep" in p
               for p in info.value.problems)
