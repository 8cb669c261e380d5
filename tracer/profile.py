"""Load and validate a profile YAML file (PROFILE.md, version 1).

Operators write profiles by hand and run them unattended, so a typo must never be
silently ignored: every key is checked against the contract, every error names the file,
the line and the field (`nginx.yaml:14: smoke[1].http.status: expected an integer`), and
all errors are reported at once so one edit fixes them all. Validation walks the YAML
node tree (not the plain Python objects) because only nodes remember their line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

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


class ProfileErrors(BadInput):
    """All problems found in one profile, one `file:line: field: message` per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid profile:\n  " + "\n  ".join(problems))


def parse_duration(text: str) -> float | None:
    """`500ms`, `30s`, `5m`, `1h` or a bare number of seconds; None when malformed."""
    m = DURATION_RE.fullmatch(text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Checker:
    """Collects problems while converting YAML nodes into typed values."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []

    def error(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.filename}:{line}: {field}: {message}")

    # -- scalars ---------------------------------------------------------------------
    def scalar(self, node: yaml.Node, field: str) -> Any:
        """The Python value of a scalar node, or None (after an error) for anything else."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, field, f"expected a scalar, got {_kind(node)}")
            return None
        return yaml.safe_load(yaml.serialize(node))

    def string(self, node: yaml.Node, field: str) -> str | None:
        value = self.scalar(node, field)
        if value is None:
            if isinstance(node, yaml.ScalarNode):
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
            if isinstance(node, yaml.ScalarNode):
                self.error(node, field, f"expected an integer, got {node.value!r}")
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
        return seconds

    def regex(self, node: yaml.Node, field: str) -> str | None:
        text = self.string(node, field)
        if text is None:
            return None
        try:
            re.compile(text)
        except re.error as exc:
            self.error(node, field, f"invalid regular expression {text!r}: {exc}")
            return None
        return text

    def choice(self, node: yaml.Node, field: str, choices: tuple[str, ...]) -> str | None:
        text = self.string(node, field)
        if text is not None and text not in choices:
            self.error(node, field, f"expected one of {', '.join(choices)}, got {text!r}")
            return None
        return text

    def abs_path(self, node: yaml.Node, field: str) -> str | None:
        text = self.string(node, field)
        if text is not None and not text.startswith("/"):
            self.error(node, field, f"expected an absolute path, got {text!r}")
            return None
        return text

    # -- collections -----------------------------------------------------------------
    def mapping(self, node: yaml.Node, field: str,
                allowed: tuple[str, ...]) -> dict[str, yaml.Node] | None:
        """Key → value node; unknown or duplicate keys are errors (typos must not pass)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, field, f"expected a mapping, got {_kind(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{field}.{key}" if field else str(key)
            if key not in allowed:
                self.error(key_node, sub,
                           f"unknown key (expected one of: {', '.join(allowed)})")
                continue
            if key in out:
                self.error(key_node, sub, "duplicate key")
                continue
            out[key] = value_node
        return out

    def seq(self, node: yaml.Node, field: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, field, f"expected a list, got {_kind(node)}")
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
            value = self.string(value_node, f"{field}.{key}")
            if value is not None:
                out[key] = value
        return out


def _loopback(host: str) -> bool:
    """Smoke steps talk to the app on this machine only, never to another address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None:
        return "nothing"
    return f"{node.value!r}"


# -- sections -----------------------------------------------------------------------------

def _ready(c: _Checker, node: yaml.Node) -> Ready:
    m = c.mapping(node, "run.ready", ("log", "tcp", "timeout")) or {}
    kw: dict[str, Any] = {}
    if "log" in m:
        kw["log"] = c.regex(m["log"], "run.ready.log")
    if "tcp" in m:
        kw["tcp"] = c.integer(m["tcp"], "run.ready.tcp", 1, 65535)
    if "timeout" in m and (t := c.duration(m["timeout"], "run.ready.timeout")) is not None:
        kw["timeout"] = t
    return Ready(**kw)


_RUN_KEYS = ("entrypoint", "cmd", "env", "user", "workdir", "network", "tmpfs", "mode",
             "ready", "exit", "stdout", "stderr", "timeout")


def _run(c: _Checker, node: yaml.Node) -> RunSpec:
    m = c.mapping(node, "run", _RUN_KEYS) or {}
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
    return cls(argv=argv, **kw) if argv else None


def _step(c: _Checker, node: yaml.Node, index: int, run: RunSpec) -> SmokeStep | None:
    field = f"smoke[{index}]"
    kinds = ("http", "tcp", "exec", "command", "sleep")
    m = c.mapping(node, field, kinds + ("exit", "stdout", "stderr", "timeout"))
    if m is None:
        return None
    present = [k for k in kinds if k in m]
    if len(present) != 1:
        c.error(node, field, f"expected exactly one of {', '.join(kinds)}"
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
        h = c.mapping(m[kind], sub, ("url", "status", "body", "timeout")) or {}
        if "url" not in h:
            c.error(m[kind], f"{sub}.url", "required")
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
        step = HttpStep(url=url, **kw) if url else None
    elif kind == "tcp":
        t_ = c.mapping(m[kind], sub, ("port", "host", "send", "expect", "timeout")) or {}
        if "port" not in t_:
            c.error(m[kind], f"{sub}.port", "required")
        port = c.integer(t_["port"], f"{sub}.port", 1, 65535) if "port" in t_ else None
        kw = {}
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
        step = TcpStep(port=port, **kw) if port else None
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
    return c.string_list(node, field, c.abs_path) or []


def _keep(c: _Checker, node: yaml.Node) -> KeepSpec:
    m = c.mapping(node, "keep", ("paths", "binaries", "packages")) or {}
    kw: dict[str, Any] = {}
    if "paths" in m:
        kw["paths"] = _glob_list(c, m["paths"], "keep.paths")
    if "binaries" in m:
        kw["binaries"] = c.string_list(m["binaries"], "keep.binaries") or []
    if "packages" in m:
        kw["packages"] = c.string_list(m["packages"], "keep.packages") or []
    return KeepSpec(**kw)


_TOP_KEYS = ("version", "name", "image", "output", "run", "smoke", "keep", "exclude")


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


def parse_profile(text: str, filename: str = "<profile>",
                  source: Path | None = None) -> Profile:
    """Validate a profile's YAML text; raise ProfileErrors listing every problem."""
    c = _Checker(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileErrors([f"{filename}:{line}: not valid YAML: {problem}"]) from None
    if root is None:
        raise ProfileErrors([f"{filename}:1: the file is empty; expected a profile mapping"])
    m = c.mapping(root, "", _TOP_KEYS)
    if m is None:
        raise ProfileErrors(c.problems)
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
    if c.problems:
        raise ProfileErrors(c.problems)
    assert name is not None and image is not None
    return Profile(name=name, image=image, output=output, run=run, smoke=smoke, keep=keep,
                   exclude=exclude, source=source)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; BadInput names the file when it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{p}: no such profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{p}: cannot read the profile: {exc}") from None
    return parse_profile(text, filename=str(p), source=p)
