"""Platforms (OS/ARCH[/VARIANT]) of multi-platform images, and which ones this host runs.

An image index (OCI) or manifest list (Docker) names one image per platform; a run reads
exactly one of them, chosen with `--platform` (default: the engine's own). The spelling
is the OCI image index's `platform` object and `docker --platform`'s text:
`linux/amd64`, `linux/arm64`, `linux/arm/v7`.

Which platforms the engine can run decides what `--all-platforms` can minimize (each
one's smoke test must run): the engine's own architecture; i386 on an amd64 kernel with
32-bit emulation (it runs natively, no emulator); and any other whose ELF machine has a
binfmt_misc handler registered with the F (fix-binary) flag, which is how qemu-user
emulation reaches into containers (a handler without F names an interpreter path that
does not exist inside the container's root).
"""

from __future__ import annotations

import os
import platform as host
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.engine import connect
from tracer.errors import BadInput, EnvironmentProblem

_WORD = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")

# `uname -m` (and `docker info` Architecture) to the OCI architecture (and variant)
_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None),
    "s390x": ("s390x", None), "ppc64le": ("ppc64le", None), "riscv64": ("riscv64", None),
    "mips64": ("mips64", None),
}

# ELF e_machine (and class: 1 = 32-bit, 2 = 64-bit) of a binfmt_misc magic -> OCI arch
_ELF_MACHINES = {
    (62, 2): "amd64", (3, 1): "386", (183, 2): "arm64", (40, 1): "arm",
    (22, 2): "s390x", (21, 2): "ppc64le", (243, 2): "riscv64", (8, 2): "mips64",
}

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True, order=True)
class Platform:
    """One platform of an image: `os`, `architecture` and (arm) `variant`."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def matches(self, other: Platform) -> bool:
        """Does a descriptor's platform `other` serve this wanted one? A wanted platform
        without a variant takes any variant (`linux/arm` is `linux/arm/v7` on a v7 index)."""
        return (self.os, self.architecture) == (other.os, other.architecture) and \
            (self.variant is None or self.variant == other.variant)

    @property
    def slug(self) -> str:
        """A file-name form: `linux-arm64-v8`."""
        return str(self).replace("/", "-")


def parse_platform(text: str, where: str = "--platform") -> Platform:
    """`OS/ARCH[/VARIANT]`, lowercase; BadInput naming `where` otherwise."""
    parts = text.strip().split("/") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(_WORD.match(p) for p in parts):
        raise BadInput(f"{where} {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or "
                       "linux/arm/v7")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def of_descriptor(desc: dict[str, Any]) -> Platform | None:
    """The platform an index entry declares (None when it declares none, or an odd one)."""
    p = desc.get("platform")
    if not isinstance(p, dict):
        return None
    os_, arch, variant = p.get("os"), p.get("architecture"), p.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return None
    return Platform(os_[:64], arch[:64], variant[:64] if isinstance(variant, str) and variant
                    else None)


def of_config(config: dict[str, Any]) -> Platform | None:
    """The platform an image config declares (`os`, `architecture`, `variant`)."""
    os_, arch, variant = config.get("os"), config.get("architecture"), config.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    return Platform(os_, arch, variant if isinstance(variant, str) and variant else None)


def from_machine(machine: str, os_: str = "linux") -> Platform:
    arch, variant = _MACHINES.get(machine.lower(), (machine.lower(), None))
    return Platform(os_.lower() or "linux", arch, variant)


def host_platform() -> Platform:
    """This machine's platform (the kernel's, as `uname -m` says)."""
    return from_machine(host.machine())


def engine_platform() -> Platform:
    """The platform the Docker engine runs natively (`docker info`); this host's when no
    engine answers (a registry image can be read without one: `tracer ldd`, `init`)."""
    try:
        info = connect().info()  # asked once per process
    except EnvironmentProblem:
        return host_platform()
    if not isinstance(info, dict) or not isinstance(info.get("Architecture"), str):
        return host_platform()
    os_ = info.get("OSType") if isinstance(info.get("OSType"), str) else "linux"
    return from_machine(info["Architecture"], os_)


@dataclass(frozen=True)
class Runnable:
    """What this host can run: `native` platforms and, per emulated architecture, the
    binfmt_misc handler that runs it (said in the report)."""

    native: tuple[Platform, ...]
    emulated: dict[str, str]  # architecture -> "binfmt_misc qemu-aarch64 (/usr/bin/qemu-...)"
    # what stood in the way: (architecture, or None for all of them; the reason)
    notes: tuple[tuple[str | None, str], ...] = ()
    binfmt_dir: Path = BINFMT_DIR

    def why_not(self, p: Platform) -> str | None:
        """None when `p` can run here, else the reason it cannot."""
        if p.os != "linux":
            return f"{p}: the engine runs linux images only"
        if any(n.os == p.os and n.architecture == p.architecture for n in self.native):
            return None
        if p.architecture in self.emulated:
            return None
        about = "; ".join(text for arch, text in self.notes
                          if arch in (None, p.architecture))
        return (f"{p}: this host cannot run {p.architecture} programs: no binfmt_misc handler "
                f"with the F flag for it in {self.binfmt_dir}"
                + (f" ({about})" if about else "")
                + f" (install qemu-user-static, which registers them, or run on an "
                  f"{p.architecture} host)")

    def describe(self, p: Platform) -> str:
        """How `p` runs here, for the report."""
        if any(n.architecture == p.architecture for n in self.native):
            return "native"
        return self.emulated.get(p.architecture, "cannot run here")


def runnable(engine: Platform, binfmt_dir: Path = BINFMT_DIR,
             abi_dir: Path = Path("/proc/sys/abi")) -> Runnable:
    """The platforms the engine on this host can run (see the module's docstring)."""
    native = [engine]
    if engine.architecture == "amd64" and (abi_dir / "vsyscall32").exists():
        native.append(Platform(engine.os, "386"))  # the kernel's 32-bit emulation
    emulated: dict[str, str] = {}
    notes: list[tuple[str | None, str]] = []
    try:
        names = sorted(os.listdir(binfmt_dir))
    except OSError:
        names = []
        notes.append((None, f"{binfmt_dir} is not mounted"))
    if names and _read(binfmt_dir / "status") == "disabled":
        names = []
        notes.append((None, "binfmt_misc is disabled"))
    for name in names:
        if name in ("status", "register"):
            continue
        fields = _binfmt_entry(binfmt_dir / name)
        if fields is None:
            continue
        arch, enabled, flags, interpreter = fields
        if arch is None or any(n.architecture == arch for n in native):
            continue
        if not enabled:
            notes.append((arch, f"handler {name} for {arch} is disabled"))
        elif "F" not in flags:
            notes.append((arch, f"handler {name} for {arch} lacks the F flag (its "
                          f"interpreter {interpreter} is not inside containers)"))
        else:
            emulated.setdefault(arch, f"emulated by binfmt_misc {name} ({interpreter})")
    return Runnable(tuple(native), emulated, tuple(notes), binfmt_dir)


def _read(path: Path) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return ""


def _binfmt_entry(path: Path) -> tuple[str | None, bool, str, str] | None:
    """(OCI arch of the ELF machine it handles, enabled, flags, interpreter) of one
    binfmt_misc entry; None when it is not an ELF magic entry."""
    text = _read(path)
    if not text:
        return None
    lines = text.splitlines()
    enabled = bool(lines) and lines[0] == "enabled"
    values = dict(line.split(" ", 1) if " " in line else (line, "") for line in lines[1:])
    magic = values.get("magic", "")
    flags = values.get("flags:", "")
    try:
        raw = bytes.fromhex(magic)
    except ValueError:
        return None
    if values.get("offset", "0") != "0" or len(raw) < 20 or raw[:4] != b"\x7fELF":
        return None
    little = raw[5] == 1
    machine = int.from_bytes(raw[18:20], "little" if little else "big")
    arch = _ELF_MACHINES.get((machine, raw[4]))
    if arch == "ppc64le" and not little:
        arch = "ppc64"
    return arch, enabled, flags, values.get("interpreter", "")
