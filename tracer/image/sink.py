"""Write a flattened subset as a one-layer image that keeps the original config.

Outputs are atomic: a docker-archive is written to a temp name beside the target and
`os.replace`d; an OCI layout is built in a temp dir beside the target and swapped in; an
engine output is a docker-archive in the work dir that is `docker load`ed. A failure
removes the temp and leaves any previous output as it was. The layer is hashed while it is
written (one pass over the content).
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from tracer.errors import BadInput, EnvironmentProblem
from tracer.image.layerwrite import LayerStats, closed_paths, write_layer
from tracer.image.model import FlatImage
from tracer.image.reference import ImageRef

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class WrittenImage:
    """What was written: where, its image id (config digest), and the layer's numbers."""

    ref: ImageRef
    image_id: str
    layer_digest: str
    layer_size: int
    file_count: int
    manifest_digest: str | None = None


def build_config(base: dict, diff_id: str, comment: str, source_digest: str) -> dict:
    """The original config with rootfs pointing at the one new layer.

    Env, Entrypoint, Cmd, User, WorkingDir, ExposedPorts, Volumes, Labels, StopSignal,
    Healthcheck, architecture and os are carried over untouched; the old history stays for
    provenance but is marked empty_layer so history and rootfs still agree.
    """
    cfg = copy.deepcopy(base)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cfg["created"] = now
    cfg["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    history = [dict(h, empty_layer=True) for h in base.get("history") or []
               if isinstance(h, dict)]
    history.append({"created": now, "created_by": comment,
                    "comment": f"tracer: minimized from {source_digest}"})
    cfg["history"] = history
    return cfg


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _tar_member(out: BinaryIO, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    out.write(ti.tobuf(tarfile.GNU_FORMAT))
    out.write(data)
    out.write(bytes((-len(data)) % tarfile.BLOCKSIZE))


def write_docker_archive(flat: FlatImage, paths: list[str], dest: Path, repo_tag: str | None,
                         comment: str, base_config: dict) -> tuple[str, LayerStats]:
    """Write the docker-archive at the temp path `dest` (caller renames). The layer is
    streamed right after a placeholder header that is patched once its digest and size are
    known, so the content is written exactly once."""
    with open(dest, "wb") as f:
        f.write(bytes(tarfile.BLOCKSIZE))
        stats = write_layer(flat, paths, f)
        f.write(bytes((-stats.size) % tarfile.BLOCKSIZE))
        end = f.tell()
        layer_name = f"{stats.diff_id[7:]}/layer.tar"
        ti = tarfile.TarInfo(layer_name)
        ti.size = stats.size
        ti.mode = 0o644
        header = ti.tobuf(tarfile.GNU_FORMAT)
        assert len(header) == tarfile.BLOCKSIZE
        f.seek(0)
        f.write(header)
        f.seek(end)
        cfg_bytes = _json_bytes(build_config(base_config, stats.diff_id, comment,
                                             flat.source_digest))
        cfg_hex = hashlib.sha256(cfg_bytes).hexdigest()
        _tar_member(f, f"{cfg_hex}.json", cfg_bytes)
        manifest = [{"Config": f"{cfg_hex}.json", "RepoTags": [repo_tag] if repo_tag else None,
                     "Layers": [layer_name]}]
        _tar_member(f, "manifest.json", _json_bytes(manifest))
        f.write(bytes(2 * tarfile.BLOCKSIZE))
    return "sha256:" + cfg_hex, stats


def _write_oci_dir(flat: FlatImage, paths: list[str], tmp: Path, tag: str | None,
                   comment: str, base_config: dict, previous: Path | None
                   ) -> tuple[str, str, LayerStats]:
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    part = blobs / ".layer.partial"
    with open(part, "wb") as f:
        stats = write_layer(flat, paths, f)
    os.replace(part, blobs / stats.diff_id[7:])

    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    cfg = blob(_json_bytes(build_config(base_config, stats.diff_id, comment,
                                        flat.source_digest)))
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **cfg},
                "layers": [{"mediaType": OCI_LAYER, "digest": stats.diff_id,
                            "size": stats.size}]}
    mdesc: dict = {"mediaType": OCI_MANIFEST, **blob(_json_bytes(manifest))}
    if tag:
        mdesc["annotations"] = {REF_NAME: tag}
    manifests = [mdesc]
    if previous is not None:
        # Keep the layout's other tags (skopeo's behaviour): link its blobs, merge its index.
        old = json.loads((previous / "index.json").read_bytes())
        for d in old.get("manifests") or []:
            name = (d.get("annotations") or {}).get(REF_NAME)
            if tag and name and name != tag:
                manifests.append(d)
        old_blobs = previous / "blobs" / "sha256"
        if old_blobs.is_dir():
            for p in old_blobs.iterdir():
                target = blobs / p.name
                if p.is_file() and not p.is_symlink() and not target.exists():
                    try:
                        os.link(p, target)
                    except OSError:
                        shutil.copyfile(p, target)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    (tmp / "index.json").write_bytes(_json_bytes(index))
    return cfg["digest"], mdesc["digest"], stats


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _install_dir(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp)  # now holds the previous layout
        return
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old)


