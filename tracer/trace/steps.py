"""The smoke steps: ready checks, http, tcp, exec, command, sleep; each gives a StepOutcome.

A step never raises for an application failure: it returns a failed outcome with a message
an operator can act on and the first lines of output. Only environment problems (engine
gone) propagate as exceptions. Timeouts end the container (the caller kills it).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker

from tracer.profile_model import (
    CommandStep,
    ExecStep,
    HttpStep,
    Ready,
    SleepStep,
    SmokeStep,
    TcpStep,
)
from tracer.trace.docker_runner import ContainerSpec, DockerRunner, StartFailed
from tracer.trace.result import StepOutcome

OUTPUT_LINES = 20  # lines of output kept in a failed step's outcome


def first_lines(text: str, n: int = OUTPUT_LINES) -> str:
    lines = text.splitlines()
    more = f"\n... ({len(lines) - n} more lines)" if len(lines) > n else ""
    return "\n".join(lines[:n]) + more


@dataclass
class StepContext:
    """What a step may use: the runner, the running container and how to wrap argv."""

    runner: DockerRunner
    container: Any  # the main container (None in job mode)
    wrap: Callable[[list[str], str], list[str]]  # (argv, trace file stem) -> argv to run
    command_spec: Callable[[list[str], str], ContainerSpec]  # (argv, trace stem) -> spec
    deadline: float  # monotonic time at which the whole run's timeout expires


def _outcome(
    label: str, kind: str, start: float, ok: bool, msg: str = "", **kw: Any
) -> StepOutcome:
    return StepOutcome(label, kind, ok, round(time.monotonic() - start, 3), message=msg, **kw)


def _check_output(
    label: str,
    kind: str,
    start: float,
    code: int,
    want: ExecStep | CommandStep,
    out: str,
    err: str,
) -> StepOutcome:
    both = (out + ("\n" if out and err else "") + err).strip()
    if code != want.exit:
        return _outcome(
            label,
            kind,
            start,
            False,
            f"expected exit code {want.exit}, got {code}",
            exit_code=code,
            output=first_lines(both),
        )
    for stream, pattern, text in (("stdout", want.stdout, out), ("stderr", want.stderr, err)):
        if pattern and not re.search(pattern, text, re.M):
            return _outcome(
                label,
                kind,
                start,
                False,
                f"{stream} does not match {pattern!r}",
                exit_code=code,
                output=first_lines(both),
            )
    return _outcome(label, kind, start, True, exit_code=code)


def wait_ready(ctx: StepContext, ready: Ready) -> StepOutcome:
    """Poll until every given condition holds (log regex, tcp port), the container exits,
    or ready.timeout passes."""
    start = time.monotonic()
    deadline = min(start + ready.timeout, ctx.deadline)
    pattern = re.compile(ready.log, re.M) if ready.log else None
    pause = 0.01  # back off from 10 ms to 200 ms: quick services are seen at once
    while True:
        status, code = ctx.runner.status(ctx.container)
        logs = ctx.runner.logs(ctx.container)
        if code is not None:
            return _outcome(
                "ready",
                "ready",
                start,
                False,
                f"the container exited with code {code} before it was ready",
                exit_code=code,
                output=first_lines(logs),
            )
        log_ok = pattern is None or bool(pattern.search(logs))
        tcp_ok = ready.tcp is None or _tcp_open("127.0.0.1", ready.tcp)
        if log_ok and tcp_ok:
            return _outcome("ready", "ready", start, True)
        if time.monotonic() >= deadline:
            missing = [
                w
                for w, ok in ((f"log {ready.log!r}", log_ok), (f"tcp port {ready.tcp}", tcp_ok))
                if not ok
            ]
            return _outcome(
                "ready",
                "ready",
                start,
                False,
                f"not ready after {ready.timeout:g}s: no {' and no '.join(missing)}",
                output=first_lines(logs),
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_http(label: str, step: HttpStep) -> StepOutcome:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(step.url, timeout=step.timeout) as resp:  # noqa: S310
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return _outcome(label, "http", start, False, f"GET {step.url} failed: {exc!r}")
    text = body.decode("utf-8", "replace")
    if step.status is not None and status != step.status:
        return _outcome(
            label,
            "http",
            start,
            False,
            f"expected status {step.status}, got {status}",
            output=first_lines(text),
        )
    if step.body and not re.search(step.body, text, re.M):
        return _outcome(
            label,
            "http",
            start,
            False,
            f"body does not match {step.body!r}",
            output=first_lines(text),
        )
    return _outcome(label, "http", start, True)


def run_tcp(label: str, step: TcpStep) -> StepOutcome:
    start = time.monotonic()
    received = b""
    try:
        with socket.create_connection((step.host, step.port), timeout=step.timeout) as sock:
            if step.send is not None:
                sock.sendall(step.send.encode())
            if step.expect:
                deadline = start + step.timeout
                pattern = re.compile(step.expect.encode(), re.M)
                while not pattern.search(received) and time.monotonic() < deadline:
                    sock.settimeout(max(deadline - time.monotonic(), 0.01))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                if not pattern.search(received):
                    return _outcome(
                        label,
                        "tcp",
                        start,
                        False,
                        f"answer does not match {step.expect!r}",
                        output=first_lines(received.decode("utf-8", "replace")),
                    )
    except OSError as exc:
        text = received.decode("utf-8", "replace")
        return _outcome(
            label, "tcp", start, False, f"{step.host}:{step.port}: {exc}", output=first_lines(text)
        )
    return _outcome(label, "tcp", start, True)


def run_exec(ctx: StepContext, label: str, step: ExecStep, stem: str) -> StepOutcome:
    """docker exec in the running container, wrapped in strace when tracing."""
    start = time.monotonic()
    if ctx.container is None:
        return _outcome(
            label, "exec", start, False, "exec needs a running container (run.mode: service)"
        )
    api = ctx.runner.client.api
    try:
        exec_id = api.exec_create(
            ctx.container.id, ctx.wrap(list(step.argv), stem), stdout=True, stderr=True
        )["Id"]
    except docker.errors.APIError as exc:  # e.g. the app died and the container stopped
        return _outcome(label, "exec", start, False, f"cannot exec: {exc.explanation or exc}")
    box: dict[str, Any] = {}

    def target() -> None:
        from tracer.engine import connect

        try:
            # no per-read deadline: a step may be silent for its whole timeout, which the
            # join below enforces
            box["out"] = connect(None).api.exec_start(exec_id, demux=True)
        except Exception as exc:  # noqa: BLE001 - reported as the step's failure
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(max(min(step.timeout, ctx.deadline - time.monotonic()), 0))
    if thread.is_alive():
        ctx.runner.kill(ctx.container)  # a timeout always ends the container
        return _outcome(label, "exec", start, False, f"timed out after {step.timeout:g}s")
    if "error" in box:
        return _outcome(label, "exec", start, False, f"exec failed: {box['error']}")
    out_b, err_b = box.get("out") or (None, None)
    out = (out_b or b"").decode("utf-8", "replace")
    err = (err_b or b"").decode("utf-8", "replace")
    code = api.exec_inspect(exec_id).get("ExitCode")
    return _check_output(
        label, "exec", start, int(code if code is not None else -1), step, out, err
    )


def run_command(ctx: StepContext, label: str, step: CommandStep, stem: str) -> StepOutcome:
    """A fresh one-shot container from the image, traced the same way as the main one."""
    start = time.monotonic()
    container = ctx.runner.create(ctx.command_spec(list(step.argv), stem))
    try:
        try:
            ctx.runner.start(container)
        except StartFailed as exc:
            return _outcome(label, "command", start, False, str(exc))
        code = ctx.runner.wait(container, min(step.timeout, ctx.deadline - time.monotonic()))
        out = ctx.runner.logs(container, stderr=False)
        err = ctx.runner.logs(container, stdout=False)
        if code is None:
            ctx.runner.kill(container)
            return _outcome(
                label,
                "command",
                start,
                False,
                f"timed out after {step.timeout:g}s",
                output=first_lines((out + err).strip()),
            )
        return _check_output(label, "command", start, code, step, out, err)
    finally:
        ctx.runner.remove(container)


def run_step(ctx: StepContext, smoke: SmokeStep) -> StepOutcome:
    step, label = smoke.step, smoke.label
    if isinstance(step, HttpStep):
        return run_http(label, step)
    if isinstance(step, TcpStep):
        return run_tcp(label, step)
    if isinstance(step, ExecStep):
        return run_exec(ctx, label, step, f"smoke-{smoke.index}-exec")
    if isinstance(step, CommandStep):
        return run_command(ctx, label, step, f"smoke-{smoke.index}-command")
    if isinstance(step, SleepStep):
        start = time.monotonic()
        time.sleep(max(min(step.seconds, ctx.deadline - time.monotonic()), 0))
        return _outcome(label, "sleep", start, True)
    raise TypeError(f"unknown smoke step {step!r}")  # pragma: no cover - closed union
