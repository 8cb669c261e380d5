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
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from tracer.engine import engine_failures
from tracer.errors import BadInput, EnvironmentProblem
from tracer.image.config import ImageConfig
from tracer.profile.model import RunSpec
from tracer.trace.capture import TailBuffer
from tracer.trace.limits import ContainerLimits

RUNNER_LABEL = "org.tracer.runner"  # the DockerRunner that made a container (its id)
REMOVE_DEADLINE = 120.0  # seconds cleanup keeps removing what the engine has not yet
LINE_BYTES = 32  # see DockerRunner.tail_lines
MIN_READ = 2.0  # seconds a read of a container's output gets even past the run's deadline


def _pids_hits(container_id: str, pid: int) -> int:
    """How many forks the pids cgroup of `pid` refused (its `pids.events` "max" count),
    when `pid` is the container's on this host (cgroup v1 or v2); 0 if not readable."""
    if pid <= 0:
        return 0
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return 0
    if container_id not in text:
        return 0  # not that container's process (a remote engine's pid)
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "pids" in controllers.split(","):
            events = f"/sys/fs/cgroup/pids{path}/pids.events"
        elif controllers == "" and path:
            events = f"/sys/fs/cgroup{path}/pids.events"
        else:
            continue
        try:
            with open(events, encoding="utf-8") as f:
                for field_line in f.read(4096).splitlines():
                    key, _, value = field_line.partition(" ")
                    if key == "max" and value.strip().isdigit():
                        return int(value)
        except OSError:
            continue
    return 0


