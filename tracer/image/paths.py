"""Normalizing untrusted tar member names exactly the way Docker's layer applier does."""

from __future__ import annotations

import posixpath

from tracer.errors import ImageFormatError


def member_path(name: str, where: str) -> str:
    """Absolute in-image path of a member name.

    Docker cleans the name on its own (`filepath.Clean`): a leading `/` or `./` is dropped,
    `..` at the root of an absolute name stays at the root, and a relative name that climbs
    above the root is a breakout error.
    """
    if name and name[0] not in "/." and "//" not in name and "/." not in name \
            and "\0" not in name:
        return "/" + name.rstrip("/") if name.endswith("/") else "/" + name  # already clean
    if "\0" in name:
        raise ImageFormatError(f"{where}: member {name!r}: NUL byte in name")
    if name.startswith("/"):
        return posixpath.normpath("/" + name.lstrip("/"))
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise ImageFormatError(f"{where}: member {name!r}: path escapes the image root (..)")
    return "/" if cleaned == "." else "/" + cleaned


def link_target_path(linkname: str, member: str, where: str) -> str:
    """Absolute in-image path a hardlink points to.

    Docker joins the link name onto the root and refuses anything that is then outside it,
    so `..` above the root is an error even for an absolute link name.
    """
    parts: list[str] = []
    for comp in linkname.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise ImageFormatError(f"{where}: member {member!r}: hardlink target "
                                       f"{linkname!r} points outside the image root")
            parts.pop()
        else:
            parts.append(comp)
    if not parts:
        raise ImageFormatError(f"{where}: member {member!r}: hardlink to the image root")
    return "/" + "/".join(parts)


def join(parent: str, name: str) -> str:
    return parent + name if parent == "/" else f"{parent}/{name}"


def split(path: str) -> tuple[str, str]:
    i = path.rfind("/")
    return (path[:i] or "/", path[i + 1:])
