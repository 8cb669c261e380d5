"""The engine side of a smoke run: containers created, started, stopped and removed.

Every container is created here and remembered by id, so `cleanup()` can remove all of
them on success, failure and Ctrl-C alike. The profile's `run:` section and the image's
config are combined here into one `ContainerSpec`, the same for traced and untraced runs
except for the recorder's wrapper, its read-only mounts, the user strace starts as and
CAP_SYS_PTRACE.

Nothing here waits by polling: exits come from the engine's `wait`, log lines from one
follow stream per container. What a container prints is read as a stream into a bounded
tail (`capture.TailBuffer`), never whole. A container that someone else removes during the
run is an environment problem (`ContainerGone`, exit 4), not a crash. The engine is Docker
or Podman (tracer.engine): what Podman needs on top (resource limits) or answers otherwise
(container states) comes from the engine's Flavour, here as everywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import BadInput, EnvironmentProblem
from tracer.image.config import ImageConfig
from tracer.profile.model import RunSpec
from tracer.trace.capture import TailBuffer


class StartFailed(Exception):
    """The engine could not start the container's process (e.g. its entrypoint is missing)."""


class ContainerGone(EnvironmentProblem):
    """A container of this run disappeared (removed by someone else): exit 4."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container (main, or a `command` step's)."""

    image: str
    argv: list[str]  # the full command: entrypoint + cmd, maybe wrapped in strace
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    network: str = "none"
    tmpfs: list[str] = field(default_factory=list)
    tmpfs_bytes: int | None = None  # size of each tmpfs: the app cannot fill the host's RAM
    binds: dict[str, tuple[str, bool]] = field(default_factory=dict)  # target -> (src, ro)
    cap_add: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # lets an operator find leftovers
    stdin: bytes | None = None  # fed to the main process, then closed; None: empty and closed


def connect() -> Any:
    """The process's docker SDK client (tracer.engine: one client, a deadline per call)."""
    from tracer.engine import connect as engine

    return engine().sdk


def stream_client() -> Any:
    """The client for streams that are silent for long (follow logs, exec output, wait):
    no per-read deadline; the caller enforces its own."""
    from tracer.engine import connect as engine

    return engine(None).sdk


def _engine() -> Any:
    """This thread's tracer.engine.Engine (its flavour, where it listens)."""
    from tracer.engine import connect as engine

    return engine()


def image_config(client: Any, image: str) -> ImageConfig:
    """Read the image's config from the engine; BadInput if the engine does not have it."""
    import docker

    title = _engine().flavour.title
    try:
        attrs = client.images.get(image).attrs
    except docker.errors.NotFound as exc:
        raise BadInput(f"image {image!r} is not in {title}") from exc
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"{title} failed to inspect {image!r}: {exc}") from exc
    return ImageConfig.parse(attrs.get("Config"), f"image {image}")


def effective_argv(run: RunSpec, cfg: ImageConfig, image: str) -> list[str]:
    """What the container runs (ImageConfig.command: Docker's rule); BadInput if nothing."""
    argv = cfg.command(run.entrypoint, run.cmd)
    if not argv:
        raise BadInput(f"image {image!r} has no Entrypoint or Cmd and the profile sets neither")
    return argv


def raw_socket(sock: Any) -> socket.socket:
    """The real socket under the SDK's hijacked connection (SocketIO or socket)."""
    return getattr(sock, "_sock", sock)


@contextlib.contextmanager
def engine_calls(container: Any, what: str) -> Iterator[None]:
    """Engine failures as EnvironmentProblem; a vanished container as ContainerGone."""
    import docker

    from tracer.engine import engine_errors

    try:
        with engine_errors(what):
            yield
    except docker.errors.NotFound:
        raise ContainerGone(
            f"container {getattr(container, 'name', container)} disappeared while tracer "
            f"was trying to {what}: something else removed it during the run") from None


