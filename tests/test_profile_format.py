"""One format, three descriptions that must agree: the loader's key tables, the reference
in docs/profile.md and the JSON Schema shipped in the package. Plus: the shipped profiles
pass the schema, and the package cites its own docs, not design notes outside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tracer.profile.document import ProfileErrors
from tracer.profile.schema import json_schema_text
from tracer.profile.sections import SECTIONS, parse_profile

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "profile.md"


def accepted_keys() -> frozenset[str]:
    """Every key the loader accepts, dotted (`run.ready.tcp`, `smoke[].http.url`)."""
    return frozenset(f"{section}.{key}" if section else key
                     for section, keys in SECTIONS.items() for key in keys)
SCHEMA = json.loads(json_schema_text())
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def documented_keys() -> set[str]:
    """Keys with a `#### \\`key\\`` section, and the budget table's `budgets.NAME` rows."""
    text = DOC.read_text(encoding="utf-8")
    keys = set(re.findall(r"^#### `([^`]+)`\s*$", text, re.M))
    keys |= set(re.findall(r"^\| `(budgets\.[a-z_]+)` \|", text, re.M))
    return keys


def schema_keys(schema: dict) -> set[str]:
    """Dotted keys of every `properties` entry reachable from the root (lists as `[]`)."""
    defs = schema.get("definitions", {})
    out: set[str] = set()

    def walk(node: dict, path: str) -> None:
        if "$ref" in node:
            walk(defs[node["$ref"].rsplit("/", 1)[-1]], path)
        for branch in node.get("oneOf", []) + node.get("anyOf", []) + node.get("allOf", []):
            walk(branch, path)
        for key, sub in node.get("properties", {}).items():
            dotted = f"{path}.{key}" if path else key
            out.add(dotted)
            walk(sub, dotted)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(schema, "")
    return out


def test_the_loader_the_reference_and_the_schema_list_the_same_keys() -> None:
    loader = set(accepted_keys())
    assert {"run.stdin", "smoke[].stdin_file", "keep.granularity", "budgets.layers",
            "smoke[].http.max_body"} <= loader
    assert "budgets.profile_bytes" not in loader  # only --budget raises it
    doc = documented_keys()
    assert sorted(loader - doc) == [], "accepted but not documented in docs/profile.md"
    assert sorted(doc - loader) == [], "documented but not accepted by the loader"
    schema = schema_keys(SCHEMA)
    assert sorted(loader - schema) == [], "accepted but missing from the JSON Schema"
    assert sorted(schema - loader) == [], "in the JSON Schema but not accepted"


def _with_key(dotted: str) -> str:
    """A profile that sets `dotted` (to null): the loader must not call the key unknown."""
    parts = dotted.split(".")
    value: object = None
    for part in reversed(parts):
        value = {part[:-2]: [value]} if part.endswith("[]") else {part: value}
    doc = {"version": 1, "name": "a", "image": "a:1"}
    if parts[0] not in doc:
        doc.update(value)  # type: ignore[arg-type]
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("key", sorted(accepted_keys()))
def test_the_loader_really_accepts_each_key_of_its_tables(key: str) -> None:
    """The tables are what the loader checks against, not a list kept next to it."""
    try:
        parse_profile(_with_key(key), filename="p.yaml")
        problems: list[str] = []
    except ProfileErrors as exc:
        problems = exc.problems
    field = key.replace("smoke[]", "smoke[0]")
    assert not [p for p in problems if f": {field}: unknown key" in p], problems


@pytest.mark.parametrize("key", ["run.entrypiont", "smoke[].http.headers", "keep.globs",
                                 "budgets.profile_bytes", "stdin"])
def test_keys_outside_the_tables_are_refused(key: str) -> None:
    with pytest.raises(ProfileErrors) as info:
        parse_profile(_with_key(key), filename="p.yaml")
    field = key.replace("smoke[]", "smoke[0]")
    assert any(f": {field}: " in p for p in info.value.problems), info.value.problems


def test_the_schema_is_valid_draft7_and_every_shipped_profile_passes_it() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert len(PROFILES) >= 4
    for path in PROFILES:
        jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


def test_shipped_profiles_name_the_schema_on_their_first_line() -> None:
    for path in PROFILES:
        first = path.read_text().splitlines()[0]
        assert first == ("# yaml-language-server: "
                         "$schema=../tracer/profile/profile.schema.json"), path
        assert (path.parent / "../tracer/profile/profile.schema.json").resolve().is_file()


def test_the_complete_example_of_the_reference_loads_and_passes_the_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = text.split("## A complete example", 1)[1].split("```yaml\n", 1)[1]
    example = example.split("```", 1)[0]
    profile = parse_profile(example, filename="docs/profile.md")
    assert profile.keep.binaries == ["/bin/sh", "/usr/bin/memc*", "getent"]
    jsonschema.validate(yaml.safe_load(example), SCHEMA)


@pytest.mark.parametrize("bad", [
    {"version": 1, "name": "a", "image": "x", "smoke": [{"sleep": "1s", "exit": 0}]},
    {"version": 1, "name": "a", "image": "x", "run": {"stdin": "a", "stdin_file": "b"}},
    {"version": 1, "name": "a", "image": "x", "keep": {"binaries": ["memc*"]}},
    {"version": 1, "name": "a", "image": "x", "keep": {"granularity": "dir"}},
    {"version": 1, "name": "a", "image": "x", "budgets": {"profile_bytes": "9MiB"}},
    {"version": 1, "name": "a", "image": "x", "run": {"timeout": "soon"}},
    {"version": 2, "name": "a", "image": "x"},
    {"version": 1, "name": "a", "image": "x", "run": {"network": "host"},
     "smoke": [{"http": {"url": "http://127.0.0.1:1/", "headers": {"Bad Name": "x"}}}]},
])
def test_the_schema_refuses_what_the_loader_refuses(bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    with pytest.raises(ProfileErrors):
        parse_profile(yaml.safe_dump(bad))


def test_the_package_cites_its_own_docs_not_notes_outside_the_repository() -> None:
    """Code and docs cite only documents that ship in the repository."""
    cited = [f"{p.relative_to(REPO)}:{n}" for p in sorted((REPO / "tracer").rglob("*.py"))
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\b(PROFILE|DESIGN)\.md\b", line)]
    for doc in [REPO / "profiles" / "README.md", DOC]:
        cited += [f"{doc.relative_to(REPO)}:{n}"
                  for n, line in enumerate(doc.read_text().splitlines(), 1)
                  if re.search(r"\b(PROFILE|DESIGN)\.md\b", line)]
    assert cited == []
