"""The few Docker engine operations this package needs, through the docker SDK.

Inputs that are archives or OCI layouts are loaded under a tag the caller chooses (never
their own RepoTags, which could silently retag an unrelated engine image).
"""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

from tracer.errors import EnvironmentProblem, ImageFormatError
from tracer.image.reference import ImageRef
from tracer.image.sink import _json_bytes, _tar_member
from tracer.image.source import open_image


def engine_client():  # -> docker.DockerClient (untyped SDK)
    """The process's engine client with the deadline of an image transfer."""
    from tracer.engine import TRANSFER_TIMEOUT, connect

    return connect(TRANSFER_TIMEOUT).sdk


def load_into_engine(archive: Path, tag: str) -> str:
    """`docker load` a docker-archive and make sure `tag` names it; return the image id."""
    import docker

    client = engine_client()
    try:
        with open(archive, "rb") as f:
            images = client.images.load(f)
    except docker.errors.APIError as exc:
        raise ImageFormatError(f"the Docker engine refused {archive}: {exc}") from exc
    if len(images) != 1:
        raise ImageFormatError(f"{archive}: the engine loaded {len(images)} images, expected 1")
    image = images[0]
    repo, _, t = tag.rpartition(":")
    if not repo or "/" in t:
        repo, t = tag, "latest"
    image.tag(repo, t)
    return image.id


def remove_from_engine(tag_or_id: str) -> None:
    """Remove an image (e.g. a loaded temporary input); absent is fine."""
    import docker

    client = engine_client()
    try:
        client.images.remove(tag_or_id)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"cannot remove image {tag_or_id}: {exc}") from exc


def export_docker_archive(ref: ImageRef, dest: Path, repo_tag: str, workdir: Path) -> None:
    """Rewrite an archive/OCI input as a docker-archive tagged only `repo_tag`; layer blobs
    are copied as stored (docker load decompresses and checks diff_ids itself)."""
    with open_image(ref, workdir) as src, open(dest, "wb") as f:
        names = []
        for layer in src.layers:
            raw = layer.open_raw()
            try:
                size = layer.blob_size
                if size is None:
                    raise ImageFormatError(f"{layer.where}: blob size unknown")
                name = f"{layer.index:04d}/layer.tar"
                ti = tarfile.TarInfo(name)
                ti.size = size
                f.write(ti.tobuf(tarfile.GNU_FORMAT))
                left = size
                while left:
                    chunk = raw.read(min(1 << 20, left))
                    if not chunk:
                        raise ImageFormatError(f"{layer.where}: blob shorter than {size}")
                    f.write(chunk)
                    left -= len(chunk)
                f.write(bytes((-size) % tarfile.BLOCKSIZE))
                names.append(name)
            finally:
                raw.close()
        cfg = f"{src.digest[7:]}.json"
        _tar_member(f, cfg, src.config_bytes)
        _tar_member(f, "manifest.json",
                    _json_bytes([{"Config": cfg, "RepoTags": [repo_tag], "Layers": names}]))
        f.write(bytes(2 * tarfile.BLOCKSIZE))


def load_ref_into_engine(ref: ImageRef, repo_tag: str, workdir: Path) -> str:
    """Make `ref` runnable by the engine under `repo_tag`; return its image id."""
    if ref.transport == "docker-daemon":
        client = engine_client()
        image = client.images.get(ref.repo_tag)
        repo, _, t = repo_tag.rpartition(":")
        image.tag(repo, t)
        return image.id
    tmp = Path(workdir) / f"load-{uuid.uuid4().hex[:12]}.tar"
    try:
        export_docker_archive(ref, tmp, repo_tag, workdir)
        return load_into_engine(tmp, repo_tag)
    finally:
        tmp.unlink(missing_ok=True)