class LogWatch:
    """Follows a container's stdout+stderr: a bounded tail, and whether a regex was seen.

    One stream per container instead of fetching the whole log on every poll: a ready
    line is noticed when it is written, and an app that logs gigabytes costs `cap` bytes.
    The regex is searched line by line (a line longer than the cap is searched in its tail).
    """

    def __init__(self, container: Any, pattern: str | None, cap: int) -> None:
        self.container, self.cap = container, cap
        self.pattern = re.compile(pattern.encode(), re.M) if pattern else None
        self.tail = TailBuffer(cap)
        self.matched = threading.Event()
        self.ended = threading.Event()
        self.changed = threading.Condition()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, name="logs", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        partial = b""
        try:
            self._stream = stream_client().api.logs(
                self.container.id, stdout=True, stderr=True, stream=True, follow=True)
            for chunk in self._stream:
                self.tail.write(chunk)
                if self.pattern is not None and not self.matched.is_set():
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()[-self.cap :]
                    if any(self.pattern.search(ln) for ln in lines) or self.pattern.search(
                        partial
                    ):
                        self.matched.set()
                with self.changed:
                    self.changed.notify_all()
        except Exception:  # noqa: BLE001 - the container went away: the stream just ends
            pass
        finally:
            self.ended.set()
            with self.changed:
                self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Sleep until new output arrives, the stream ends, or `timeout` passes."""
        with self.changed:
            if not self.ended.is_set():
                self.changed.wait(max(timeout, 0))

    def close(self) -> None:
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._thread.join(5)


class DockerRunner:
    """Creates containers and remembers them so that all are removed, whatever happens."""

    def __init__(self, client: Any, *, output_cap: int = 1 << 20) -> None:
        self.client = client
        self.output_cap = output_cap
        self.created: list[str] = []
        self._stdin: dict[str, tuple[Any, bytes]] = {}  # name -> (stdin socket, data) to feed
        self._sockets: list[Any] = []  # every hijacked connection, closed by cleanup()

    def create(self, spec: ContainerSpec) -> Any:
        import docker

        mounts = [
            docker.types.Mount(target, src, type="bind", read_only=ro)
            for target, (src, ro) in spec.binds.items()
        ]
        size = f"size={spec.tmpfs_bytes}" if spec.tmpfs_bytes else ""
        # Named and remembered BEFORE the engine is asked: if the answer never arrives
        # (Ctrl-C, a failed inspect inside the SDK), cleanup still removes it by name.
        name = f"tracer-{uuid.uuid4().hex[:16]}"
        self.created.append(name)
        engine = _engine()
        try:
            container = self.client.containers.create(
                spec.image,
                name=name,
                entrypoint=spec.argv[:1],
                command=spec.argv[1:],
                environment=spec.env,
                user=spec.user or "",
                working_dir=spec.workdir or None,
                network_mode=spec.network,
                tmpfs={p: size for p in spec.tmpfs},
                mounts=mounts,
                cap_add=spec.cap_add or None,
                labels=spec.labels,
                stdin_open=spec.stdin is not None,
                # not "detached" when stdin is fed: only then does the SDK set StdinOnce,
                # which closes the process's stdin when our attach ends (EOF for the app)
                detach=spec.stdin is None,
                **engine.flavour.create_options(engine.address, spec.network),
            )
        except docker.errors.ImageNotFound as exc:
            raise BadInput(f"image {spec.image!r} is not in {engine.flavour.title}") from exc
        except docker.errors.APIError as exc:
            raise EnvironmentProblem(
                f"{engine.flavour.title} refused to create a container: {exc}"
            ) from exc
        if spec.stdin is not None:
            # attached before the start, so not a byte is lost; StdinOnce closes the
            # process's stdin when this connection is done
            with engine_calls(container, "attach to the container's stdin"):
                sock = self.client.api.attach_socket(
                    container.id, params={"stdin": 1, "stream": 1})
            self._sockets.append(sock)
            self._stdin[name] = (sock, spec.stdin)
        return container

    def start(self, container: Any) -> None:
        """Start; StartFailed when the runtime cannot start the process (a missing entrypoint
        in a minimized image is the application's failure, not the environment's). Then
        feed `stdin` (if the spec asked for it) from a thread and close it."""
        import docker

        try:
            container.start()
        except docker.errors.NotFound:
            raise ContainerGone(f"container {container.name} disappeared before it started: "
                                "something else removed it") from None
        except docker.errors.APIError as exc:
            msg = str(exc.explanation or exc)
            raise StartFailed(f"the container did not start: {msg}") from exc
        pending = self._stdin.pop(container.name, None)
        if pending is not None:
            feed(*pending)

    def status(self, container: Any) -> tuple[str, int | None]:
        """(state, exit code if exited) from a fresh inspect."""
        with engine_calls(container, "inspect a container"):
            container.reload()
        state = container.attrs.get("State") or {}
        status = _engine().flavour.container_state(str(state.get("Status", "")))
        return status, (state.get("ExitCode") if status in ("exited", "dead") else None)

    def wait(self, container: Any, timeout: float) -> int | None:
        """Exit code, or None after `timeout` seconds (the container keeps running).

        The engine answers when the container exits: no polling, a short job is noticed
        at once.
        """
        import requests

        if timeout <= 0:
            return self.status(container)[1]
        with engine_calls(container, "wait for a container"):
            try:
                answer = stream_client().api.wait(container.id, timeout=timeout)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                answer = None  # our own timeout (the SDK may wrap it): still running?
        if answer is None:
            return self.status(container)[1]
        return int(answer.get("StatusCode", -1))

    def logs(
        self, container: Any, *, stdout: bool = True, stderr: bool = True, raw: bool = False
    ) -> str:
        """The tail (output_cap bytes) of the container's output, read as a stream.

        strace's own lines are removed unless `raw` (the environment-problem check wants
        them; a step's regex and a failure report must not see them)."""
        from tracer.trace.capture import without_tool_lines

        tail = TailBuffer(self.output_cap)
        with contextlib.suppress(Exception):  # a vanished container has no more logs
            tail.feed(self.client.api.logs(container.id, stdout=stdout, stderr=stderr,
                                           stream=True, follow=False))
        text = tail.text()
        return text if raw else without_tool_lines(text)

    def watch_logs(self, container: Any, pattern: str | None) -> LogWatch:
        return LogWatch(container, pattern, self.output_cap)

    def stop(self, container: Any, *, graceful: bool, grace: float = 5.0) -> int | None:
        """End the container. Not graceful (an untraced run whose steps are all judged):
        SIGKILL at once, there is nothing left to learn from it. Graceful (a traced run):
        let the app shut down and strace flush, then kill after `grace` seconds.

        With strace as PID 1, `docker stop` would signal strace, which blocks fatal
        signals and is then SIGKILLed with its buffer unwritten. So the application (the
        children of PID 1, seen from the engine's host) gets SIGTERM; strace then exits
        on its own when the last tracee is gone. Where the host pids cannot be signalled
        (not root, remote engine), SIGTERM goes to PID 1 as `docker stop` does.
        """
        status, code = self.status(container)
        if code is not None:
            return code
        if not graceful:
            self.kill(container)
            return self.wait(container, 10)
        pid = (container.attrs.get("State") or {}).get("Pid") or 0
        if not self._signal_tree(pid, signal.SIGTERM):
            with contextlib.suppress(Exception):
                container.kill(signal="SIGTERM")
        code = self.wait(container, grace)
        if code is None and self._signal_tree(pid, signal.SIGKILL):
            code = self.wait(container, 3)  # strace sees its tracees die and flushes
        if code is None:
            self.kill(container)
            code = self.wait(container, 10)
        return code

    @staticmethod
    def _signal_tree(pid: int, sig: int) -> bool:
        """Signal every descendant of `pid` (strace), not `pid` itself; False if we cannot.

        All of them, not only strace's child: a shell's children outlive it, are then
        re-parented to strace, and strace would wait for them forever.
        """
        try:
            import psutil

            children = psutil.Process(pid).children(recursive=True)
            if not children:
                return False
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)
            return True
        except Exception:  # noqa: BLE001 - not our pid namespace or no permission
            return False

    def kill(self, container: Any) -> None:
        with contextlib.suppress(Exception):
            container.kill()

    def remove(self, container: Any) -> None:
        """Remove one container now (by id) and forget it; never raises."""
        with contextlib.suppress(Exception):
            self.client.api.remove_container(container.id, force=True, v=True)
        if container.name in self.created:
            self.created.remove(container.name)

    def cleanup(self) -> None:
        """Remove every container this runner created (by its unique name); never raises,
        says on stderr what it could not remove."""
        import docker

        for sock in self._sockets:
            with contextlib.suppress(Exception):
                sock.close()
        self._sockets.clear()
        self._stdin.clear()
        while self.created:
            cid = self.created[-1]  # forgotten only once its removal was attempted
            try:
                self.client.api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                pass  # never created (interrupted before), or gone already
            except Exception as exc:  # noqa: BLE001 - said, never raised over the outcome
                print(f"tracer: warning: could not remove container {cid}: "
                      f"{str(exc)[:200]} (the next run removes it)", file=sys.stderr)
            self.created.pop()


def feed(sock: Any, data: bytes) -> threading.Thread:
    """Write `data` to a hijacked stdin connection from a thread, then close the write side
    (the process reads EOF). A thread: an app that prints before it reads must not
    deadlock against us, and one that never reads must not hold the run."""

    def write() -> None:
        raw = raw_socket(sock)
        try:
            if data:
                raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the process exited or closed its stdin: what it did not read is moot

    thread = threading.Thread(target=write, name="stdin", daemon=True)
    thread.start()
    return thread
