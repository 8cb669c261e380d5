"""The JSON Schema of the profile format, shipped inside the package for editors."""

from __future__ import annotations

SCHEMA_FILE = "profile.schema.json"  # package data, next to this module


def json_schema_text() -> str:
    """The JSON Schema of the format (draft-07), as shipped in the package, for editors."""
    from importlib.resources import files

    return files("tracer.profile").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
