"""Builders for hostile images and a way to run tracer and measure what it cost (a helper
module for the tests, not a test module).

Bombs are generated streaming, a mebibyte at a time: a test that builds a 1 GiB layer must
not hold it in memory itself, or it would measure its own appetite instead of tracer's.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterator
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
    tar_hash = hashlib.sha256()
    blob_hash = hashlib.sha256()
    size = 0
    if compression == "gzip":
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        compress, flush = gz.compress, gz.flush
    elif compression == "zstd":
        import zstandard

        zs = zstandard.ZstdCompressor(level=3).compressobj()
        compress, flush = zs.compress, zs.flush
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


@dataclass
class Finished:
    """A finished `python -m tracer` run: exit code, output and its peak memory."""

    code: int
    stdout: str
    stderr: str
    max_rss_mb: float


def run_tracer(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 600) -> Finished:
    """Run `python -m tracer ARGS` and measure the child's own peak RSS (wait4's rusage of
    exactly that child, not the maximum over every child this test process ever had)."""
    full_env = dict(os.environ, **(env or {}))
    with open(os.devnull, "rb") as devnull, \
            _spooled() as out, _spooled() as err:
        proc = subprocess.Popen([sys.executable, "-m", "tracer", *args], stdin=devnull,
                                stdout=out, stderr=err, env=full_env, cwd=cwd)
        try:
            _, status, usage = _wait4(proc.pid, timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(proc.returncode, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"), usage.ru_maxrss / 1024)


def _spooled():  # noqa: ANN202 - a temp file for a child's output
    import tempfile

    return tempfile.TemporaryFile()


def _wait4(pid: int, timeout: float) -> tuple[int, int, resource.struct_rusage]:
    """os.wait4 with a deadline (polling WNOHANG; the child is killed when it is over)."""
    import time

    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return got, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"tracer did not finish within {timeout} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
