"""The image's run configuration as typed data, and the one rule for what a container runs.

Both the OCI image config (its `config` object) and the engine's `docker image inspect`
(`Config`) carry the same fields. They are untrusted input: a `config` that is a string,
an `Env` holding a number or a `Cmd` that is a dict is a malformed image (exit 2), said
once here instead of crashing wherever a field is used.

`ImageConfig.command()` is Docker's rule for combining a profile's entrypoint/cmd with the
image's; static analysis roots, `tracer ldd` and the container runner all use it, so what
is analysed is exactly what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracer.errors import ImageFormatError


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config a run and the minimized image need."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # in the image's order
    user: str = ""
    workdir: str = ""
    exposed_ports: list[str] = field(default_factory=list)  # "8080/tcp"
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: list[str] = field(default_factory=list)  # Test: ["CMD", ...] or ["CMD-SHELL", s]

    @classmethod
    def parse(cls, cfg: object, where: str) -> ImageConfig:
        """From the OCI config's `config` object or inspect's `Config` (None: empty)."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, dict):
            raise ImageFormatError(f"{where}: the image config's `config` is "
                                   f"{type(cfg).__name__}, expected an object")
        env: dict[str, str] = {}
        for item in _strings(cfg, "Env", where):
            key, _, value = item.partition("=")
            env[key] = value
        health = cfg.get("Healthcheck")
        if health is not None and not isinstance(health, dict):
            raise ImageFormatError(f"{where}: config.Healthcheck is not an object")
        return cls(
            entrypoint=_strings(cfg, "Entrypoint", where),
            cmd=_strings(cfg, "Cmd", where),
            env=env,
            user=_string(cfg, "User", where),
            workdir=_string(cfg, "WorkingDir", where),
            exposed_ports=sorted(_keys(cfg, "ExposedPorts", where)),
            volumes=sorted(_keys(cfg, "Volumes", where)),
            labels=_string_map(cfg, "Labels", where),
            stop_signal=_string(cfg, "StopSignal", where),
            healthcheck=_strings(health or {}, "Test", where),
        )

    @classmethod
    def from_image_json(cls, config: object, where: str) -> ImageConfig:
        """From a whole OCI image config document (the `config` object inside it)."""
        if not isinstance(config, dict):
            raise ImageFormatError(f"{where}: the image config is not a JSON object")
        return cls.parse(config.get("config"), where)

    def command(self, entrypoint: list[str] | None, cmd: list[str] | None) -> list[str]:
        """What a container runs, by Docker's rule: a given entrypoint replaces the image's
        and drops the image's Cmd; a given cmd replaces the image's Cmd."""
        if entrypoint is not None:
            return [*entrypoint, *(cmd if cmd is not None else [])]
        return [*self.entrypoint, *(cmd if cmd is not None else self.cmd)]

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The image's Env with `extra` (the profile's env) merged over it."""
        return {**self.env, **(extra or {})}


def _strings(cfg: dict[str, Any], key: str, where: str) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if isinstance(value, str) and key in ("Entrypoint", "Cmd"):
        return [value]  # old engines wrote a bare string; Docker reads it as one argument
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageFormatError(f"{where}: config.{key} must be a list of strings, got "
                               f"{str(value)[:80]!r}")
    return list(value)


def _string(cfg: dict[str, Any], key: str, where: str) -> str:
    value = cfg.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageFormatError(f"{where}: config.{key} must be a string, got "
                               f"{str(value)[:80]!r}")
    return value


def _keys(cfg: dict[str, Any], key: str, where: str) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ImageFormatError(f"{where}: config.{key} must be an object")
    return [str(k) for k in value]


def _string_map(cfg: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageFormatError(f"{where}: config.{key} must map names to strings")
    return {str(k): v for k, v in value.items()}
