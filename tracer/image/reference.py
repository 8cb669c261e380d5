"""Image references in skopeo's transport syntax (docs/profile.md, "Value types").

Operators write these in profiles and on the command line; parsing them once, strictly,
means every later stage can trust `transport`, `path`, `name`, `tag` and `digest`.

This is the syntax half of a transport (the other half is its module, registered in
transports.py): a new one moves its name from `_OTHER_TRANSPORTS` to `TRANSPORTS` and
gets its case in `parse_reference`, `ImageRef.__str__`, `same_place` and
`default_output`. The registry's is `docker://NAME[:TAG]` or `docker://NAME@sha256:HEX`
(skopeo's spelling; NAME is `HOST[:PORT]/REPO`, and a NAME without a host is Docker Hub's,
as every container tool reads it).

What the command line says about reaching a registry and choosing one image of a
multi-platform one (`--tls-verify`, `--cert-dir`, `--platform`) travels with the
reference as `RefOptions`: not part of its text, its identity or its equality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracer.errors import BadInput
from tracer.image.platforms import Platform

TRANSPORTS = ("docker-daemon", "docker-archive", "oci", "docker")
# Transports skopeo knows but tracer does not: naming them gives a clear error instead of
# silently treating "dir:x" as an engine image called "dir".
_OTHER_TRANSPORTS = ("containers-storage", "dir", "oci-archive", "ostree", "sif", "tarball")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?/)"
_NAME_RE = re.compile(rf"^{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class RefOptions:
    """How to reach and choose the image a reference names (the command line's
    `--tls-verify`, `--cert-dir`, `--platform`): for registries, and for images that hold
    one image per platform. Defaults are safe: TLS verified, the engine's platform."""

    tls_verify: bool = True
    cert_dir: str | None = None
    platform: Platform | None = None  # None: the engine's own


@dataclass(frozen=True)
class ImageRef:
    """One image location: where it lives (transport + path) and what it is called."""

    transport: str
    path: str | None
    name: str | None
    tag: str | None
    digest: str | None = None  # docker://NAME@sha256:...: the manifest (or index) digest
    options: RefOptions = field(default=RefOptions(), compare=False, repr=False)

    def with_options(self, options: RefOptions) -> ImageRef:
        return replace(self, options=options)

    def pinned(self, digest: str) -> ImageRef:
        """This registry image by `digest` (what its tag names now), options kept."""
        return replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        named = ""
        if self.name:
            named = self.name + (f":{self.tag}" if self.tag else "")
        if self.transport == "docker":
            return f"docker://{named}" + (f"@{self.digest}" if self.digest else "")
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
        if self.transport == "docker":  # a tag, or a manifest by digest, of one repository
            return _canonical_name(self.name) == _canonical_name(other.name) and \
                (self.tag or ("" if self.digest else "latest"), self.digest) == \
                (other.tag or ("" if other.digest else "latest"), other.digest)
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


def _split_remote(text: str, whole: str) -> tuple[str, str | None, str | None]:
    """Split the `NAME[:TAG]` or `NAME@sha256:HEX` of `docker://` (not both: skopeo and
    the registry API take one or the other)."""
    named, at, digest = text.partition("@")
    if not at:
        return (*_split_name(text, whole), None)
    if not _DIGEST_RE.match(digest):
        raise BadInput(f"image reference {whole!r}: invalid digest {digest[:80]!r} (expected "
                       "sha256: and 64 lowercase hex digits)")
    name, tag = _split_name(named, whole)
    if tag is not None:
        raise BadInput(f"image reference {whole!r}: name a tag or a digest, not both")
    return name, None, digest


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
    """Parse `docker-daemon:NAME[:TAG]`, bare `NAME[:TAG]`, `docker-archive:PATH[:NAME[:TAG]]`,
    `oci:PATH[:TAG]` or `docker://NAME[:TAG|@sha256:HEX]`; raise BadInput naming what is
    wrong."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput("image reference is empty")
    text = text.strip()
    transport, sep, rest = text.partition(":")
    if sep and transport == "docker":
        if not rest.startswith("//") or len(rest) == 2:
            raise BadInput(f"image reference {text!r}: a registry image is "
                           "docker://HOST/REPO:TAG or docker://HOST/REPO@sha256:...")
        name, tag, digest = _split_remote(rest[2:], text)
        return ImageRef("docker", None, name, tag, digest)
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
    if ref.transport == "docker":  # by digest: a tag naming the digest it came from
        tag = f"{ref.tag}-min" if ref.tag else f"sha256-{(ref.digest or '')[7:19]}-min"
        return ImageRef("docker", None, ref.name, tag, options=ref.options)
    assert ref.path is not None
    p = Path(ref.path)
    if ref.transport == "docker-archive":
        out = p.with_name(f"{p.stem}-min{p.suffix or '.tar'}")
        return ImageRef("docker-archive", str(out), ref.name, tag if ref.name else None)
    out = p.with_name(f"{p.name}-min")
    return ImageRef("oci", str(out), None, ref.tag)
