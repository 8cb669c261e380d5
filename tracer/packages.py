"""The files an image's package database lists for a package (keep.packages).

Operators name packages (tzdata, ca-certificates) when they know an application needs
all of a package's data even if one smoke test touches only part of it. Both Debian's
dpkg database and Alpine's apk database are read from the image itself, never the host.
"""

from __future__ import annotations

from collections.abc import Iterable

from tracer.errors import BadInput
from tracer.rootfs import RootFS

DPKG_INFO = "/var/lib/dpkg/info"
APK_INSTALLED = "/lib/apk/db/installed"


def _read_text(root: RootFS, path: str) -> str | None:
    if not root.is_file(path):
        return None
    with root.open(path) as f:
        return f.read().decode("utf-8", errors="surrogateescape")


def _dpkg_lists(root: RootFS, name: str) -> list[str] | None:
    """Paths of `name` from dpkg's .list file (plain or `name:arch`), None if absent."""
    if not root.is_dir(DPKG_INFO):
        return None
    candidates = [f"{name}.list"] + sorted(
        n for n in root.listdir(DPKG_INFO) if n.startswith(f"{name}:") and n.endswith(".list")
    )
    for candidate in candidates:
        text = _read_text(root, f"{DPKG_INFO}/{candidate}")
        if text is not None:
            return [line for line in text.splitlines() if line.startswith("/") and line != "/."]
    return None


def _apk_lists(root: RootFS, name: str) -> list[str] | None:
    """Paths of `name` from apk's installed database (P: package, F: dir, R: file)."""
    text = _read_text(root, APK_INSTALLED)
    if text is None:
        return None
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if f"P:{name}" not in lines:
            continue
        paths: list[str] = []
        directory = ""
        for line in lines:
            if line.startswith("F:"):
                directory = line[2:]
                paths.append("/" + directory)
            elif line.startswith("R:"):
                paths.append(f"/{directory}/{line[2:]}" if directory else f"/{line[2:]}")
        return paths
    return None


def package_files(root: RootFS, names: Iterable[str]) -> dict[str, list[str]]:
    """Map each package name to the paths its database lists; unknown packages are an error.

    An unknown package is bad input (exit 2) rather than a silent no-op: a profile that
    asks to keep a package the image does not have is almost certainly a typo or the
    wrong image, and a nightly job should say so.
    """
    out: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in names:
        paths = _dpkg_lists(root, name)
        if paths is None:
            paths = _apk_lists(root, name)
        if paths is None:
            unknown.append(name)
        else:
            out[name] = paths
    if unknown:
        raise BadInput(
            "keep.packages: not installed in the image (no dpkg .list file nor apk entry): "
            + ", ".join(unknown)
        )
    return out
