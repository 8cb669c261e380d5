"""Load and validate a profile YAML file (format version 1, described in docs/profile.md).

Operators write profiles by hand and run them unattended, so a typo must never be
silently ignored: every key is checked against the format, every error names the file,
the line and the field (`nginx.yaml:14: smoke[1].http.status: expected an integer`), and
all errors are reported at once so one edit fixes them all. Validation walks the YAML
node tree (not the plain Python objects) because only nodes remember their line.

The keys the loader accepts live in the tables below (`SECTIONS`); docs/profile.md and
the JSON Schema shipped next to this module must list exactly these, which a test checks.

A profile is trusted more than an image, but not blindly: it may come from a repository
many people write to. Its size is checked before a byte is parsed (budget
`profile_bytes`, which only `--budget` can raise, since the profile's own `budgets:` is
read after the parse it would have to bound), nesting depth and alias expansion are
bounded while composing, and nothing a value says can make the loader recurse or loop.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor

from tracer.budgets import DEFAULT, Budgets, human, parse_size
from tracer.errors import BadInput
from tracer.profile_model import (
    ArgvStep,
    CommandStep,
    ExecStep,
    HttpStep,
    KeepSpec,
    Profile,
    Ready,
    RunSpec,
    SleepStep,
    SmokeStep,
    Step,
    TcpStep,
)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 24 * 3600.0  # longer is a typo (and would overflow timers)

# -- the keys the loader accepts, per section ---------------------------------------------
TOP_KEYS = ("version", "name", "image", "output", "run", "smoke", "keep", "exclude",
            "budgets")
RUN_KEYS = ("entrypoint", "cmd", "env", "user", "workdir", "network", "tmpfs", "mode",
            "ready", "exit", "stdout", "stderr", "timeout", "stdin", "stdin_file")
READY_KEYS = ("log", "tcp", "timeout")
STEP_KINDS = ("http", "tcp", "exec", "command", "sleep")
ARGV_STEP_KEYS = ("exit", "stdout", "stderr", "timeout", "stdin", "stdin_file")
HTTP_KEYS = ("url", "status", "body", "timeout", "max_body")
TCP_KEYS = ("port", "host", "send", "expect", "timeout")
KEEP_KEYS = ("paths", "binaries", "packages", "granularity")
GRANULARITIES = ("file", "package")
# The profile file is measured before it is parsed, so its own `budgets:` cannot raise
# the budget that bounds it; only `--budget profile_bytes=N` can.
CLI_ONLY_BUDGETS = ("profile_bytes",)
PROFILE_BUDGETS = tuple(f.name for f in fields(Budgets) if f.name not in CLI_ONLY_BUDGETS)

SECTIONS: dict[str, tuple[str, ...]] = {
    "": TOP_KEYS,
    "run": RUN_KEYS,
    "run.ready": READY_KEYS,
    "smoke[]": STEP_KINDS + ARGV_STEP_KEYS,
    "smoke[].http": HTTP_KEYS,
    "smoke[].tcp": TCP_KEYS,
    "keep": KEEP_KEYS,
    "budgets": PROFILE_BUDGETS,
}

# -- bounds on the YAML document itself ----------------------------------------------------
MAX_DEPTH = 64  # a profile nests about 5 levels; 50,000 `[` must not reach the recursion limit
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add when expanded (billion laughs)
MAX_PROBLEMS = 100  # problems printed; a generated file can have a million


def accepted_keys() -> frozenset[str]:
    """Every key the loader accepts, dotted (`run.ready.tcp`, `smoke[].http.url`)."""
    return frozenset(f"{section}.{key}" if section else key
                     for section, keys in SECTIONS.items() for key in keys)


class ProfileErrors(BadInput):
    """All problems found in one profile, one `file:line: field: message` per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        super().__init__("invalid profile:\n  " + "\n  ".join(shown)
                         + (f"\n  ... and {more} more problems" if more else ""))


