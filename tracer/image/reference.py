"""Image references in skopeo's transport syntax (docs/profile.md, "Value types").

Operators write these in profiles and on the command line; parsing them once, strictly,
means every later stage can trust `transport`, `path`, `name` and `tag`.

This is the syntax half of a transport (the other half is its module, registered in
transports.py): a new one, like the registry's `docker://HOST/REPO[:TAG|@sha256:...]`
(issue 24, which also needs a digest field here), moves its name from
`_OTHER_TRANSPORTS` to `TRANSPORTS` and gets its case in `parse_reference`,
`ImageRef.__str__`, `same_place` and `default_output`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import BadInput

TRANSPORTS = ("docker-daemon", "docker-archive", "oci")
# Transports skopeo knows but tracer does not: naming them gives a clear error instead of
# silently treating "docker://x" as an engine image called "docker".
_OTHER_TRANSPORTS = ("docker", "containers-storage", "dir", "oci-archive", "ostree", "sif")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?/)"
_NAME_RE = re.compile(rf"^{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True)
class ImageRef:
    """One image location: where it lives (transport + path) and what it is called."""

    transport: str
    path: str | None
    name: str | None
    tag: str | None

    def __str__(self) -> str:
        named = ""
        if self.name:
            named = self.name + (f":{self.tag}" if self.tag else "")
        if self.transport == "docker-daemon":
            return f"docker-daemon:{named}"
        if self.transport == "docker-archive":
            return f"docker-archive:{self.path}" + (f":{named}" if named else "")
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")

    def same_place(self, other: ImageRef) -> bool:
        """Would writing `other` touch this image? (the same engine name, file or layout)

        Spelling differences do not count: `nginx`, `nginx:latest` and
        `docker.io/library/nginx:latest` are one engine image, and any tag of an OCI
        layout directory rewrites that directory.
        """
        if self.transport != other.transport:
            return False
        if self.transport == "docker-daemon":
            return _canonical_name(self.name) == _canonical_name(other.name) and \
                (self.tag or "latest") == (other.tag or "latest")
        return Path(self.path or "").resolve() == Path(other.path or "").resolve()

    @property
    def repo_tag(self) -> str | None:
        """`name:tag` as the engine and docker-archive manifests spell it (tag default latest)."""
        if not self.name:
            return None
        return f"{self.name}:{self.tag or 'latest'}"


def _canonical_name(name: str | None) -> str:
    """The engine's own spelling: Docker Hub's default registry and namespace dropped."""
    name = name or ""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name[len("library/"):] if name.startswith("library/") else name


def _split_name(text: str, whole: str) -> tuple[str, str | None]:
    """Split `NAME[:TAG]`; a colon before the last slash belongs to a registry port."""
    if "@" in text:
        raise BadInput(f"image reference {whole!r}: digest references (@sha256:...) are not "
                       "supported; use a tag")
    name, tag = text, None
    colon = text.rfind(":")
    if colon > text.rfind("/"):
        name, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.match(tag):
            raise BadInput(f"image reference {whole!r}: invalid tag {tag!r}")
    if not _NAME_RE.match(name):
        raise BadInput(f"image reference {whole!r}: invalid image name {name!r} (lowercase "
                       "letters, digits and separators . _ - /)")
    return name, tag


def parse_reference(text: str) -> ImageRef:
    """Parse `docker-daemon:NAME[:TAG]`, bare `NAME[:TAG]`, `docker-archive:PATH[:NAME[:TAG]]`
    or `oci:PATH[:TAG]`; raise BadInput naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput("image reference is empty")
    text = text.strip()
    transport, sep, rest = text.partition(":")
    if sep and transport in TRANSPORTS:
        if transport == "docker-daemon":
            name, tag = _split_name(rest, text)
            return ImageRef("docker-daemon", None, name, tag)
        path, _, named = rest.partition(":")
        if not path:
            raise BadInput(f"image reference {text!r}: {transport} needs a path")
        if transport == "docker-archive":
            if not named:
                return ImageRef("docker-archive", path, None, None)
            name, tag = _split_name(named, text)
            return ImageRef("docker-archive", path, name, tag)
        if named and not _TAG_RE.match(named):
            raise BadInput(f"image reference {text!r}: invalid OCI tag {named!r}")
        return ImageRef("oci", path, None, named or None)
    if sep and (transport in _OTHER_TRANSPORTS or rest.startswith("//")):
        raise BadInput(f"image reference {text!r}: transport {transport!r} is not supported "
                       f"(use one of {', '.join(TRANSPORTS)})")
    name, tag = _split_name(text, text)
    return ImageRef("docker-daemon", None, name, tag)


def default_output(ref: ImageRef) -> ImageRef:
    """The output a profile gets when it names none: same repo with tag `<tag>-min`, or a
    `-min` sibling of the archive file / layout directory. Never the input itself."""
    tag = f"{ref.tag or 'latest'}-min"
    if ref.transport == "docker-daemon":
        return ImageRef("docker-daemon", None, ref.name, tag)
    assert ref.path is not None
    p = Path(ref.path)
    if ref.transport == "docker-archive":
        out = p.with_name(f"{p.stem}-min{p.suffix or '.tar'}")
        return ImageRef("docker-archive", str(out), ref.name, tag if ref.name else None)
    out = p.with_name(f"{p.name}-min")
    return ImageRef("oci", str(out), None, ref.tag)
