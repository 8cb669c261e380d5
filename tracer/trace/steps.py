"""The smoke steps: ready checks, http, tcp, exec, command, sleep; each gives a StepOutcome.

A step never raises for an application failure: it returns a failed outcome with a message
an operator can act on and its evidence (the tail of the output, what a tcp step received,
the container's last log lines). Only environment problems (engine gone, a container
removed by someone else) propagate as exceptions. Timeouts end the container (the caller
kills it). Everything read from the application is capped (Budgets.output_bytes,
http_body); strace's own messages never appear in a step's output.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracer.budgets import DEFAULT, Budgets
from tracer.engine import engine_failures
from tracer.profile.model import (
    CommandStep,
    ExecStep,
    HttpStep,
    Ready,
    SleepStep,
    SmokeStep,
    TcpStep,
)
from tracer.trace import http_probe
from tracer.trace.capture import (
    SHOWN_CHARS,
    TailBuffer,
    exec_failure,
    last_lines,
    without_tool_lines,
)
from tracer.trace.docker_runner import (
    ContainerGone,
    ContainerSpec,
    DockerRunner,
    LogWatch,
    StartFailed,
    engine_calls,
    feed,
    stream_client,
)
from tracer.trace.limits import ContainerLimits
from tracer.trace.result import Captured, StepOutcome

OUTPUT_LINES = 20  # lines of output kept in a failed step's outcome
SHOWN_BYTES = 200  # bytes of a tcp answer quoted in a message


def first_lines(text: str, n: int = OUTPUT_LINES, max_chars: int = SHOWN_CHARS) -> str:
    """The first `n` lines (at most `max_chars`) of an answer, saying how much more came."""
    lines = text.splitlines()
    shown = "\n".join(lines[:n])[:max_chars]
    more = len("\n".join(lines)) - len(shown)
    return shown + (f"\n... ({more} more characters)" if more > 0 else "")


@dataclass
class StepContext:
    """What a step may use: the runner, the running container and how to wrap argv."""

    runner: DockerRunner
    container: Any  # the main container (None in job mode)
    wrap: Callable[[list[str], str], list[str]]  # (argv, trace stem) -> argv to run
    command_spec: Callable[[ArgvLike, str], ContainerSpec]  # (step, trace stem) -> spec
    deadline: float  # monotonic time at which the whole run's timeout expires
    budgets: Budgets = DEFAULT
    exec_user: str | None = None  # user of `docker exec` (root when strace drops to the app's)
    # called once a step's process exists (exec: before it starts; command: its container
    # started): opens the step's trace channel and marks a new container for fanotify
    before_step: Callable[[str, Any], None] = lambda _stem, _container: None
    watch: LogWatch | None = None  # the main container's log follower
    limits: ContainerLimits | None = None  # of every container: said when one runs into them


ArgvLike = ExecStep | CommandStep


def _outcome(
    label: str, kind: str, start: float, ok: bool, msg: str = "", **kw: Any
) -> StepOutcome:
    return StepOutcome(label, kind, ok, round(time.monotonic() - start, 3), message=msg, **kw)


def _container_logs(ctx: StepContext) -> str:
    """The main container's last log lines: evidence for a failed step of a service."""
    if ctx.watch is not None:
        return last_lines(without_tool_lines(ctx.watch.tail.text()))
    if ctx.container is None:
        return ""
    return last_lines(ctx.runner.logs(ctx.container))


def _both(out: str, err: str) -> str:
    return (out + ("\n" if out and err else "") + err).strip()


def check_output(
    label: str,
    kind: str,
    start: float,
    code: int,
    want: ArgvLike | Any,
    out: str,
    err: str,
    logs: str = "",
) -> StepOutcome:
    """Judge exit code and output regexes; a failure carries the tail of both streams."""
    out, err = without_tool_lines(out), without_tool_lines(err)
    streams = {"stdout": Captured.of(out), "stderr": Captured.of(err)}
    evidence = {"exit_code": code, "output": last_lines(_both(out, err)), "logs": logs,
                "streams": streams}
    if code != want.exit:
        return _outcome(label, kind, start, False, f"expected exit code {want.exit}, got {code}",
                        **evidence)
    for stream, pattern, text in (("stdout", want.stdout, out), ("stderr", want.stderr, err)):
        if pattern and not re.search(pattern, text, re.M):
            return _outcome(label, kind, start, False, f"{stream} does not match {pattern!r}",
                            **evidence)
    return _outcome(label, kind, start, True, exit_code=code, streams=streams)