def parse_duration(text: str) -> float | None:
    """`500ms`, `30s`, `5m`, `1h` or a bare number of seconds; None when malformed."""
    m = DURATION_RE.fullmatch(text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


# -- composing YAML with bounds -----------------------------------------------------------

class _Refused(yaml.MarkedYAMLError):
    """The document is well-formed YAML that the loader refuses to compose (too deep,
    aliases expanding too far); reported as `file:line: message`, not as a syntax error."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader with a nesting limit and an alias expansion limit.

    The composer recurses once per nesting level, so 50,000 `[` ended in RecursionError
    (exit 70). Aliases are composed as shared nodes, cheap for PyYAML but expanded by
    every walk over the tree, so nine aliases to nine aliases ... (a "billion laughs")
    cost the validator exponential time. Both are cut here, at the offending line.
    The C loader is not used: its composer recurses in C.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, expanded
        self._alias_nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Refused(None, None, "an alias refers to a node that contains it "
                               "(a recursive structure is not a profile)", mark)
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _Refused(None, None, f"aliases expand the document by more than "
                               f"{MAX_ALIAS_NODES:,} nodes; write the values out instead", mark)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels",
                               self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(n)] for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        self._sizes[id(node)] = size
        return node


def _compose(text: str, filename: str) -> yaml.Node | None:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    except _Refused as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise ProfileErrors([f"{filename}:{line}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileErrors([f"{filename}:{line}: not valid YAML: {problem}"]) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps far below the limit
        raise ProfileErrors([f"{filename}:1: nested too deeply"]) from None
    finally:
        loader.dispose()


# -- checking nodes -----------------------------------------------------------------------

class _Checker:
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
            self.error(node, field, f"expected a scalar, got {_kind(node)}")
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
                self.error(node, field, f"expected a positive number or a size like 512KiB, "
                           f"64MiB, 2GiB, got {node.value!r}")
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
                       + _did_you_mean(text, choices))
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
        from tracer.keeplist import compile_globs

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
            self.error(node, field, f"expected a mapping, got {_kind(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, field or "(top level)",
                           f"a key must be a plain name, got {_kind(key_node)}")
                continue
            key = key_node.value
            sub = f"{field}.{key}" if field else key
            if refused and key in refused:
                self.error(key_node, sub, refused[key])
                continue
            if key not in allowed:
                self.error(key_node, sub, "unknown key" + _did_you_mean(key, allowed)
                           + f" (expected one of: {', '.join(allowed)})")
                continue
            if key in out:
                self.error(key_node, sub, "duplicate key")
                continue
            out[key] = value_node
        return out

    def seq(self, node: yaml.Node, field: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, field, f"expected a list, got {_kind(node)}{_as_list(node)}")
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
            self.error(node, field, f"expected a mapping, got {_kind(node)}")
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
    def stdin(self, m: dict[str, yaml.Node], base: str) -> str | None:
        """`stdin` (inline text) or `stdin_file` (read now), at most one; None if neither."""
        if "stdin" in m and "stdin_file" in m:
            self.error(m["stdin_file"], f"{base}.stdin_file",
                       "give stdin or stdin_file, not both")
            return None
        if "stdin" in m:
            return self.string(m["stdin"], f"{base}.stdin")
        if "stdin_file" not in m:
            return None
        node = m["stdin_file"]
        name = self.string(node, f"{base}.stdin_file")
        if not name:
            if name == "":
                self.error(node, f"{base}.stdin_file", "expected a file name, got ''")
            return None
        text, problem = read_stdin_file(self.base / name, self.budgets.profile_bytes)
        if problem:
            self.error(node, f"{base}.stdin_file", f"{name!r} (relative to {self.base}): "
                       f"{problem}")
            return None
        return text


def read_stdin_file(path: Path, limit: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, why not). A regular file only: a FIFO or device would block
    or never end; at most `limit` bytes (the profile_bytes budget: it is part of the
    profile); UTF-8 text, since the model carries it as text."""
    try:
        st = path.stat()
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size > limit:
        return None, (f"{st.st_size:,} bytes, over the profile_bytes budget of {human(limit)}; "
                      f"raise it with --budget profile_bytes=N")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    if len(data) > limit:
        return None, f"over the profile_bytes budget of {human(limit)}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _loopback(host: str) -> bool:
    """Smoke steps talk to the app on this machine only, never to another address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _as_list(node: yaml.Node | None) -> str:
    """How to write a lone text value as the list that was expected (a command's words
    are items of their own: there is no shell to split them)."""
    if not isinstance(node, yaml.ScalarNode) or not node.value or len(node.value) > 80:
        return ""
    words = node.value.split()
    if len(words) > 1:
        return f"; for a command, one item per word: {json.dumps(words)} (no shell splits it)"
    return f"; write [{json.dumps(node.value)}]"


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None:
        return "nothing"
    return f"{node.value[:80]!r}"


# -- sections -----------------------------------------------------------------------------

def _ready(c: _Checker, node: yaml.Node) -> Ready:
    m = c.mapping(node, "run.ready", READY_KEYS) or {}
    kw: dict[str, Any] = {}
    if "log" in m:
        kw["log"] = c.regex(m["log"], "run.ready.log")
    if "tcp" in m:
        kw["tcp"] = c.integer(m["tcp"], "run.ready.tcp", 1, 65535)
    if "timeout" in m and (t := c.duration(m["timeout"], "run.ready.timeout")) is not None:
        kw["timeout"] = t
    return Ready(**kw)


def _run(c: _Checker, node: yaml.Node) -> RunSpec:
    m = c.mapping(node, "run", RUN_KEYS) or {}
    kw: dict[str, Any] = {}
    if "entrypoint" in m:
        kw["entrypoint"] = c.string_list(m["entrypoint"], "run.entrypoint")
    if "cmd" in m:
        kw["cmd"] = c.string_list(m["cmd"], "run.cmd")
    if "env" in m:
        kw["env"] = c.string_map(m["env"], "run.env") or {}
    if "user" in m:
        kw["user"] = c.string(m["user"], "run.user")
    if "workdir" in m:
        kw["workdir"] = c.abs_path(m["workdir"], "run.workdir")
    if "network" in m and (v := c.choice(m["network"], "run.network", ("none", "host"))):
        kw["network"] = v
    if "tmpfs" in m:
        kw["tmpfs"] = c.string_list(m["tmpfs"], "run.tmpfs", c.abs_path) or []
    if "mode" in m and (v := c.choice(m["mode"], "run.mode", ("service", "job"))):
        kw["mode"] = v
    if "ready" in m:
        kw["ready"] = _ready(c, m["ready"])
    if "exit" in m and (v := c.integer(m["exit"], "run.exit", 0, 255)) is not None:
        kw["exit"] = v
    for key in ("stdout", "stderr"):
        if key in m:
            kw[key] = c.regex(m[key], f"run.{key}")
    if "timeout" in m and (t := c.duration(m["timeout"], "run.timeout")) is not None:
        kw["timeout"] = t
    kw["stdin"] = c.stdin(m, "run")
    run = RunSpec(**kw)
    mode = kw.get("mode", "service")
    if mode == "job" and "ready" in m:
        c.error(m["ready"], "run.ready", "only for mode: service (a job has no ready state)")
    if mode == "service":
        for key in ("exit", "stdout", "stderr"):
            if key in m:
                c.error(m[key], f"run.{key}", "only for mode: job")
    if run.ready.tcp is not None and run.network != "host":
        c.error(m.get("ready"), "run.ready.tcp",
                "a tcp check needs network: host (the port is probed on 127.0.0.1)")
    return run


def _argv_step(c: _Checker, node: yaml.Node, extra: dict[str, yaml.Node], field: str,
               cls: type[ArgvStep]) -> Step | None:
    argv = c.string_list(node, field, allow_empty=False)
    kw: dict[str, Any] = {}
    base = field.rsplit(".", 1)[0]
    if "exit" in extra and (v := c.integer(extra["exit"], f"{base}.exit", 0, 255)) is not None:
        kw["exit"] = v
    for key in ("stdout", "stderr"):
        if key in extra:
            kw[key] = c.regex(extra[key], f"{base}.{key}")
    if "timeout" in extra and (t := c.duration(extra["timeout"], f"{base}.timeout")):
        kw["timeout"] = t
    kw["stdin"] = c.stdin(extra, base)
    return cls(argv=argv, **kw) if argv else None


def _http(c: _Checker, node: yaml.Node, sub: str) -> HttpStep | None:
    h = c.mapping(node, sub, HTTP_KEYS) or {}
    if "url" not in h:
        c.error(node, f"{sub}.url", "required")
    url = c.string(h["url"], f"{sub}.url") if "url" in h else None
    if url is not None and not re.match(r"https?://", url):
        c.error(h["url"], f"{sub}.url", f"expected an http:// or https:// URL, got {url!r}")
        url = None
    elif url is not None and not _loopback(urlsplit(url).hostname or ""):
        c.error(h["url"], f"{sub}.url",
                f"only loopback addresses are allowed (127.0.0.1, localhost, ::1), got "
                f"{urlsplit(url).hostname!r}")
        url = None
    kw: dict[str, Any] = {}
    if "status" in h:
        kw["status"] = c.integer(h["status"], f"{sub}.status", 100, 599)
    if "body" in h:
        kw["body"] = c.regex(h["body"], f"{sub}.body")
    if "timeout" in h and (t := c.duration(h["timeout"], f"{sub}.timeout")):
        kw["timeout"] = t
    if "max_body" in h and (n := c.size(h["max_body"], f"{sub}.max_body")):
        kw["max_body"] = n
    return HttpStep(url=url, **kw) if url else None


def _tcp(c: _Checker, node: yaml.Node, sub: str) -> TcpStep | None:
    t_ = c.mapping(node, sub, TCP_KEYS) or {}
    if "port" not in t_:
        c.error(node, f"{sub}.port", "required")
    port = c.integer(t_["port"], f"{sub}.port", 1, 65535) if "port" in t_ else None
    kw: dict[str, Any] = {}
    if "host" in t_:
        kw["host"] = c.string(t_["host"], f"{sub}.host")
        if not _loopback(kw["host"] or ""):
            c.error(t_["host"], f"{sub}.host", "only loopback addresses are allowed")
    if "send" in t_:
        kw["send"] = c.string(t_["send"], f"{sub}.send")
    if "expect" in t_:
        kw["expect"] = c.regex(t_["expect"], f"{sub}.expect")
    if "timeout" in t_ and (t := c.duration(t_["timeout"], f"{sub}.timeout")):
        kw["timeout"] = t
    return TcpStep(port=port, **kw) if port else None


def _step(c: _Checker, node: yaml.Node, index: int, run: RunSpec) -> SmokeStep | None:
    field = f"smoke[{index}]"
    before = len(c.problems)
    m = c.mapping(node, field, SECTIONS["smoke[]"])
    if m is None:
        return None
    present = [k for k in STEP_KINDS if k in m]
    typo = any(f"did you mean '{k}'?" in p for p in c.problems[before:] for k in STEP_KINDS)
    if not present and typo:
        return None  # `comand:` was named already, with the kind it meant
    if len(present) != 1:
        c.error(node, field, f"expected exactly one of {', '.join(STEP_KINDS)}"
                + (f", got {', '.join(present)}" if present else ""))
        return None
    kind = present[0]
    sub = f"{field}.{kind}"
    extra = {k: v for k, v in m.items() if k != kind}
    if kind not in ("exec", "command") and extra:
        for key, value in extra.items():
            c.error(value, f"{field}.{key}", f"only for exec and command steps, not {kind}")
    step: Step | None = None
    if kind == "http":
        step = _http(c, m[kind], sub)
    elif kind == "tcp":
        step = _tcp(c, m[kind], sub)
    elif kind == "exec":
        if run.mode == "job":
            c.error(m[kind], sub, "exec needs a running container; not available in mode: job")
        step = _argv_step(c, m[kind], extra, sub, ExecStep)
    elif kind == "command":
        step = _argv_step(c, m[kind], extra, sub, CommandStep)
    elif kind == "sleep":
        seconds = c.duration(m[kind], sub)
        step = SleepStep(seconds=seconds) if seconds else None
    if kind in ("http", "tcp") and run.network != "host":
        c.error(m[kind], sub, "needs run.network: host (the port is reached on 127.0.0.1)")
    if kind in ("http", "tcp") and run.mode == "job":
        c.error(m[kind], sub, f"{kind} needs a running service; not available in mode: job")
    return SmokeStep(index=index, step=step) if step is not None else None


def _glob_list(c: _Checker, node: yaml.Node, field: str) -> list[str]:
    return c.string_list(node, field, c.glob) or []


def _keep(c: _Checker, node: yaml.Node) -> KeepSpec:
    m = c.mapping(node, "keep", KEEP_KEYS) or {}
    kw: dict[str, Any] = {}
    if "paths" in m:
        kw["paths"] = _glob_list(c, m["paths"], "keep.paths")
    if "binaries" in m:
        kw["binaries"] = c.string_list(m["binaries"], "keep.binaries", c.program) or []
    if "packages" in m:
        kw["packages"] = c.string_list(m["packages"], "keep.packages") or []
    if "granularity" in m and (
            v := c.choice(m["granularity"], "keep.granularity", GRANULARITIES)):
        kw["granularity"] = v
    return KeepSpec(**kw)


def _budgets(c: _Checker, node: yaml.Node) -> dict[str, int]:
    refused = {name: "only --budget profile_bytes=N raises it: the profile file is measured "
               "before it is read" for name in CLI_ONLY_BUDGETS}
    m = c.mapping(node, "budgets", PROFILE_BUDGETS, refused) or {}
    out: dict[str, int] = {}
    for name, value in m.items():
        if (n := c.size(value, f"budgets.{name}")) is not None:
            out[name] = n
    return out


def _image_ref(c: _Checker, node: yaml.Node, field: str) -> str | None:
    from tracer.image.reference import parse_reference

    text = c.string(node, field)
    if text is None:
        return None
    try:
        parse_reference(text)
    except BadInput as exc:
        c.error(node, field, str(exc))
        return None
    return text


def parse_profile(text: str, filename: str = "<profile>", source: Path | None = None,
                  budgets: Budgets = DEFAULT) -> Profile:
    """Validate a profile's YAML text; raise ProfileErrors listing every problem.

    `budgets` are the run's (command line) budgets: `profile_bytes` caps a stdin_file,
    which is read now, relative to `source`'s directory (else the current one).
    """
    base = source.parent if source is not None else Path.cwd()
    c = _Checker(filename, base, budgets)
    root = _compose(text, filename)
    if root is None:
        raise ProfileErrors([f"{filename}:1: the file is empty; expected a profile mapping"])
    m = c.mapping(root, "", TOP_KEYS)
    if m is None:
        raise ProfileErrors(c.in_file_order())
    for key in ("version", "name", "image"):
        if key not in m:
            c.error(root, key, "required")
    if "version" in m:
        version = c.scalar(m["version"], "version")
        if type(version) is not int or version != 1:
            c.error(m["version"], "version",
                    f"unsupported profile version {version!r}; this tracer reads version 1")
    name = c.string(m["name"], "name") if "name" in m else None
    if name is not None and not isinstance(c.scalar(m["name"], "name"), str):
        c.error(m["name"], "name", f"expected a string, got {name}; quote it")
        name = None
    elif name is not None and not NAME_RE.fullmatch(name):
        c.error(m["name"], "name", f"expected [a-z0-9][a-z0-9._-]*, got {name!r}")
    image = _image_ref(c, m["image"], "image") if "image" in m else None
    output = _image_ref(c, m["output"], "output") if "output" in m else None
    run = _run(c, m["run"]) if "run" in m else RunSpec()
    smoke: list[SmokeStep] = []
    if "smoke" in m:
        for i, step_node in enumerate(c.seq(m["smoke"], "smoke") or []):
            step = _step(c, step_node, i, run)
            if step is not None:
                smoke.append(step)
    keep = _keep(c, m["keep"]) if "keep" in m else KeepSpec()
    exclude = _glob_list(c, m["exclude"], "exclude") if "exclude" in m else []
    raised = _budgets(c, m["budgets"]) if "budgets" in m else {}
    if c.problems:
        raise ProfileErrors(c.in_file_order())
    assert name is not None and image is not None
    return Profile(name=name, image=image, output=output, run=run, smoke=smoke, keep=keep,
                   exclude=exclude, source=source, budgets=raised)


def read_profile_text(path: Path, limit: int) -> str:
    """The file's text, refused before reading more than `limit` bytes (profile_bytes).

    A 50 MB profile cost 416 s and 7.6 GB to validate; the refusal comes from the size
    alone, and a FIFO or device that never ends is cut at `limit` + 1 bytes.
    """
    over = (f"{path}: the profile is larger than the profile_bytes budget of {human(limit)}; "
            f"if this file is trusted, raise it with --budget profile_bytes=N (a profile "
            f"cannot raise it itself)")
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{path}: is a directory, not a profile file")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise BadInput(over)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such profile file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the profile: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise BadInput(over)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInput(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None


# -- command-line overrides ---------------------------------------------------------------

@dataclass(frozen=True)
class Overrides:
    """What the command line says over the profile: `--budget NAME=VALUE`, `--granularity`.

    Applied to the loaded Profile (`apply_overrides`), so the pipeline reads only
    `profile.budgets` and `profile.keep.granularity`; `argv()` passes the same overrides
    on to the `tracer minimize` children of `tracer batch`.
    """

    budgets: dict[str, int] = field(default_factory=dict)
    granularity: str | None = None

    @property
    def run_budgets(self) -> Budgets:
        """The default budgets with the command line's on top (before any profile is read)."""
        return replace(DEFAULT, **self.budgets)

    def argv(self) -> list[str]:
        out = [f"--budget={name}={value}" for name, value in sorted(self.budgets.items())]
        if self.granularity is not None:
            out.append(f"--granularity={self.granularity}")
        return out


def parse_budget_flags(items: list[str] | None) -> dict[str, int]:
    """`--budget NAME=VALUE` items as {name: number}; a bad one is BadInput (exit 2)."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadInput(f"--budget {item!r}: expected NAME=VALUE, e.g. "
                           f"--budget layers=1000 or --budget image_bytes=64GiB")
        known = tuple(f.name for f in fields(Budgets))
        if name not in known:
            raise BadInput(f"--budget {item!r}: unknown budget {name!r}"
                           + _did_you_mean(name, known) + f" (known: {', '.join(known)})")
        out[name] = value.strip()
    raised = DEFAULT.override(out, "--budget")
    return {name: getattr(raised, name) for name in out}


def apply_overrides(profile: Profile, overrides: Overrides) -> Profile:
    """The profile with the command line's budgets and granularity over its own."""
    changes: dict[str, Any] = {}
    if overrides.budgets:
        changes["budgets"] = {**profile.budgets, **overrides.budgets}
    if overrides.granularity is not None:
        changes["keep"] = replace(profile.keep, granularity=overrides.granularity)
    return replace(profile, **changes) if changes else profile


def budgets_of(profile: Profile) -> Budgets:
    """The Budgets a run of `profile` spends: the defaults with profile.budgets applied."""
    return replace(DEFAULT, **profile.budgets)


def load_profile(path: str | Path, overrides: Overrides | None = None) -> Profile:
    """Read and validate a profile file, with the command line's overrides applied.

    BadInput names the file when it cannot be read or is over the profile_bytes budget.
    """
    overrides = overrides or Overrides()
    p = Path(path)
    budgets = overrides.run_budgets
    text = read_profile_text(p, budgets.profile_bytes)
    profile = parse_profile(text, filename=str(p), source=p, budgets=budgets)
    return apply_overrides(profile, overrides)


SCHEMA_FILE = "profile.schema.json"  # package data, next to this module


def json_schema_text() -> str:
    """The JSON Schema of the format (draft-07), as shipped in the package, for editors."""
    from importlib.resources import files

    return files("tracer").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def describe_checks(profile: Profile) -> str:
    """How many checks a run makes, in the words `tracer minimize` reports them: the
    service's ready check or the job's own run comes first, then the smoke steps."""
    from tracer.report import checks_phrase

    first = "the job's own run" if profile.run.mode == "job" else "the ready check"
    return checks_phrase(first, len(profile.smoke))