def write_image(flat: FlatImage, keep: Iterable[str], out: ImageRef, *, workdir: Path,
                comment: str, config: dict | None = None) -> WrittenImage:
    """Write the kept paths (plus parents) of `flat` as a one-layer image at `out`.

    Hardlinks are written as hardlinks to the first kept name of their inode, so a group
    whose original target was not kept still gets its content once. `config` overrides
    the image config to carry (default: the source's).
    """
    paths = closed_paths(flat, keep)
    base = config if config is not None else flat.config
    src = flat.source_ref
    if (src is not None and out.transport == src.transport and out.path and src.path
            and Path(out.path).resolve() == Path(src.path).resolve()
            and out.transport == "docker-archive"):
        raise BadInput(f"output {out} would overwrite the input archive")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if out.path and not Path(out.path).parent.is_dir():
        raise BadInput(f"output {out}: directory {Path(out.path).parent} does not exist")
    if out.transport == "docker-archive":
        dest = Path(out.path or "")
        if dest.is_dir():
            raise BadInput(f"output {out}: {dest} is a directory")
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            image_id, stats = write_docker_archive(flat, paths, tmp, out.repo_tag, comment, base)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return WrittenImage(out, image_id, stats.diff_id, stats.size, stats.members)
    if out.transport == "oci":
        dest = Path(out.path or "")
        previous = None
        if dest.exists():
            if not (dest / "index.json").is_file():
                raise BadInput(f"output {out}: {dest} exists and is not an OCI layout; "
                               "refusing to replace it")
            previous = dest
        tmpd = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            image_id, mdigest, stats = _write_oci_dir(flat, paths, tmpd, out.tag, comment,
                                                      base, previous)
            _install_dir(tmpd, dest)
        except BaseException:
            shutil.rmtree(tmpd, ignore_errors=True)
            raise
        return WrittenImage(out, image_id, stats.diff_id, stats.size, stats.members, mdigest)
    if out.transport == "docker-daemon":
        from tracer.image.engine import load_into_engine

        if not out.repo_tag:
            raise BadInput(f"output {out}: needs an image name")
        tmp = workdir / f"output-{uuid.uuid4().hex[:12]}.tar"
        try:
            image_id, stats = write_docker_archive(flat, paths, tmp, out.repo_tag, comment, base)
            loaded = load_into_engine(tmp, out.repo_tag)
        finally:
            tmp.unlink(missing_ok=True)
        if loaded != image_id:
            raise EnvironmentProblem(f"engine loaded {loaded} for {out}, expected {image_id}")
        return WrittenImage(out, image_id, stats.diff_id, stats.size, stats.members)
    raise BadInput(f"unsupported output transport {out.transport!r}")
