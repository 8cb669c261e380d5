"""The Docker engine side of a smoke run: containers created, started, stopped and removed.

Every container is created here and remembered by id, so `cleanup()` can remove all of
them on success, failure and Ctrl-C alike. The profile's `run:` section and the image's
config are combined here into one `ContainerSpec`, the same for traced and untraced runs
except for the strace wrapper, the bundle mounts and CAP_SYS_PTRACE.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import BadInput, EnvironmentProblem
from tracer.image.config import ImageConfig
from tracer.profile_model import RunSpec


class StartFailed(Exception):
    """The engine could not start the container's process (e.g. its entrypoint is missing)."""


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
    binds: dict[str, tuple[str, bool]] = field(default_factory=dict)  # target -> (src, ro)
    cap_add: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # lets an operator find leftovers


def connect() -> Any:
    """The process's docker SDK client (tracer.engine: one client, a deadline per call)."""
    from tracer.engine import connect as engine

    return engine().sdk


def image_config(client: Any, image: str) -> ImageConfig:
    """Read the image's config from the engine; BadInput if the engine does not have it."""
    import docker

    try:
        attrs = client.images.get(image).attrs
    except docker.errors.ImageNotFound as exc:
        raise BadInput(f"image {image!r} is not in the Docker engine") from exc
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"the Docker engine failed to inspect {image!r}: {exc}") from exc
    return ImageConfig.parse(attrs.get("Config"), f"image {image}")


def effective_argv(run: RunSpec, cfg: ImageConfig, image: str) -> list[str]:
    """What the container runs (ImageConfig.command: Docker's rule); BadInput if nothing."""
    argv = cfg.command(run.entrypoint, run.cmd)
    if not argv:
        raise BadInput(f"image {image!r} has no Entrypoint or Cmd and the profile sets neither")
    return argv


class DockerRunner:
    """Creates containers and remembers them so that all are removed, whatever happens."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.created: list[str] = []

    def create(self, spec: ContainerSpec) -> Any:
        import docker

        mounts = [
            docker.types.Mount(target, src, type="bind", read_only=ro)
            for target, (src, ro) in spec.binds.items()
        ]
        # Named and remembered BEFORE the engine is asked: if the answer never arrives
        # (Ctrl-C, a failed inspect inside the SDK), cleanup still removes it by name.
        name = f"tracer-{uuid.uuid4().hex[:16]}"
        self.created.append(name)
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
                tmpfs={p: "" for p in spec.tmpfs},
                mounts=mounts,
                cap_add=spec.cap_add or None,
                labels=spec.labels,
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise BadInput(f"image {spec.image!r} is not in the Docker engine") from exc
        except docker.errors.APIError as exc:
            raise EnvironmentProblem(
                f"the Docker engine refused to create a container: {exc}"
            ) from exc
        return container

    def start(self, container: Any) -> None:
        """Start; StartFailed when the runtime cannot start the process (a missing entrypoint
        in a minimized image is the application's failure, not the environment's)."""
        import docker

        try:
            container.start()
        except docker.errors.APIError as exc:
            msg = str(exc.explanation or exc)
            raise StartFailed(f"the container did not start: {msg}") from exc

    def status(self, container: Any) -> tuple[str, int | None]:
        """(state, exit code if exited) from a fresh inspect."""
        container.reload()
        state = container.attrs.get("State") or {}
        status = state.get("Status", "")
        return status, (state.get("ExitCode") if status in ("exited", "dead") else None)

    def wait(self, container: Any, timeout: float) -> int | None:
        """Exit code, or None after `timeout` seconds (the container keeps running)."""
        deadline = time.monotonic() + max(timeout, 0)
        pause = 0.01  # back off to 100 ms: a short job is noticed as soon as it ends
        while True:
            status, code = self.status(container)
            if code is not None:
                return code
            if time.monotonic() >= deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def logs(self, container: Any, *, stdout: bool = True, stderr: bool = True) -> str:
        try:
            data = container.logs(stdout=stdout, stderr=stderr)
        except Exception:  # noqa: BLE001 - a vanished container simply has no more logs
            return ""
        return data.decode("utf-8", "replace")

    def stop(self, container: Any, *, traced: bool, grace: float = 5.0) -> int | None:
        """Stop gracefully so strace can flush its trace, then kill after `grace` seconds.

        With strace as PID 1, `docker stop` would signal strace, which blocks fatal
        signals and is then SIGKILLed with its buffer unwritten. So the application (the
        children of PID 1, seen from the engine's host) gets SIGTERM; strace then exits
        on its own when the last tracee is gone. Untraced, or where the host pids cannot be
        signalled (not root, remote engine), SIGTERM goes to PID 1 as `docker stop` does.
        """
        status, code = self.status(container)
        if code is not None:
            return code
        pid = (container.attrs.get("State") or {}).get("Pid") or 0
        if not (traced and self._signal_tree(pid, signal.SIGTERM)):
            with contextlib.suppress(Exception):
                container.kill(signal="SIGTERM")
        code = self.wait(container, grace)
        if code is None and traced and self._signal_tree(pid, signal.SIGKILL):
            code = self.wait(container, 3)  # strace sees its tracees die and flushes
        if code is None:
            with contextlib.suppress(Exception):
                container.kill()
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
        """Remove every container this runner created (by its unique name); never raises."""
        while self.created:
            cid = self.created[-1]  # forgotten only once its removal was attempted
            with contextlib.suppress(Exception):
                self.client.api.remove_container(cid, force=True, v=True)
            self.created.pop()