def wait_ready(ctx: StepContext, ready: Ready) -> StepOutcome:
    """Wait until every given condition holds (log regex, tcp port), the container exits,
    or ready.timeout passes. The log is followed (a line is seen when it is written); only
    the tcp port has to be tried again, at growing intervals."""
    start = time.monotonic()
    deadline = min(start + ready.timeout, ctx.deadline)
    watch = ctx.watch or ctx.runner.watch_logs(ctx.container, ready.log)
    pause = 0.01
    try:
        while True:
            log_ok = ready.log is None or watch.matched.is_set()
            tcp_ok = ready.tcp is None or _tcp_open("127.0.0.1", ready.tcp)
            if log_ok and tcp_ok:
                return _outcome("ready", "ready", start, True)
            if watch.ended.is_set():  # the stream ends when the container does
                code = ctx.runner.wait(ctx.container, 5)
                if code is not None:
                    return _outcome(
                        "ready", "ready", start, False,
                        f"the container exited with code {code} before it was ready",
                        exit_code=code, output=_container_logs(ctx))
            if time.monotonic() >= deadline:
                missing = [w for w, ok in ((f"log {ready.log!r}", log_ok),
                                           (f"tcp port {ready.tcp}", tcp_ok)) if not ok]
                return _outcome(
                    "ready", "ready", start, False,
                    f"not ready after {ready.timeout:g}s: no {' and no '.join(missing)}",
                    output=_container_logs(ctx))
            wait = min(deadline - time.monotonic(), pause if ready.tcp is not None else 1.0)
            if watch.ended.is_set():  # no more log lines to wake us: only the port is left
                time.sleep(max(min(wait, pause), 0))
            else:
                watch.wait(wait)
            pause = min(pause * 2, 0.2)
    finally:
        if ctx.watch is None:
            watch.close()


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_http(label: str, step: HttpStep, budgets: Budgets = DEFAULT,
             logs: Callable[[], str] = lambda: "") -> StepOutcome:
    """One GET (http_probe: no proxy, loopback only, one deadline, capped body)."""
    start = time.monotonic()
    cap = step.max_body or budgets.http_body
    try:
        answer = http_probe.get(step.url, timeout=step.timeout, max_body=cap)
    except http_probe.ProbeFailed as exc:
        return _outcome(label, "http", start, False, str(exc),
                        output=first_lines(exc.received.decode("utf-8", "replace")),
                        logs=logs())
    text = answer.body.decode("utf-8", "replace")
    streams = {"body": Captured.of(text)}
    cut = f" (the body was cut at {cap} bytes: judged on those)" if answer.cut else ""
    if step.status is not None and answer.status != step.status:
        return _outcome(label, "http", start, False,
                        f"expected status {step.status}, got {answer.status}{cut}",
                        output=first_lines(text), logs=logs(), streams=streams)
    problem = header_problem(step.headers, answer)
    if problem:
        return _outcome(label, "http", start, False, problem,
                        output=_header_lines(answer), logs=logs(), streams=streams)
    if step.body and not re.search(step.body, text, re.M):
        return _outcome(label, "http", start, False, f"body does not match {step.body!r}{cut}",
                        output=first_lines(text), logs=logs(), streams=streams)
    return _outcome(label, "http", start, True, cut.strip(" ()"), streams=streams)


SHOWN_VALUE = 200  # characters of a header value quoted in a message


def _shown_value(value: str) -> str:
    more = f"... ({len(value) - SHOWN_VALUE} more characters)" if len(value) > SHOWN_VALUE \
        else ""
    return repr(value[:SHOWN_VALUE]) + more


def header_problem(wanted: dict[str, str], answer: http_probe.Answer) -> str:
    """The first asserted header that is missing or does not match, said with what came
    back ("" when all hold). Names are case-insensitive; a header sent several times
    holds when any one of its values matches (Set-Cookie, Vary, Link come in several)."""
    for name, pattern in wanted.items():
        values = answer.header_values(name)
        if not values:
            sent = ", ".join(dict.fromkeys(k for k, _ in answer.headers)) or "none"
            return (f"header {name}: not in the response (its headers: "
                    f"{sent[:SHOWN_CHARS]})")
        if any(re.search(pattern, v, re.M) for v in values):
            continue
        if len(values) == 1:
            return f"header {name}: {_shown_value(values[0])} does not match {pattern!r}"
        shown = ", ".join(_shown_value(v) for v in values[:5])
        more = f" and {len(values) - 5} more" if len(values) > 5 else ""
        return (f"header {name}: none of its {len(values)} values matches {pattern!r}: "
                f"{shown}{more}")
    return ""


