"""The profile format's sections: which keys each accepts and what each value must be.

The keys the loader accepts live in the tables below (`SECTIONS`); docs/profile.md and
the JSON Schema shipped next to this module must list exactly these, which a test checks.
`parse_profile` turns a composed document into the typed Profile (tracer.profile.model)
or raises ProfileErrors listing every problem at once.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput
from tracer.profile.checker import Checker
from tracer.profile.document import ProfileErrors, compose
from tracer.profile.model import (
    ArgvStep,
    CommandStep,
    ExecStep,
    HttpStep,
    KeepSpec,
    Limits,
    Profile,
    Ready,
    RunSpec,
    SleepStep,
    SmokeStep,
    Step,
    TcpStep,
)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an HTTP token (RFC 9110)

# -- the keys the loader accepts, per section ---------------------------------------------
TOP_KEYS = ("version", "name", "image", "output", "run", "smoke", "keep", "exclude",
            "budgets")
RUN_KEYS = ("entrypoint", "cmd", "env", "user", "workdir", "network", "tmpfs", "mode",
            "ready", "exit", "stdout", "stderr", "timeout", "stdin", "stdin_file", "limits")
READY_KEYS = ("log", "tcp", "timeout")
LIMITS_KEYS = ("pids", "memory", "cpus")
STEP_KINDS = ("http", "tcp", "exec", "command", "sleep")
ARGV_STEP_KEYS = ("exit", "stdout", "stderr", "timeout", "stdin", "stdin_file")
HTTP_KEYS = ("url", "status", "body", "timeout", "max_body", "headers")
TCP_KEYS = ("port", "host", "send", "expect", "timeout")
KEEP_KEYS = ("paths", "binaries", "packages", "granularity", "evidence")
GRANULARITIES = ("file", "package", "deps")
# The profile file is measured before it is parsed, so its own `budgets:` cannot raise
# the budget that bounds it; only `--budget profile_bytes=N` can.
CLI_ONLY_BUDGETS = ("profile_bytes",)
PROFILE_BUDGETS = tuple(f.name for f in fields(Budgets) if f.name not in CLI_ONLY_BUDGETS)

SECTIONS: dict[str, tuple[str, ...]] = {
    "": TOP_KEYS,
    "run": RUN_KEYS,
    "run.ready": READY_KEYS,
    "run.limits": LIMITS_KEYS,
    "smoke[]": STEP_KINDS + ARGV_STEP_KEYS,
    "smoke[].http": HTTP_KEYS,
    "smoke[].tcp": TCP_KEYS,
    "keep": KEEP_KEYS,
    "budgets": PROFILE_BUDGETS,
}


def is_loopback(host: str) -> bool:
    """Smoke steps talk to the app on this machine only, never to another address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



# -- sections -----------------------------------------------------------------------------

def _ready(c: Checker, node: yaml.Node) -> Ready:
    m = c.mapping(node, "run.ready", READY_KEYS) or {}
    kw: dict[str, Any] = {}
    if "log" in m:
        kw["log"] = c.regex(m["log"], "run.ready.log")
    if "tcp" in m:
        kw["tcp"] = c.integer(m["tcp"], "run.ready.tcp", 1, 65535)
    if "timeout" in m and (t := c.duration(m["timeout"], "run.ready.timeout")) is not None:
        kw["timeout"] = t
    return Ready(**kw)


MIN_MEMORY = 6 << 20  # the engine refuses a smaller memory limit
MAX_PIDS = 1 << 22  # the kernel's largest pid_max


def _limits(c: Checker, node: yaml.Node) -> Limits:
    m = c.mapping(node, "run.limits", LIMITS_KEYS) or {}
    kw: dict[str, Any] = {}
    if "pids" in m:
        kw["pids"] = c.integer(m["pids"], "run.limits.pids", 8, MAX_PIDS)
    if "memory" in m and (size := c.size(m["memory"], "run.limits.memory")) is not None:
        if size < MIN_MEMORY:
            c.error(m["memory"], "run.limits.memory", f"at least 6MiB, got {size}")
        else:
            kw["memory"] = size
    if "cpus" in m:
        node = m["cpus"]
        value = c.scalar(node, "run.limits.cpus")  # says itself what is not a scalar
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and 0.01 <= value <= 4096:
            kw["cpus"] = float(value)
        elif isinstance(node, yaml.ScalarNode):
            c.error(node, "run.limits.cpus",
                    f"expected a number of CPUs from 0.01 to 4096, got {node.value!r}")
    return Limits(**kw)


def _run(c: Checker, node: yaml.Node) -> RunSpec:
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
        _tmpfs_targets(c, m["tmpfs"], kw["tmpfs"])
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
    if "limits" in m:
        kw["limits"] = _limits(c, m["limits"])
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


def _tmpfs_targets(c: Checker, node: yaml.Node, paths: list[str]) -> None:
    """Refuse a tmpfs where the container cannot have one or where tracer's recorder lives.

    Over `/` (the engine refuses the container: exit 4 after the image was read), `/proc`
    or `/dev` (the runtime cannot start it), or tracer's own read-only mounts (the strace
    bundle, the trace FIFOs: the run validated, then recorded nothing and verification
    failed with no hint). Checked on the normalized path: `/tmp/..` is `/`.
    """
    from tracer.rootfs import normalize
    from tracer.trace.bundle import BUNDLE_MOUNT, OUTPUT_MOUNT

    if not isinstance(node, yaml.SequenceNode) or len(node.value) != len(paths):
        return  # not a valid list: already reported
    for i, (item, path) in enumerate(zip(node.value, paths, strict=True)):
        target = normalize(path)
        under = next((m for m in (BUNDLE_MOUNT, OUTPUT_MOUNT, "/proc")
                      if target == m or target.startswith(m + "/")), None)
        if target == "/":
            why = "the container's root directory cannot be a tmpfs"
        elif target == "/dev" or under == "/proc":
            why = f"the container runtime mounts {under or target} itself (it would not start)"
        elif under is not None:
            why = (f"tracer mounts its recorder at {under} (a tmpfs there would hide it and "
                   "the traced run would record nothing)")
        else:
            continue
        c.error(item, f"run.tmpfs[{i}]", f"{path!r}: {why}")


