"""Open an image reference as config + layer handles (the go-containerregistry `v1.Image`
idea): docker-archive and OCI layouts are read in place; an engine image is streamed with
`image.save()` into the work dir and then read as a docker-archive."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import posixpath
import re
import shutil
import tarfile
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError
from tracer.image.reference import ImageRef
from tracer.image.streams import DIGEST_RE, Layer, Region, sniff_compression

MAX_JSON = 16 << 20
_HEX_JSON = re.compile(r"^([0-9a-f]{64})\.json$")
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
OCI_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                   "application/vnd.docker.distribution.manifest.list.v2+json")
OCI_MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                      "application/vnd.docker.distribution.manifest.v2+json")
_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class ImageSource:
    """An opened image: its config, its layers bottom-first, and its config digest."""

    ref: ImageRef
    config: dict
    config_bytes: bytes
    digest: str
    layers: list[Layer]
    _cleanup: list[Path] = field(default_factory=list, repr=False)

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def keep_file(self, path: str, dest_dir: Path) -> str:
        """A copy of `path` in `dest_dir` that outlives this source, if `path` is one of its
        temp files (else `path` itself): a flattened image reads its content from the saved
        archive in place, after the source is closed. A hardlink, so nothing is copied; the
        source stays usable."""
        for p in self._cleanup:
            if str(p) == path:
                new = Path(dest_dir) / p.name
                try:
                    os.link(p, new)
                except OSError:  # another filesystem: copy (slow, but correct)
                    shutil.copyfile(p, new)
                return str(new)
        return path

    def close(self) -> None:
        """Remove temp files this source made in the work dir (never the input)."""
        for p in self._cleanup:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self._cleanup.clear()


def open_image(ref: ImageRef, workdir: Path) -> ImageSource:
    """Open `ref` for reading; raises BadInput/ImageFormatError/EnvironmentProblem."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if ref.transport == "docker-archive":
            return _open_docker_archive(ref, Path(ref.path or ""), workdir)
        if ref.transport == "oci":
            return _open_oci(ref, Path(ref.path or ""))
        if ref.transport == "docker-daemon":
            return _open_daemon(ref, workdir)
    except MALFORMED as exc:
        # An archive or layout is untrusted input: whatever a crafted one makes the
        # parsers raise (deep JSON nesting, a corrupt deflate stream, a non-object where
        # an object belongs, a huge declared size) is bad input naming it, not a crash.
        raise ImageFormatError(f"{ref}: malformed image ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None
    raise BadInput(f"unsupported transport {ref.transport!r}")


MALFORMED = (RecursionError, MemoryError, zlib.error, EOFError, tarfile.TarError,
             AttributeError, TypeError, KeyError, IndexError, ValueError)


def _parse_json(data: bytes, where: str) -> dict | list:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageFormatError(f"{where}: not valid JSON: {exc}") from exc


def _check_config(config: object, where: str, layer_count: int) -> list[str]:
    """Validate the bits of the config flattening relies on; return diff_ids."""
    if not isinstance(config, dict):
        raise ImageFormatError(f"{where}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
            isinstance(d, str) and DIGEST_RE.match(d) for d in diff_ids):
        raise ImageFormatError(f"{where}: rootfs.diff_ids missing or not sha256 digests")
    if len(diff_ids) != layer_count:
        raise ImageFormatError(f"{where}: config lists {len(diff_ids)} diff_ids but the "
                               f"manifest lists {layer_count} layers")
    return diff_ids


# ---------------------------------------------------------------- docker-archive


def _open_docker_archive(ref: ImageRef, path: Path, workdir: Path,
                         cleanup: list[Path] | None = None) -> ImageSource:
    cleanup = cleanup or []
    if not path.is_file():
        raise BadInput(f"docker-archive {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if sniff_compression(head) == "gzip":
        # A compressed outer tar cannot be read in place; decompress once into the work dir.
        plain = workdir / f"archive-{uuid.uuid4().hex[:12]}.tar"
        cleanup.append(plain)
        try:
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError) as exc:
            raise ImageFormatError(f"docker-archive {path}: corrupt gzip: {exc}") from exc
        path = plain
    where = f"docker-archive {ref.path}"
    members: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for ti in tf:
                name = posixpath.normpath(ti.name.lstrip("/"))
                if ti.isreg():
                    members[name] = (ti.offset_data, ti.size)
                elif ti.issym():
                    links[name] = posixpath.normpath(
                        posixpath.join(posixpath.dirname(name), ti.linkname))
                elif ti.islnk():
                    links[name] = posixpath.normpath(ti.linkname.lstrip("/"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageFormatError(f"{where}: not a readable tar archive: {exc}") from exc
    archive = os.path.abspath(path)

    def locate(name: str) -> tuple[int, int]:
        name = posixpath.normpath(name.lstrip("/"))
        for _ in range(8):  # docker save links duplicate layers to one copy
            if name in members:
                return members[name]
            if name not in links:
                break
            name = links[name]
        raise ImageFormatError(f"{where}: manifest.json names {name!r}, which is not in the "
                               "archive (missing blob)")

    def read_member(name: str) -> bytes:
        off, size = locate(name)
        if size > MAX_JSON:
            raise ImageFormatError(f"{where}: {name} is {size} bytes, too large for JSON")
        r = Region(archive, off, size)
        try:
            return r.read()
        finally:
            r.close()

    manifest = _parse_json(read_member("manifest.json"), f"{where}: manifest.json")
    if not isinstance(manifest, list) or not manifest or not all(
            isinstance(m, dict) for m in manifest):
        raise ImageFormatError(f"{where}: manifest.json is not a non-empty list of images")
    entry = _select_archive_image(manifest, ref, where)
    cfg_name = entry.get("Config")
    layer_names = entry.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layer_names, list) or not all(
            isinstance(n, str) for n in layer_names):
        raise ImageFormatError(f"{where}: manifest.json entry lacks Config/Layers")
    cfg_bytes = read_member(cfg_name)
    digest = "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()
    m = _HEX_JSON.match(posixpath.basename(cfg_name)) or _BLOB.match(cfg_name)
    if m and digest != f"sha256:{m.group(1)}":
        raise ImageFormatError(f"{where}: digest mismatch: config {cfg_name} hashes to {digest}")
    config = _parse_json(cfg_bytes, f"{where}: {cfg_name}")
    diff_ids = _check_config(config, f"{where}: {cfg_name}", len(layer_names))
    layers = []
    for i, lname in enumerate(layer_names):
        off, size = locate(lname)
        bm = _BLOB.match(posixpath.normpath(lname))
        layers.append(Layer(
            i, f"{where}: layer {i} ({lname})",
            lambda off=off, size=size: Region(archive, off, size),
            diff_id=diff_ids[i], blob_digest=f"sha256:{bm.group(1)}" if bm else None,
            blob_size=size, location=(archive, off)))
    assert isinstance(config, dict)
    return ImageSource(ref, config, cfg_bytes, digest, layers, cleanup)


def _select_archive_image(manifest: list, ref: ImageRef, where: str) -> dict:
    if ref.name:
        wanted = {ref.repo_tag, f"docker.io/{ref.repo_tag}", f"docker.io/library/{ref.repo_tag}"}
        for m in manifest:
            if wanted & set(m.get("RepoTags") or []):
                return m
        raise BadInput(f"{where}: no image tagged {ref.repo_tag} (has: "
                       f"{[t for m in manifest for t in (m.get('RepoTags') or [])]})")
    if len(manifest) != 1:
        raise BadInput(f"{where}: holds {len(manifest)} images; name one as "
                       "docker-archive:PATH:NAME:TAG")
    return manifest[0]


# ---------------------------------------------------------------- OCI layout


def _blob_path(root: Path, digest: object, where: str) -> Path:
    # The digest comes from untrusted JSON and becomes a path: accept only sha256 hex.
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ImageFormatError(f"{where}: invalid digest {digest!r}")
    p = root / "blobs" / "sha256" / digest[7:]
    if not p.is_file():
        raise ImageFormatError(f"{where}: blob {digest} is missing ({p})")
    return p


def _read_blob(root: Path, desc: object, where: str) -> bytes:
    if not isinstance(desc, dict):
        raise ImageFormatError(f"{where}: descriptor is not an object")
    p = _blob_path(root, desc.get("digest"), where)
    if p.stat().st_size > MAX_JSON:
        raise ImageFormatError(f"{where}: blob {desc['digest']} too large for JSON")
    data = p.read_bytes()
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != desc["digest"]:
        raise ImageFormatError(f"{where}: digest mismatch: blob {desc['digest']} hashes to {got}")
    if isinstance(desc.get("size"), int) and desc["size"] != len(data):
        raise ImageFormatError(f"{where}: blob {desc['digest']} is {len(data)} bytes, the "
                               f"descriptor says {desc['size']}")
    return data


def _host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return "linux", arch


def _open_oci(ref: ImageRef, root: Path) -> ImageSource:
    where = f"oci layout {root}"
    if not (root / "index.json").is_file():
        raise BadInput(f"{where}: no index.json (not an OCI image layout)")
    index = _parse_json((root / "index.json").read_bytes(), f"{where}: index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise ImageFormatError(f"{where}: index.json has no manifests")
    if ref.tag:
        found = [d for d in manifests if isinstance(d, dict)
                 and (d.get("annotations") or {}).get(_REF_NAME) == ref.tag]
        if not found:
            names = [(d.get("annotations") or {}).get(_REF_NAME) for d in manifests
                     if isinstance(d, dict)]
            raise BadInput(f"{where}: no manifest tagged {ref.tag!r} (has: {names})")
        desc = found[0]
    elif len(manifests) == 1:
        desc = manifests[0]
    else:
        raise BadInput(f"{where}: holds {len(manifests)} manifests; name one as oci:PATH:TAG")
    for _ in range(4):  # nested indexes: pick the host platform
        if not isinstance(desc, dict) or desc.get("mediaType") not in OCI_INDEX_TYPES:
            break
        sub = _parse_json(_read_blob(root, desc, where), f"{where}: index {desc['digest']}")
        os_, arch = _host_platform()
        cands = [d for d in (sub.get("manifests") or []) if isinstance(d, dict)
                 and (d.get("platform") or {}).get("os") == os_
                 and (d.get("platform") or {}).get("architecture") == arch]
        if not cands:
            raise ImageFormatError(f"{where}: index {desc['digest']} has no {os_}/{arch} image")
        desc = cands[0]
    mwhere = f"{where}: manifest {desc.get('digest') if isinstance(desc, dict) else desc}"
    manifest = _parse_json(_read_blob(root, desc, where), mwhere)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise ImageFormatError(f"{mwhere}: not an image manifest")
    cfg_desc = manifest.get("config")
    cfg_bytes = _read_blob(root, cfg_desc, mwhere)
    config = _parse_json(cfg_bytes, f"{mwhere}: config")
    diff_ids = _check_config(config, f"{mwhere}: config", len(manifest["layers"]))
    layers = []
    for i, ld in enumerate(manifest["layers"]):
        lwhere = f"{mwhere}: layer {i}"
        if not isinstance(ld, dict):
            raise ImageFormatError(f"{lwhere}: descriptor is not an object")
        p = _blob_path(root, ld.get("digest"), lwhere)
        lwhere = f"{lwhere} ({ld['digest']})"
        size = ld.get("size") if isinstance(ld.get("size"), int) else None
        layers.append(Layer(i, lwhere, lambda p=p: open(p, "rb"),  # noqa: SIM115
                            diff_id=diff_ids[i], blob_digest=ld["digest"], blob_size=size,
                            media_type=ld.get("mediaType"), location=(os.path.abspath(p), 0)))
    assert isinstance(config, dict) and isinstance(cfg_desc, dict)
    return ImageSource(ref, config, cfg_bytes, cfg_desc["digest"], layers)


# ---------------------------------------------------------------- engine


def _open_daemon(ref: ImageRef, workdir: Path) -> ImageSource:
    import docker

    from tracer.image.engine import engine_client

    client = engine_client()
    try:
        image = client.images.get(ref.repo_tag)
    except docker.errors.ImageNotFound as exc:
        raise BadInput(f"image {ref} is not in the Docker engine") from exc
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"Docker engine error looking up {ref}: {exc}") from exc
    tmp = workdir / f"saved-{image.id.split(':')[-1][:12]}-{uuid.uuid4().hex[:8]}.tar"
    try:
        with open(tmp, "wb") as f:
            for chunk in image.save(chunk_size=1 << 20, named=False):
                f.write(chunk)
        src = _open_docker_archive(ImageRef("docker-archive", str(tmp), None, None), tmp,
                                   workdir, [tmp])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    src.ref = ref
    if src.digest != image.id:
        src.close()
        raise ImageFormatError(f"{ref}: saved config hashes to {src.digest}, engine says "
                               f"{image.id}")
    for layer in src.layers:
        layer.where = layer.where.replace(f"docker-archive {tmp}", str(ref))
    return src
