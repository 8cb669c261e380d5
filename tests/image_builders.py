"""Builders for hand-made images (a helper module for the tests, not a test module).

Layers are real tar archives written with Python's tarfile (or patched bytes of one, for
the malformed cases); images are real docker-archive files and OCI layouts around them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tracer.image import FlatImage, flatten, open_image, parse_reference


@dataclass
class M:
    """One member of a hand-made layer."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    linkname: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def layer(*members: M, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar holding `members` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type = _TYPES[m.kind]
            ti.mode, ti.uid, ti.gid, ti.mtime = m.mode, m.uid, m.gid, m.mtime
            ti.linkname = m.linkname
            ti.devmajor, ti.devminor = m.devmajor, m.devminor
            if m.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                  for k, v in m.xattrs.items()}
            if m.kind == "file":
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BASE_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": ["PATH=/usr/bin:/bin", "FOO=bar"], "Entrypoint": ["/bin/app"],
               "Cmd": ["--serve"], "User": "1000:1000", "WorkingDir": "/srv",
               "ExposedPorts": {"8080/tcp": {}}, "Volumes": {"/data": {}},
               "Labels": {"org.example": "yes"}, "StopSignal": "SIGINT",
               "Healthcheck": {"Test": ["CMD", "/bin/app", "--check"]}},
    "history": [{"created_by": "hand-made"}],
}


def config_for(layers: list[bytes], diff_ids: list[str] | None = None,
               extra: dict | None = None) -> bytes:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg.update(extra or {})
    cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids or [sha(x) for x in layers]}
    return json.dumps(cfg).encode()


def docker_archive(path: Path, layers: list[bytes], *, blobs_layout: bool = False,
                   repo_tag: str | None = "hand/made:1", diff_ids: list[str] | None = None,
                   layer_names: list[str] | None = None, config_extra: dict | None = None
                   ) -> Path:
    """A `docker save`-shaped archive: old `<id>/layer.tar` layout or the blobs layout.
    `config_extra`: top-level fields added to the image config (e.g. `created`)."""
    cfg = config_for(layers, diff_ids, config_extra)
    files: list[tuple[str, bytes]] = []
    names = []
    for i, data in enumerate(layers):
        hexd = sha(data)[7:]
        name = f"blobs/sha256/{hexd}" if blobs_layout else f"{i:02d}{hexd[:62]}/layer.tar"
        names.append(name)
        files.append((name, data))
    cfg_name = f"blobs/sha256/{sha(cfg)[7:]}" if blobs_layout else f"{sha(cfg)[7:]}.json"
    files.append((cfg_name, cfg))
    manifest = [{"Config": cfg_name, "RepoTags": [repo_tag] if repo_tag else None,
                 "Layers": layer_names or names}]
    files.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w") as tf:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def oci_layout(path: Path, layers: list[bytes], *, compress: bool | str = True,
               tag: str = "t1", blob_of: Callable[[bytes], bytes] | None = None) -> Path:
    """An OCI image layout with gzip (default), "zstd" or uncompressed layers.

    `blob_of` replaces the compressor (a corrupt stream with a correct digest)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> dict:
        (blobs / sha(data)[7:]).write_bytes(data)
        return {"digest": sha(data), "size": len(data)}

    descs = []
    for data in layers:
        kind = "zstd" if compress == "zstd" else "gzip" if compress else ""
        if blob_of is not None:
            blob = blob_of(data)
        elif kind == "zstd":
            blob = zstd_compress(data)
        else:
            blob = gzip.compress(data) if kind else data
        mt = "application/vnd.oci.image.layer.v1.tar" + (f"+{kind}" if kind else "")
        descs.append({"mediaType": mt, **put(blob)})
    cfg = put(config_for(layers))
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                "layers": descs}
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **put(json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return path


def zstd_compress(data: bytes) -> bytes:
    """`data` compressed by the reference `zstd` command (what buildkit's layers hold)."""
    done = subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True,
                          check=True)
    return done.stdout


def flat_from_layers(tmp: Path, *layers: bytes, extract: bool = False) -> FlatImage:
    """Flatten hand-made layers through a real docker-archive file."""
    archive = docker_archive(tmp / "in.tar", list(layers))
    with open_image(parse_reference(f"docker-archive:{archive}"), tmp / "work") as src:
        return flatten(src, tmp / "work" / "root", extract=extract)


def flatten_ref(ref: str, work: Path, extract: bool = False) -> FlatImage:
    with open_image(parse_reference(ref), work) as src:
        return flatten(src, work / "root", extract=extract)


def content(flat: FlatImage, path: str) -> bytes:
    """A file's bytes as the index serves them (straight from the layer data)."""
    with flat.open_content(path) as f:
        return f.read()


def set_size(tar: bytes, member: str, size: int) -> bytes:
    """Rewrite the size field of `member`'s ustar header (and its checksum): a lying size."""
    data = bytearray(tar)
    pos = 0
    while pos < len(data):
        block = data[pos:pos + 512]
        name = block[:100].rstrip(b"\0").decode()
        real = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
        if name == member:
            data[pos + 124:pos + 136] = b"%011o\0" % size
            data[pos + 148:pos + 156] = b" " * 8
            chk = sum(data[pos:pos + 512])
            data[pos + 148:pos + 156] = b"%06o\0 " % chk
            return bytes(data)
        pos += 512 + real + (-real) % 512
    raise KeyError(member)