def _argv_step(c: Checker, node: yaml.Node, extra: dict[str, yaml.Node], field: str,
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


def _http(c: Checker, node: yaml.Node, sub: str) -> HttpStep | None:
    h = c.mapping(node, sub, HTTP_KEYS) or {}
    if "url" not in h:
        c.error(node, f"{sub}.url", "required")
    url = c.string(h["url"], f"{sub}.url") if "url" in h else None
    if url is not None and not re.match(r"https?://", url):
        c.error(h["url"], f"{sub}.url", f"expected an http:// or https:// URL, got {url!r}")
        url = None
    elif url is not None and not is_loopback(urlsplit(url).hostname or ""):
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
    if "headers" in h:
        kw["headers"] = _headers(c, h["headers"], f"{sub}.headers")
    return HttpStep(url=url, **kw) if url else None


def _headers(c: Checker, node: yaml.Node, field: str) -> dict[str, str]:
    """`headers: {Name: REGEX}`: names are HTTP tokens, one entry per name whatever its
    case (HTTP names are case-insensitive: `server` and `Server` would be one header)."""
    if not isinstance(node, yaml.MappingNode):
        c.error(node, field, f"expected a mapping of header name to regex, got "
                f"{'a list' if isinstance(node, yaml.SequenceNode) else repr(node.value)}")
        return {}
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key_node, value_node in node.value:
        name = c.string(key_node, field)
        if name is None:
            continue
        if not HEADER_NAME_RE.fullmatch(name):
            c.error(key_node, f"{field}.{name}", "expected a header name (letters, digits "
                    "and !#$%&'*+-.^_`|~, at most 256), got " + repr(name[:80]))
            continue
        if name.lower() in seen:
            c.error(key_node, f"{field}.{name}", f"given twice (as {seen[name.lower()]!r}; "
                    "header names are case-insensitive)")
            continue
        seen[name.lower()] = name
        pattern = c.regex(value_node, f"{field}.{name}")
        if pattern is not None:
            out[name] = pattern
    return out


def _tcp(c: Checker, node: yaml.Node, sub: str) -> TcpStep | None:
    t_ = c.mapping(node, sub, TCP_KEYS) or {}
    if "port" not in t_:
        c.error(node, f"{sub}.port", "required")
    port = c.integer(t_["port"], f"{sub}.port", 1, 65535) if "port" in t_ else None
    kw: dict[str, Any] = {}
    if "host" in t_:
        kw["host"] = c.string(t_["host"], f"{sub}.host")
        if not is_loopback(kw["host"] or ""):
            c.error(t_["host"], f"{sub}.host", "only loopback addresses are allowed")
    if "send" in t_:
        kw["send"] = c.string(t_["send"], f"{sub}.send")
    if "expect" in t_:
        kw["expect"] = c.regex(t_["expect"], f"{sub}.expect")
    if "timeout" in t_ and (t := c.duration(t_["timeout"], f"{sub}.timeout")):
        kw["timeout"] = t
    return TcpStep(port=port, **kw) if port else None


def _step(c: Checker, node: yaml.Node, index: int, run: RunSpec) -> SmokeStep | None:
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


def _glob_list(c: Checker, node: yaml.Node, field: str) -> list[str]:
    return c.string_list(node, field, c.glob) or []


def _keep(c: Checker, node: yaml.Node) -> KeepSpec:
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
    if "evidence" in m:
        kw["evidence"] = [f for i, node in enumerate(c.seq(m["evidence"], "keep.evidence") or [])
                          if (f := _evidence_file(c, node, f"keep.evidence[{i}]"))]
    return KeepSpec(**kw)


def _evidence_file(c: Checker, node: yaml.Node, field: str) -> str | None:
    """A recording's file name, relative to the profile's directory: it must be a regular
    file now (it is read, within its budget, when the minimization starts)."""
    import stat

    name = c.string(node, field)
    if name is None:
        return None
    if not name:
        c.error(node, field, "expected a file name, got ''")
        return None
    path = c.base / name
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:
        c.error(node, field, f"{name!r} (relative to {c.base}): cannot read it: "
                f"{exc.strerror or exc}")
        return None
    if not regular:
        c.error(node, field, f"{name!r} (relative to {c.base}): not a regular file; a "
                "recording is a file written by `tracer record`")
        return None
    return str(path)


def _budgets(c: Checker, node: yaml.Node) -> dict[str, int]:
    refused = {name: "only --budget profile_bytes=N raises it: the profile file is measured "
               "before it is read" for name in CLI_ONLY_BUDGETS}
    m = c.mapping(node, "budgets", PROFILE_BUDGETS, refused) or {}
    out: dict[str, int] = {}
    for name, value in m.items():
        if (n := c.size(value, f"budgets.{name}")) is not None:
            out[name] = n
    return out


def _image_ref(c: Checker, node: yaml.Node, field: str) -> str | None:
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
    c = Checker(filename, base, budgets)
    root = compose(text, filename)
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