def _close(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.close()


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
    limits: ContainerLimits | None = None  # processes, memory, CPUs (tracer.trace.limits)
    no_new_privileges: bool = False  # no program of it may gain privilege by exec


def _resources(spec: ContainerSpec) -> dict[str, Any]:
    """The engine's arguments for the spec's limits and privilege rule."""
    out: dict[str, Any] = {}
    if spec.limits is not None:
        out.update(pids_limit=spec.limits.pids, mem_limit=spec.limits.memory,
                   memswap_limit=spec.limits.memory, nano_cpus=spec.limits.nano_cpus)
    if spec.no_new_privileges:
        out["security_opt"] = ["no-new-privileges"]
    return out


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
        except engine_failures():  # the container went away: the stream just ends
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
        # lines of a container's output the engine is asked for: enough to fill the cap
        # with lines of LINE_BYTES on average, never all of a log of empty lines
        self.tail_lines = max(output_cap // LINE_BYTES, 100)
        # monotonic time by which reading the output of the run's containers ends (the
        # run sets it from its timeout); each read gets at least MIN_READ seconds
        self.read_deadline: float | None = None
        # on every container it creates: cleanup finds one whose create answer was lost
        self.runner_id = uuid.uuid4().hex
        self._remove_errors: dict[str, str] = {}
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
                labels={**spec.labels, RUNNER_LABEL: self.runner_id},
                stdin_open=spec.stdin is not None,
                **_resources(spec),
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

    def pressure(self, container: Any, limits: ContainerLimits | None) -> str:
        """Which of its limits the container ran into, in words ('' if none it can tell):
        killed for memory (the engine records it), forks refused at its process limit
        (its cgroup's count, readable from the engine's host while it runs). Call before
        the container is killed; its state is read afresh (an exit `wait` saw leaves the
        state it was created with)."""
        if limits is None:
            return ""
        from tracer.budgets import human

        with engine_calls(container, "inspect a container"):
            container.reload()
        state = container.attrs.get("State") or {}
        said = []
        hits = _pids_hits(container.id, int(state.get("Pid") or 0))
        if hits:
            said.append(f"it hit its limit of {limits.pids:,} processes {hits:,} times "
                        "(run.limits.pids)")
        if state.get("OOMKilled"):
            said.append(f"it was killed for using its {human(limits.memory)} of memory "
                        "(run.limits.memory)")
        return "; ".join(said)

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
        """The tail of the container's output: its last `tail_lines` lines, of which the
        last output_cap bytes are kept, read as a stream by `read_deadline`.

        The engine keeps every line an app prints (a job printing empty lines for 20 s
        leaves millions), and reading them all took minutes; asking for the last lines
        costs what is kept, whatever came before. A read still going at the deadline is
        cut (the text says so): the run's timeout bounds reading its output too.
        strace's own lines are removed unless `raw` (the environment-problem check wants
        them; a step's regex and a failure report must not see them)."""
        from tracer.trace.capture import without_tool_lines

        tail = TailBuffer(self.output_cap)
        until = time.monotonic() + MIN_READ
        if self.read_deadline is not None:
            until = max(until, self.read_deadline)
        late = False
        with contextlib.suppress(*engine_failures()):  # a vanished container: no more logs
            stream = self.client.api.logs(container.id, stdout=stdout, stderr=stderr,
                                          stream=True, follow=False, tail=self.tail_lines)
            # a stalled engine does not end the read either: the stream is closed under it
            cut = threading.Event()

            def cut_read() -> None:
                cut.set()
                _close(stream)

            timer = threading.Timer(max(until - time.monotonic(), 0), cut_read)
            timer.daemon = True
            timer.start()
            try:
                for chunk in stream:
                    if chunk:
                        tail.write(chunk)
                    if time.monotonic() > until:
                        late = True
                        break
            except Exception:
                if not cut.is_set():
                    raise
                late = True  # whatever a read of the stream closed under it raised
            finally:
                timer.cancel()
                _close(stream)
        late = late or time.monotonic() > until
        text = tail.text()
        if late:
            text += "\n... (the output was cut: reading it went past the run's timeout)\n"
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
            children = psutil.Process(pid).children(recursive=True)
            if not children:
                return False
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)
            return True
        except (psutil.Error, OSError):  # not our pid namespace, or no permission
            return False

    def kill(self, container: Any) -> None:
        with contextlib.suppress(Exception):
            container.kill()

    def remove(self, container: Any) -> None:
        """Remove one container now (by id) and forget it once it is gone; never raises.
        One the engine did not remove (busy, slow to kill it) stays for `cleanup`."""
        if self._remove(container.id) and container.name in self.created:
            self.created.remove(container.name)

    def _remove(self, ref: str) -> bool:
        """Ask the engine to remove `ref` (name or id); True once it is gone. The engine
        may answer late, refuse while it is still killing the container ("could not
        kill", "removal already in progress") or time out: only its absence counts."""
        import docker

        try:
            self.client.api.remove_container(ref, force=True, v=True)
            return True
        except docker.errors.NotFound:
            return True  # never created (interrupted before), or gone already
        except engine_failures() as exc:  # retried by cleanup, said if it stays
            self._remove_errors[ref] = str(exc)[:200]
        try:
            self.client.api.inspect_container(ref)
        except docker.errors.NotFound:
            return True
        except engine_failures():  # cannot tell: tried again
            pass
        return False

    def cleanup(self, deadline: float = REMOVE_DEADLINE) -> None:
        """Remove every container this runner created, and make sure they are gone: by
        their unique names, again and again while the engine is busy (a loaded host makes
        it slow to kill and remove), then whatever carries this runner's label (one whose
        create answer never came). Never raises; says on stderr what it could not remove
        within `deadline` seconds (the next run removes it)."""
        for sock in self._sockets:
            with contextlib.suppress(Exception):
                sock.close()
        self._sockets.clear()
        self._stdin.clear()
        until = time.monotonic() + deadline
        pause = 0.2
        while self.created:
            self.created = [ref for ref in self.created if not self._remove(ref)]
            if not self.created or time.monotonic() + pause > until:
                break
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
        with contextlib.suppress(Exception):
            late = self.client.api.containers(
                all=True, filters={"label": f"{RUNNER_LABEL}={self.runner_id}"})
            for c in late:
                if not self._remove(c["Id"]):
                    self.created.append(c["Id"])
        for ref in self.created:
            why = self._remove_errors.get(ref, "still there")
            print(f"tracer: warning: could not remove container {ref}: {why} "
                  "(the next run removes it)", file=sys.stderr)
        self.created.clear()


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
