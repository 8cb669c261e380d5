"""Suggested profile lines go where they belong in the operator's own file, and load.

Every case pastes the planned edits into a real profile text and loads the result through
tracer.profile.parse_profile, the loader `tracer minimize` uses: a suggestion that does
not load, or loads as something else, is worse than none.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tracer.profile.edit import apply, placed, plan, yaml_str
from tracer.profile.model import CommandStep, ExecStep
from tracer.profile.sections import parse_profile

REPO = Path(__file__).resolve().parent.parent
STEP = {"exec": ["env", "PYTHONIOENCODING=iso-8859-15", "python3", "-c", "print('a\\b')"],
        "exit": 0, "stdout": "Rapport \\(mai\\)"}
WANT_STEP = ExecStep(argv=STEP["exec"], exit=0, stdout=STEP["stdout"])
ADD = {("smoke",): [STEP], ("keep", "binaries"): ["/usr/bin/iconv"],
       ("keep", "paths"): ["/usr/lib/x/a b.so", "/etc/a\nb"]}
HEAD = "version: 1\nname: app\nimage: docker-daemon:app:1\n"


def additions(text: str) -> dict[tuple[str, ...], list]:
    """ADD, with a `command` step for a job (which has no running container to exec in)."""
    if parse_profile(text).run.mode != "job":
        return ADD
    return {**ADD, ("smoke",): [{"command": STEP["exec"], **{k: v for k, v in STEP.items()
                                                             if k != "exec"}}]}

LAYOUTS = {
    # the shipped profiles: sections followed by others, comments after list items
    "pyapp": (REPO / "profiles/pyapp.yaml").read_text(),
    "nginx": (REPO / "profiles/nginx.yaml").read_text(),
    "hardcases": (REPO / "profiles/hardcases.yaml").read_text(),
    "no sections, no final newline": HEAD.rstrip("\n"),
    "flow lists and mappings": HEAD + 'run: {network: host}\nsmoke: [{sleep: 1s}]\n'
                               'keep: {paths: ["/x",  # why\n ]}\n',
    "empty flow lists": HEAD + "smoke: []\nkeep: {paths: [], binaries: []}\n",
    "lists at the key's own indentation": HEAD + "smoke:\n- sleep: 1s\n# next\nkeep:\n"
                                          "    binaries:\n    - getent\n    # more\n"
                                          'exclude: ["/usr/share/doc/**"]\n',
    "aliases": HEAD + "smoke:\n  - &s {sleep: 1s}\n  - *s\nkeep:\n  packages: [tzdata]\n",
    "keep without the keys": HEAD + "keep:\n  granularity: file\nsmoke:\n  - sleep: 1s\n",
    # a list that is another's anchor: extending it would change both, so it is spelled out
    "a list that is an alias": HEAD + 'exclude: &docs ["/usr/share/doc/**"]\n'
                               "keep:\n  paths: *docs\n",
    "a block list that is an alias": HEAD + 'exclude: &docs\n  - "/usr/share/doc/**"\n'
                                     "keep:\n  paths: *docs  # the same\n  binaries: []\n",
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_pasted_lines_load_as_what_was_suggested(name: str) -> None:
    text = LAYOUTS[name]
    before = parse_profile(text)
    edits = plan(text, additions(text))
    after = parse_profile(apply(text, edits))
    want = WANT_STEP if before.run.mode != "job" else CommandStep(**vars(WANT_STEP))
    assert after.smoke[:-1] == before.smoke and after.smoke[-1].step == want
    assert after.keep.binaries == [*before.keep.binaries, "/usr/bin/iconv"]
    assert after.keep.paths == [*before.keep.paths, "/usr/lib/x/a b.so", "/etc/a\nb"]
    assert (after.run, after.exclude, after.keep.packages) == (
        before.run, before.exclude, before.keep.packages)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_by_hand_as_told_gives_the_same_file(name: str) -> None:
    """An operator follows the printed instructions in order (bottom of the file first):
    insert after line N, or replace lines N-M; the file is then what `apply` makes."""
    text = LAYOUTS[name]
    edits = plan(text, additions(text))
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for p in placed(text, edits):
        new = p.text.splitlines(keepends=True)
        if p.after_line is not None:
            lines[p.after_line:p.after_line] = new
        else:
            assert p.lines is not None
            first, last = p.lines
            lines[first - 1:last] = new
    assert parse_profile("".join(lines)) == parse_profile(apply(text, edits))


def test_new_items_follow_the_list_already_there() -> None:
    text = (REPO / "profiles/pyapp.yaml").read_text()
    edits = plan(text, {("keep", "paths"): ["/usr/lib/python3.11/encodings/iso8859_15.py"]})
    [p] = placed(text, edits)
    last_item = text.splitlines().index('    - "/srv/app/**"          # the application\'s '
                                        'own code, all of it') + 1
    assert p.after_line == last_item and p.lines is None
    assert p.text == '    - "/usr/lib/python3.11/encodings/iso8859_15.py"\n'
    assert p.header("pyapp.yaml") == f"insert after line {last_item} of pyapp.yaml (keep.paths):"


def test_a_flow_list_is_shown_as_the_changed_line() -> None:
    text = HEAD + 'keep: {paths: ["/x"]}  # mine\n'
    [p] = placed(text, plan(text, {("keep", "paths"): ["/y"]}))
    assert p.lines == (4, 4) and p.after_line is None
    assert p.text == 'keep: {paths: ["/x", "/y"]}  # mine\n'
    assert p.header("a.yaml") == "replace line 4 of a.yaml (keep.paths) with:"


def test_items_already_there_are_not_added_again() -> None:
    text = HEAD + 'keep:\n  paths: ["/x"]\n'
    assert plan(text, {("keep", "paths"): ["/x"]}) == []


@pytest.mark.parametrize("value", ["plain", "a\nb\tc\r", 'q"\\', "\x00\x7f\u2028", "é😀",
                                   "\udcff-not-utf8", "", "- not a list", "#not a comment",
                                   "key: value", "*alias", "&anchor", "!tag", "null", "yes"])
def test_every_string_is_written_so_it_reads_back_the_same(value: str) -> None:
    assert yaml.safe_load(yaml_str(value)) == value
    assert yaml_str(value).isascii() or not any(ch in value for ch in "\x00\x7f\u2028\udcff")


def test_a_list_other_keys_alias_is_not_extended() -> None:
    """Items added to an anchored list would be added to every alias of it too."""
    text = HEAD + "keep:\n  paths: &p\n    - /etc/**\n  binaries: *p\n"
    with pytest.raises(ValueError, match="anchor"):
        plan(text, {("keep", "paths"): ["/x"]})