# ---------------------------------------------------------------- the engine's own reader


@dataclass(frozen=True)
class Node:
    """One path as the Docker engine serves it (`docker export` of a container)."""

    kind: str  # file | dir | symlink | char | block | fifo (a hardlink is a file)
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: str = ""
    sha256: str = ""
    xattrs: tuple[tuple[str, str], ...] = ()
    dev: tuple[int, int] = (0, 0)
    hardlink_of: str = ""  # the member this hardlink names, as export wrote it


_KIND_OF = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
            tarfile.FIFOTYPE: "fifo"}
# what `docker create` adds to every container (the init layer), whatever the image holds
ENGINE_INIT_PATHS = frozenset({"/.dockerenv", "/dev", "/dev/console", "/dev/pts", "/dev/shm",
                               "/etc", "/etc/hostname", "/etc/hosts", "/etc/mtab",
                               "/etc/resolv.conf", "/proc", "/sys"})


def engine_tree(image: str) -> dict[str, Node]:
    """Every path of `image` as the engine itself reads it: a container is created (never
    started) and `docker export`ed; the tar stream is read here with tarfile."""
    import subprocess
    import uuid

    name = f"tracer-test-image-export-{uuid.uuid4().hex[:10]}"
    made = subprocess.run(["docker", "create", "--network", "none", "--name", name, image,
                           "/nonexistent"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    tree: dict[str, Node] = {}
    try:
        proc = subprocess.Popen(["docker", "export", name], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for ti in tf:
                path = "/" + ti.name.strip("/") if ti.name.strip("/") not in ("", ".") else "/"
                xattrs = tuple(sorted((k[len("SCHILY.xattr."):], v)
                                      for k, v in ti.pax_headers.items()
                                      if k.startswith("SCHILY.xattr.")))
                common = dict(mode=ti.mode & 0o7777, uid=ti.uid, gid=ti.gid,
                              mtime=int(ti.mtime), xattrs=xattrs)
                if ti.islnk():
                    target = tree["/" + ti.linkname.strip("/")]
                    tree[path] = Node("file", **common, sha256=target.sha256,  # type: ignore[arg-type]
                                      hardlink_of="/" + ti.linkname.strip("/"))
                    continue
                kind = _KIND_OF[ti.type]
                digest = ""
                if kind == "file":
                    f = tf.extractfile(ti)
                    assert f is not None
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                    digest = h.hexdigest()
                tree[path] = Node(kind, **common, linkname=ti.linkname if ti.issym() else "",  # type: ignore[arg-type]
                                  sha256=digest, dev=(ti.devmajor, ti.devminor)
                                  if kind in ("char", "block") else (0, 0))
        assert proc.wait() == 0
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return tree


def oci_layout_as_docker_archive(layout: Path, tag: str | None, repo_tag: str,
                                 dest: Path) -> Path:
    """An OCI layout re-packed for `docker load` of engines that read only docker-archives
    (Docker < 25): its blobs as they are, plus a manifest.json naming them. The engine
    itself then checks every layer against the config's diff_ids."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(d for d in index["manifests"] if tag is None or
                (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"][7:]).read_text())
    names = [f"blobs/sha256/{d['digest'][7:]}" for d in [manifest["config"], *manifest["layers"]]]
    docker_manifest = [{"Config": names[0], "RepoTags": [repo_tag], "Layers": names[1:]}]
    with tarfile.open(dest, "w") as tf:
        for name in dict.fromkeys(names):
            tf.add(layout / name, arcname=name)
        data = json.dumps(docker_manifest).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return dest


# ---------------------------------------------------------------- running tracer, measured


@dataclass
class Measured:
    """A finished `python -m tracer` child: exit code, output, wall time, peak memory."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float


_LAUNCHER = """
import json, os, subprocess, sys, time
result, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
proc = subprocess.Popen(cmd)
deadline, timed_out = time.monotonic() + timeout, False
while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        timed_out = True
        break
    time.sleep(0.05)
with open(result, "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "max_rss_kb": usage.ru_maxrss,
               "timed_out": timed_out}, f)
"""


def run_tracer(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 300) -> Measured:
    """Run `python -m tracer ARGS`, measuring the peak RSS of that process alone.

    A small launcher starts it: a process forked straight from pytest would inherit the
    test process's high-water mark (Linux keeps it across exec)."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(result), str(timeout), sys.executable,
             "-m", "tracer", *args], capture_output=True, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout + 60)
        seconds = time.monotonic() - t0
        assert proc.returncode == 0, proc.stderr
        data = json.loads(result.read_text())
        assert not data["timed_out"], f"tracer {args} still ran after {timeout}s"
        return Measured(data["code"], proc.stdout.decode(errors="replace"),
                        proc.stderr.decode(errors="replace"), seconds,
                        data["max_rss_kb"] / 1024)
