"""Typed values from YAML nodes, with every problem collected as `file:line: field: msg`.

Operators write profiles by hand and run them unattended, so a typo must never be
silently ignored: every key is checked against the format, every error names the file,
the line and the field (`nginx.yaml:14: smoke[1].http.status: expected an integer`), and
all errors are reported at once so one edit fixes them all.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from tracer.budgets import MAX_VALUE, BudgetExceeded, Budgets, human, parse_size, too_large
from tracer.errors import BadInput
from tracer.operatorfiles import read_regular

DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 24 * 3600.0  # longer is a typo (and would overflow timers)


def parse_duration(text: str) -> float | None:
    """`500ms`, `30s`, `5m`, `1h` or a bare number of seconds; None when malformed."""
    m = DURATION_RE.fullmatch(text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]



class Checker:
    """Collects problems while converting YAML nodes into typed values."""

    def __init__(self, filename: str, base: Path, budgets: Budgets) -> None:
        self.filename = filename
        self.base = base  # stdin_file paths are relative to the profile's directory
        self.budgets = budgets
        self.problems: list[str] = []
        self._lines: list[int] = []
        self._constructor = SafeConstructor()

    def error(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.filename}:{line}: {field}: {message}")
        self._lines.append(line)

    def in_file_order(self) -> list[str]:
        """The problems by line (stable within a line), the order an editor fixes them."""
        order = sorted(range(len(self.problems)), key=self._lines.__getitem__)
        return [self.problems[i] for i in order]

    # -- scalars ---------------------------------------------------------------------
    def scalar(self, node: yaml.Node, field: str) -> Any:
        """The Python value of a scalar node, or None (after an error) for anything else."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, field, f"expected a scalar, got {kind_of(node)}")
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ValueError, OverflowError, yaml.YAMLError) as exc:
            # `port: 1` followed by 5,000 digits, `2001-13-45`: YAML-typed, not valid
            why = str(exc).split(":")[0][:80]
            self.error(node, field, f"not a valid value ({why}); quote it if it is meant "
                       "as text")
            return None

    def string(self, node: yaml.Node, field: str) -> str | None:
        value = self.scalar(node, field)
        if value is None:
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                self.error(node, field, "expected a string, got nothing")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(node, field, f"expected a string, got {value!r}")
            return None
        return str(value) if not isinstance(value, str) else value

    def integer(self, node: yaml.Node, field: str, lo: int | None = None,
                hi: int | None = None) -> int | None:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(node, yaml.ScalarNode) and value is not None:
                self.error(node, field, f"expected an integer, got {node.value!r}")
            elif isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                self.error(node, field, "expected an integer, got nothing")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(node, field, f"expected an integer from {lo} to {hi}, got {value}")
            return None
        return value

    def duration(self, node: yaml.Node, field: str) -> float | None:
        value = self.scalar(node, field)
        if isinstance(value, bool) or value is None:
            if isinstance(node, yaml.ScalarNode):
                self.error(node, field, "expected a duration like 500ms, 30s, 5m or a number")
            return None
        seconds = parse_duration(str(value))
        if seconds is None or seconds <= 0:
            self.error(node, field,
                       f"expected a positive duration like 500ms, 30s, 5m or a number, "
                       f"got {value!r}")
            return None
        if seconds > MAX_DURATION:
            self.error(node, field, f"at most 24h, got {value!r}")
            return None
        return seconds

    def size(self, node: yaml.Node, field: str) -> int | None:
        value = self.scalar(node, field)
        number = parse_size(value) if value is not None else None
        if number is None or number < 1:
            if isinstance(node, yaml.ScalarNode):
                shown = repr(node.value) if len(node.value) <= 60 else repr(node.value[:50]) + \
                    f"... ({len(node.value):,} characters)"
                limit = f" (at most {MAX_VALUE:,})" if too_large(value) else ""
                self.error(node, field, f"expected a positive number or a size like 512KiB, "
                           f"64MiB, 2GiB{limit}, got {shown}")
            return None
        return number

    def regex(self, node: yaml.Node, field: str) -> str | None:
        text = self.string(node, field)
        if text is None:
            return None
        try:
            re.compile(text)
        except re.error as exc:
            self.error(node, field, f"invalid regular expression {text!r}: {exc}")
            return None
        except (RecursionError, OverflowError) as exc:  # `(` * 50,000; `a{99999999999}`
            self.error(node, field, f"regular expression too large or too deeply nested "
                       f"({type(exc).__name__})")
            return None
        return text

    def choice(self, node: yaml.Node, field: str, choices: tuple[str, ...]) -> str | None:
        text = self.string(node, field)
        if text is not None and text not in choices:
            self.error(node, field, f"expected one of {', '.join(choices)}, got {text!r}"
                       + did_you_mean(text, choices))
            return None
        return text

    def abs_path(self, node: yaml.Node, field: str) -> str | None:
        text = self.string(node, field)
        if text is not None and not text.startswith("/"):
            self.error(node, field, f"expected an absolute path, got {text!r}")
            return None
        return text

    def glob(self, node: yaml.Node, field: str) -> str | None:
        """An absolute glob whose character classes translate to a valid pattern."""
        from tracer.analysis.keeplist import compile_globs

        text = self.abs_path(node, field)
        if text is None:
            return None
        try:
            compile_globs([text])
        except (re.error, RecursionError, OverflowError) as exc:
            self.error(node, field, f"invalid glob {text!r}: {exc}")
            return None
        return text

    def program(self, node: yaml.Node, field: str) -> str | None:
        """keep.binaries: an absolute path or glob, or a bare program name found on PATH."""
        text = self.string(node, field)
        if text is None:
            return None
        if text.startswith("/"):
            return self.glob(node, field)
        if not text or "/" in text:
            self.error(node, field, f"expected an absolute path or glob (/usr/bin/x, "
                       f"/usr/bin/x*) or a bare program name, got {text!r}")
            return None
        if any(ch in text for ch in "*?["):
            self.error(node, field, f"a glob must be an absolute path (/usr/bin/{text}), "
                       f"got {text!r}")
            return None
        return text

    # -- collections -----------------------------------------------------------------
    def mapping(self, node: yaml.Node, field: str, allowed: tuple[str, ...],
                refused: dict[str, str] | None = None) -> dict[str, yaml.Node] | None:
        """Key → value node; unknown or duplicate keys are errors (typos must not pass).

        `refused` maps keys that are known but not allowed here to the reason why.
        """
        if not isinstance(node, yaml.MappingNode):
            self.error(node, field, f"expected a mapping, got {kind_of(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, field or "(top level)",
                           f"a key must be a plain name, got {kind_of(key_node)}")
                continue
            key = key_node.value
            sub = f"{field}.{key}" if field else key
            if refused and key in refused:
                self.error(key_node, sub, refused[key])
                continue
            if key not in allowed:
                self.error(key_node, sub, "unknown key" + did_you_mean(key, allowed)
                           + f" (expected one of: {', '.join(allowed)})")
                continue
            if key in out:
                self.error(key_node, sub, "duplicate key")
                continue
            out[key] = value_node
        return out

    def seq(self, node: yaml.Node, field: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, field, f"expected a list, got {kind_of(node)}{as_list(node)}")
            return None
        return list(node.value)

    def string_list(self, node: yaml.Node, field: str,
                    item: Callable[[yaml.Node, str], str | None] | None = None,
                    allow_empty: bool = True) -> list[str] | None:
        items = self.seq(node, field)
        if items is None:
            return None
        if not items and not allow_empty:
            self.error(node, field, "expected a non-empty list")
            return None
        check = item or self.string
        out = []
        for i, sub in enumerate(items):
            value = check(sub, f"{field}[{i}]")
            if value is not None:
                out.append(value)
        return out if len(out) == len(items) else None

    def string_map(self, node: yaml.Node, field: str) -> dict[str, str] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, field, f"expected a mapping, got {kind_of(node)}")
            return None
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, field)
            if key is None:
                continue
            if key in out:
                self.error(key_node, f"{field}.{key}", "duplicate key")
                continue
            value = self.string(value_node, f"{field}.{key}")
            if value is not None:
                out[key] = value
        return out

    # -- standard input ----------------------------------------------------------------
    def stdin(self, m: dict[str, yaml.Node], base: str) -> bytes | None:
        """`stdin` (inline text, fed as its UTF-8 bytes) or `stdin_file` (any bytes, read
        now), at most one; None if neither."""
        if "stdin" in m and "stdin_file" in m:
            self.error(m["stdin_file"], f"{base}.stdin_file",
                       "give stdin or stdin_file, not both")
            return None
        if "stdin" in m:
            text = self.string(m["stdin"], f"{base}.stdin")
            return text.encode("utf-8", "surrogatepass") if text is not None else None
        if "stdin_file" not in m:
            return None
        node = m["stdin_file"]
        name = self.string(node, f"{base}.stdin_file")
        if not name:
            if name == "":
                self.error(node, f"{base}.stdin_file", "expected a file name, got ''")
            return None
        data, problem = read_stdin_file(self.base / name, self.budgets.profile_bytes)
        if problem:
            self.error(node, f"{base}.stdin_file", f"{name!r} (relative to {self.base}): "
                       f"{problem}")
            return None
        return data



def read_stdin_file(path: Path, limit: int) -> tuple[bytes | None, str | None]:
    """(its bytes, None) or (None, why not). A regular file only: a FIFO or device would
    block or never end (tracer.operatorfiles); at most `limit` bytes (the profile_bytes
    budget: it is part of the profile). Any bytes: production feeds documents and images
    (a .docx, a PNG), which are no text, and the runner hands them to the program as they
    are."""
    try:
        return read_regular(path, "file", limit=limit, budget="profile_bytes", label=""), None
    except BudgetExceeded:
        return None, (f"over the profile_bytes budget of {human(limit)}; raise it with "
                      "--budget profile_bytes=N")
    except BadInput as exc:
        return None, str(exc)


def did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""



def as_list(node: yaml.Node | None) -> str:
    """How to write a lone text value as the list that was expected (a command's words
    are items of their own: there is no shell to split them)."""
    if not isinstance(node, yaml.ScalarNode) or not node.value or len(node.value) > 80:
        return ""
    words = node.value.split()
    if len(words) > 1:
        return f"; for a command, one item per word: {json.dumps(words)} (no shell splits it)"
    return f"; write [{json.dumps(node.value)}]"


def kind_of(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None:
        return "nothing"
    return f"{node.value[:80]!r}"