def _header_lines(answer: http_probe.Answer) -> str:
    """What came back, as a failed step's evidence: the status and the headers."""
    lines = [f"HTTP {answer.status}"] + [f"{k}: {v}" for k, v in answer.headers]
    return first_lines("\n".join(lines), n=OUTPUT_LINES + 10)


def _quoted(data: bytes) -> str:
    shown = data[-SHOWN_BYTES:]
    more = f"... ({len(data) - SHOWN_BYTES} bytes before) " if len(data) > SHOWN_BYTES else ""
    return more + repr(shown.decode("utf-8", "replace"))


def run_tcp(label: str, step: TcpStep, budgets: Budgets = DEFAULT,
            logs: Callable[[], str] = lambda: "") -> StepOutcome:
    """Connect, send, read until `expect` matches; a failure says how far it got."""
    start = time.monotonic()
    deadline = start + step.timeout
    received = TailBuffer(budgets.output_bytes)
    sent = 0
    where = f"{step.host}:{step.port}"

    def failed(msg: str) -> StepOutcome:
        data = received.bytes()
        return _outcome(label, "tcp", start, False, msg,
                        output=first_lines(data.decode("utf-8", "replace")), logs=logs())

    try:
        sock = socket.create_connection((step.host, step.port), timeout=step.timeout)
    except ConnectionRefusedError:
        return failed(f"{where}: connection refused (nothing listens there)")
    except TimeoutError:
        return failed(f"{where}: no connection within {step.timeout:g}s")
    except OSError as exc:
        return failed(f"{where}: cannot connect: {exc}")
    with sock:
        try:
            if step.send is not None:
                payload = step.send.encode()
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(payload)
                sent = len(payload)
            if not step.expect:
                return _outcome(label, "tcp", start, True)
            pattern = re.compile(step.expect.encode(), re.M)
            closed = False
            while not pattern.search(received.bytes()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                received.write(chunk)
            else:
                return _outcome(label, "tcp", start, True)
            end = "the server closed the connection" if closed else (
                f"nothing matched within {step.timeout:g}s")
        except TimeoutError:
            end = f"nothing matched within {step.timeout:g}s"
        except OSError as exc:
            end = f"then {exc}"
    got = (f"received {_quoted(received.bytes())}" if received.total
           else "received nothing")
    return failed(f"{where}: connected, sent {sent} bytes, {got} which did not match expect "
                  f"/{step.expect}/ ({end})")


def _exec_stream(sock: Any, out: TailBuffer, err: TailBuffer) -> None:
    """Demultiplex a docker exec stream into two bounded tails (frames as they come)."""
    from docker.utils.socket import frames_iter

    for stream, data in frames_iter(sock, tty=False):
        (err if stream == 2 else out).write(data)


def run_exec(ctx: StepContext, label: str, step: ExecStep, stem: str) -> StepOutcome:
    """docker exec in the running container, wrapped in strace when tracing; output is
    streamed into bounded tails; `stdin` is fed and closed (None: empty and closed)."""
    start = time.monotonic()
    if ctx.container is None:
        return _outcome(
            label, "exec", start, False, "exec needs a running container (run.mode: service)"
        )
    import docker

    api = ctx.runner.client.api
    argv = ctx.wrap(list(step.argv), stem)
    ctx.before_step(stem, ctx.container)
    try:
        exec_id = api.exec_create(ctx.container.id, argv, stdout=True, stderr=True,
                                  stdin=step.stdin is not None, user=ctx.exec_user or "")["Id"]
    except docker.errors.NotFound:
        raise ContainerGone(f"container {ctx.container.name} disappeared while tracer was "
                            "trying to exec into it: something else removed it") from None
    except docker.errors.APIError as exc:  # not running: the app died and the container stopped
        return _outcome(label, "exec", start, False, f"cannot exec: {exc.explanation or exc}",
                        logs=_container_logs(ctx))
    cap = ctx.budgets.output_bytes
    out, err = TailBuffer(cap), TailBuffer(cap)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            sock = stream_client().api.exec_start(exec_id, socket=True)
            box["sock"] = sock
            if step.stdin is not None:
                feed(sock, step.stdin)
            _exec_stream(sock, out, err)
        except engine_failures() as exc:  # the engine or the stream failed: the step did
            box["error"] = exc
        except BaseException as exc:  # noqa: BLE001 - a bug of tracer: raised below
            box["bug"] = exc

    thread = threading.Thread(target=target, name="exec", daemon=True)
    thread.start()
    thread.join(max(min(step.timeout, ctx.deadline - time.monotonic()), 0))
    try:
        if thread.is_alive():
            ctx.runner.kill(ctx.container)  # a timeout always ends the container
            return _outcome(label, "exec", start, False, f"timed out after {step.timeout:g}s",
                            output=last_lines(_both(without_tool_lines(out.text()),
                                                    without_tool_lines(err.text()))),
                            logs=_container_logs(ctx))
    finally:
        if "sock" in box:
            import contextlib

            with contextlib.suppress(Exception):
                box["sock"].close()
    if "bug" in box:  # a TypeError in tracer is exit 70, never a failed step (exit 1 or 3)
        raise box["bug"]
    if "error" in box:
        return _outcome(label, "exec", start, False, f"exec failed: {box['error']}",
                        logs=_container_logs(ctx))
    code = _exec_exit_code(ctx, exec_id)
    return check_output(label, "exec", start, code, step, out.text(), err.text(),
                        logs=_container_logs(ctx))


def _exec_exit_code(ctx: StepContext, exec_id: str) -> int:
    """The exec's exit code; the engine may record it a moment after the stream ends."""
    api = ctx.runner.client.api
    pause = 0.001
    for _ in range(12):
        with engine_calls(ctx.container, "inspect an exec"):
            info = api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        time.sleep(pause)
        pause *= 2
    return -1


def run_command(ctx: StepContext, label: str, step: CommandStep, stem: str) -> StepOutcome:
    """A fresh one-shot container from the image, traced the same way as the main one."""
    start = time.monotonic()
    container = ctx.runner.create(ctx.command_spec(step, stem))
    try:
        try:
            ctx.runner.start(container)
        except StartFailed as exc:
            return _outcome(label, "command", start, False, str(exc))
        ctx.before_step(stem, container)
        code = ctx.runner.wait(container, min(step.timeout, ctx.deadline - time.monotonic()))
        pressure = ctx.runner.pressure(container, ctx.limits)
        if code is None:
            ctx.runner.kill(container)
        out = ctx.runner.logs(container, stderr=False)
        err = ctx.runner.logs(container, stdout=False)
        said = f"; {pressure}" if pressure else ""
        if code is None:
            return _outcome(label, "command", start, False,
                            f"timed out after {step.timeout:g}s{said}",
                            output=last_lines(_both(out, err)))
        outcome = check_output(label, "command", start, code, step, out, err)
        if not outcome.passed:
            outcome.message += said
        return explain_exec_failure(ctx.runner, container, outcome, step.argv[0])
    finally:
        ctx.runner.remove(container)


def explain_exec_failure(runner: DockerRunner, container: Any, outcome: StepOutcome,
                         program: str) -> StepOutcome:
    """A failed outcome says so when the program itself could not be executed (strace
    reported it in its own words, which are filtered from the output)."""
    if outcome.passed:
        return outcome
    reason = exec_failure(runner.logs(container, raw=True))
    if reason:
        outcome.message += f"; {program} could not be executed: {reason}"
    return outcome


def run_step(ctx: StepContext, smoke: SmokeStep) -> StepOutcome:
    step, label = smoke.step, smoke.label
    if isinstance(step, HttpStep):
        return run_http(label, step, ctx.budgets, lambda: _container_logs(ctx))
    if isinstance(step, TcpStep):
        return run_tcp(label, step, ctx.budgets, lambda: _container_logs(ctx))
    if isinstance(step, ExecStep):
        return run_exec(ctx, label, step, step_stem(smoke))
    if isinstance(step, CommandStep):
        return run_command(ctx, label, step, step_stem(smoke))
    if isinstance(step, SleepStep):
        start = time.monotonic()
        time.sleep(max(min(step.seconds, ctx.deadline - time.monotonic()), 0))
        return _outcome(label, "sleep", start, True)
    raise TypeError(f"unknown smoke step {step!r}")  # pragma: no cover - closed union


def step_stem(smoke: SmokeStep) -> str:
    """The name of a step's trace stream (exec and command steps have their own)."""
    return f"smoke-{smoke.index}-{smoke.kind}"
