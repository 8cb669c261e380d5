"""The JSON documents of an image (manifests, indexes, configs), parsed as untrusted input.

Every document is read under the `json_bytes` budget before it is parsed (a 45 MB
index.json used to cost over a gigabyte of memory), and every field tracer uses is
checked for its type here, once. A document that is not what the format says is an
ImageFormatError naming the document and the field (exit 2); a TypeError or KeyError
anywhere else in the readers is then a bug of tracer (exit 70), never an image's fault.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from tracer.budgets import Budgets
from tracer.errors import ImageFormatError
from tracer.image.config import ImageConfig

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse(data: bytes, where: str) -> object:
    """A JSON document; ImageFormatError for anything json cannot read (deep nesting too)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ImageFormatError(f"{where}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageFormatError(f"{where}: not valid JSON: {str(exc)[:200]}") from None


def check_size(size: int, where: str, budgets: Budgets) -> None:
    """Refuse a JSON document over the `json_bytes` budget before reading it."""
    budgets.check("json_bytes", size, f"{where} is {size} bytes")


def obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageFormatError(f"{where}: expected a JSON object, got {_kind(value)}")
    return value


def array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ImageFormatError(f"{where}: expected a JSON list, got {_kind(value)}")
    return value


def optional_str(doc: dict[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ImageFormatError(f"{where}: {key} must be a string, got {_kind(value)}")
    return value


def digest(value: object, where: str) -> str:
    """A `sha256:<64 hex>` digest. Digests become file names: nothing else is accepted."""
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise ImageFormatError(f"{where}: invalid digest {str(value)[:100]!r}")
    return value


def size(doc: dict[str, Any], where: str) -> int | None:
    """A descriptor's optional `size`: a non-negative integer (not a bool) when present."""
    value = doc.get("size")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImageFormatError(f"{where}: size must be a non-negative integer, got "
                               f"{str(value)[:40]!r}")
    return value


def string_map(doc: dict[str, Any], key: str, where: str) -> dict[str, str]:
    """An optional object of string values (annotations, platform)."""
    value = doc.get(key)
    if value is None:
        return {}
    value = obj(value, f"{where}: {key}")
    return {k: v for k, v in value.items() if isinstance(v, str)}


def image_config(config: object, where: str, layer_count: int, budgets: Budgets) -> list[str]:
    """Validate an image config document; return its diff_ids.

    Checks every field tracer reads or carries into the output: `rootfs.diff_ids` (one
    sha256 per layer), `created` (a string), `history` (a list of objects), `architecture`
    and `os` (strings), and the run config (ImageConfig: `config` an object, `Env` a list
    of strings, ...).
    """
    config = obj(config, f"{where}: image config")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageFormatError(f"{where}: rootfs.diff_ids missing or not a list")
    budgets.check("layers", len(diff_ids), f"{where}: config lists {len(diff_ids)} layers")
    for d in diff_ids:
        digest(d, f"{where}: rootfs.diff_ids")
    if len(diff_ids) != layer_count:
        raise ImageFormatError(f"{where}: config lists {len(diff_ids)} diff_ids but the "
                               f"manifest lists {layer_count} layers")
    for key in ("created", "architecture", "os"):
        optional_str(config, key, where)
    history = config.get("history")
    if history is not None:
        for i, h in enumerate(array(history, f"{where}: history")):
            h = obj(h, f"{where}: history[{i}]")
            for key in ("created", "created_by", "comment", "author"):
                optional_str(h, key, f"{where}: history[{i}]")
    ImageConfig.from_image_json(config, where)
    return list(diff_ids)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain id of every prefix of `diff_ids` (image-spec, "ChainID"): the chain
    of the first n layers is `chain_ids(d)[n - 1]`. The engine's layer database is keyed
    by it, and so are a batch's seeds."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
