"""Builders for hostile images (a helper module for the tests, not a test module); what a
tracer run costs is measured by image_builders.run_tracer.

Bombs are generated streaming, a mebibyte at a time: a test that builds a 1 GiB layer must
not hold it in memory itself, or it would measure its own appetite instead of tracer's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image_builders import BASE_CONFIG

MiB = 1 << 20
_LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
                "none": "application/vnd.oci.image.layer.v1.tar"}


def one_file_tar(name: str, size: int, chunk: bytes) -> Iterator[bytes]:
    """A tar holding one regular file of `size` bytes made of repeated `chunk`, in pieces."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    yield ti.tobuf(format=tarfile.PAX_FORMAT)
    left = size
    while left:
        piece = chunk[:left]
        left -= len(piece)
        yield piece
    yield bytes((-size) % 512) + bytes(1024)


@dataclass
class Blob:
    """A layer blob written to disk, with what a manifest and config say about it."""

    path: Path
    digest: str
    size: int
    diff_id: str
    compression: str


def write_blob(path: Path, pieces: Iterator[bytes], compression: str) -> Blob:
    """Compress `pieces` (an uncompressed tar stream) into `path`, hashing both sides."""
    if compression == "zstd":
        return _write_zstd_blob(path, pieces)
    tar_hash = hashlib.sha256()
    blob_hash = hashlib.sha256()
    size = 0
    if compression == "gzip":
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        compress, flush = gz.compress, gz.flush
    else:
        compress, flush = bytes, bytes
    with open(path, "wb") as f:
        def put(data: bytes) -> None:
            nonlocal size
            blob_hash.update(data)
            size += len(data)
            f.write(data)

        for piece in pieces:
            tar_hash.update(piece)
            put(compress(piece))
        put(flush())
    return Blob(path, "sha256:" + blob_hash.hexdigest(), size, "sha256:" + tar_hash.hexdigest(),
                compression)


def _write_zstd_blob(path: Path, pieces: Iterator[bytes]) -> Blob:
    """`pieces` through the reference `zstd` command into `path` (streamed: its stdout is
    the file), then the blob hashed from disk."""
    tar_hash = hashlib.sha256()
    with open(path, "wb") as out:
        proc = subprocess.Popen(["zstd", "-q", "-c", "-3"], stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        for piece in pieces:
            tar_hash.update(piece)
            proc.stdin.write(piece)
        proc.stdin.close()
        assert proc.wait() == 0
    blob_hash = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            blob_hash.update(chunk)
    return Blob(path, "sha256:" + blob_hash.hexdigest(), path.stat().st_size,
                "sha256:" + tar_hash.hexdigest(), "zstd")


def oci_layout_of(root: Path, layers: list[tuple[Iterator[bytes], str]],
                  tag: str = "t1") -> Path:
    """An OCI image layout whose layers are streamed straight into their blobs."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs, diff_ids = [], []
    for i, (pieces, compression) in enumerate(layers):
        tmp = root / f"layer-{i}.tmp"
        blob = write_blob(tmp, pieces, compression)
        tmp.rename(blobs / blob.digest[7:])
        descs.append({"mediaType": _LAYER_TYPES[compression], "digest": blob.digest,
                      "size": blob.size})
        diff_ids.append(blob.diff_id)

    def put(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    config = json.loads(json.dumps(BASE_CONFIG))
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    cfg = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                "layers": descs}
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **put(json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return root


def gzipped_docker_archive(path: Path, layer_pieces: Callable[[], Iterator[bytes]]) -> Path:
    """`docker save | gzip` of an image with one uncompressed layer, written streaming.

    `layer_pieces()` yields the layer's tar; it is called twice (its diff_id first, then
    its bytes), so a 1 GiB layer is never held in memory.
    """
    tar_hash, size = hashlib.sha256(), 0
    for piece in layer_pieces():
        tar_hash.update(piece)
        size += len(piece)
    diff_id = "sha256:" + tar_hash.hexdigest()
    config = json.loads(json.dumps(BASE_CONFIG))
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    cfg = json.dumps(config).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_name = diff_id[7:] + "/layer.tar"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": ["hand/gzipped:1"],
                            "Layers": [layer_name]}]).encode()
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        def member(name: str, size: int, pieces: Iterable[bytes]) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = size, 0o644
            f.write(gz.compress(ti.tobuf(format=tarfile.USTAR_FORMAT)))
            for piece in pieces:
                f.write(gz.compress(piece))
            f.write(gz.compress(bytes((-size) % 512)))

        member(layer_name, size, layer_pieces())
        member(cfg_name, len(cfg), [cfg])
        member("manifest.json", len(manifest), [manifest])
        f.write(gz.compress(bytes(1024)))
        f.write(gz.flush())
    return path
