"""The two local registries `scripts/setup` starts (scripts/test-registry), for the tests.

127.0.0.1:5000 is plain HTTP without auth; 127.0.0.1:5443 has TLS (a CA made by the
setup, passed with --cert-dir) and htpasswd auth (user and a random password the setup
kept under its state directory). Both are Debian's docker-registry; their storage is
read (and, in the corruption tests, changed) through `blob_file` and `tag_dir`. A test
uses a repository of its own (`repo()`), so tests never see each other's tags.

Missing registries skip a test locally and fail it in CI (prereq.missing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from prereq import missing

STATE = Path(os.environ.get("TRACER_TEST_REGISTRY_DIR", "/var/lib/tracer-test-registry"))


@dataclass(frozen=True)
class Registry:
    host: str
    storage: Path
    cert_dir: Path | None = None
    user: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return self.cert_dir is not None

    def ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        return f"docker://{self.host}/{repo}" + (f":{tag}" if tag else "") + \
            (f"@{digest}" if digest else "")

    def flags(self) -> list[str]:
        """tracer's (and skopeo inspect's) flags to reach it."""
        return ["--cert-dir", str(self.cert_dir)] if self.tls else ["--tls-verify=false"]

    def skopeo_flags(self, side: str) -> list[str]:
        """skopeo copy's flags for one side (`src-`, `dest-`), credentials included."""
        out = [f"--{side}cert-dir", str(self.cert_dir)] if self.tls else \
            [f"--{side}tls-verify=false"]
        if self.user:
            out += [f"--{side}creds", f"{self.user}:{self.password}"]
        return out

    def auth_json(self) -> dict:
        """An auth.json / Docker config with this registry's credentials."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"auths": {self.host: {"auth": token}}}

    def blob_file(self, digest: str) -> Path:
        hexa = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"

    def tag_dir(self, repo: str, tag: str) -> Path:
        return self.storage / "docker/registry/v2/repositories" / repo / "_manifests/tags" / tag


def repo(name: str) -> str:
    """A repository of the calling test's own."""
    return f"tracer-test/{name}-{uuid.uuid4().hex[:8]}"


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def _plain() -> Registry:
    if not _answers("http://127.0.0.1:5000/v2/", None):
        missing("the plain test registry (127.0.0.1:5000) does not answer; run scripts/setup")
    return Registry("127.0.0.1:5000", STATE / "plain" / "storage")


def _auth() -> Registry:
    ca = STATE / "certs" / "ca.crt"
    try:
        user = (STATE / "auth" / "user").read_text().strip()
        password = (STATE / "auth" / "password").read_text().strip()
        context = ssl.create_default_context(cafile=str(ca))
    except OSError as exc:
        missing(f"the TLS test registry's state is missing ({exc}); run scripts/setup")
    if not _answers("https://127.0.0.1:5443/v2/", context):
        missing("the TLS test registry (127.0.0.1:5443) does not answer; run scripts/setup")
    return Registry("127.0.0.1:5443", STATE / "auth" / "storage", STATE / "certs", user,
                    password)


@pytest.fixture(scope="session")
def plain_registry() -> Registry:
    return _plain()


@pytest.fixture(scope="session")
def auth_registry() -> Registry:
    return _auth()


def skopeo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The reference client, as a test uses it to check what tracer did."""
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def manifest_digest(registry: Registry, ref: str) -> str | None:
    """The digest a reference names in the registry (skopeo inspect --raw, hashed)."""
    flags = ["--cert-dir", str(registry.cert_dir)] if registry.tls else ["--tls-verify=false"]
    if registry.user:
        flags += ["--creds", f"{registry.user}:{registry.password}"]
    done = subprocess.run(["skopeo", "inspect", "--raw", *flags, ref], capture_output=True,
                          timeout=120)
    if done.returncode != 0:
        return None
    return "sha256:" + hashlib.sha256(done.stdout).hexdigest()


def upload_requests(registry_log: Path, offset: int, name: str) -> int:
    """Blob uploads (not cross-repository mounts) the registry logged for `name` after
    byte `offset` of its log."""
    with open(registry_log, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return sum(1 for line in text.splitlines()
               if f'"POST /v2/{name}/blobs/uploads/' in line and "mount=" not in line)


def push_engine_image(registry: Registry, image: str, dest: str) -> str:
    """Copy an engine image to the registry (test setup only: tracer reads it from the
    registry); returns the manifest digest."""
    done = skopeo("copy", "--quiet", *registry.skopeo_flags("dest-"), f"docker-daemon:{image}",
                  dest)
    assert done.returncode == 0, done.stderr
    digest = manifest_digest(registry, dest)
    assert digest
    return digest


def oci_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- test images

COMPILERS = {"amd64": "gcc", "arm64": "aarch64-linux-gnu-gcc", "386": "i686-linux-gnu-gcc"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def static_program(tmp: Path, arch: str, source: str) -> bytes:
    """`source` (C) compiled statically for `arch` by the cross compiler scripts/setup
    installs."""
    import shutil

    compiler = COMPILERS[arch]
    if shutil.which(compiler) is None:
        missing(f"{compiler} is not installed; run scripts/setup")
    src = tmp / f"prog-{arch}.c"
    out = tmp / f"prog-{arch}"
    src.write_text(source)
    done = subprocess.run([compiler, "-static", "-O2", "-o", str(out), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def program_layer(program: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A layer with /bin/app (mode 0755) and `extra` files."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("bin", "etc", "tmp"):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tf.addfile(ti)
        for name, data, mode in [("bin/app", program, 0o755),
                                 *((k, v, 0o644) for k, v in (extra or {}).items())]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, 1_600_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout being built: images (gzip layers) and indexes, then tagged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.tags: list[dict] = []

    def put(self, data: bytes) -> dict:
        (self.path / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
        return {"digest": sha(data), "size": len(data)}

    def image(self, layers: list[bytes], arch: str = "amd64", config: dict | None = None,
              compress: bool = True) -> dict:
        """An image; returns its manifest descriptor (with platform)."""
        import gzip

        cfg = {"architecture": arch, "os": "linux",
               "config": {"Entrypoint": ["/bin/app"], "Env": ["PATH=/bin"]},
               "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
               "history": [{"created_by": "tests/registry.py"}], **(config or {})}
        descs = []
        for data in layers:
            blob = gzip.compress(data, mtime=0) if compress else data
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar"
                          + ("+gzip" if compress else ""), **self.put(blob)})
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               **self.put(oci_json(cfg))},
                    "layers": descs}
        return {"mediaType": OCI_MANIFEST, **self.put(oci_json(manifest)),
                "platform": {"architecture": arch, "os": "linux"}}

    def index(self, manifests: list[dict]) -> dict:
        return {"mediaType": OCI_INDEX, **self.put(oci_json(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))}

    def tag(self, desc: dict, tag: str) -> str:
        entry = {k: v for k, v in desc.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.tags.append(entry)
        (self.path / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "manifests": self.tags}))
        return f"oci:{self.path}:{tag}"


def push_layout(registry: Registry, source: str, dest: str, *, index: bool = False,
                docker_format: bool = False) -> str:
    """skopeo copy a layout's image (or index, with every image) to `dest`, digests
    preserved; returns what `dest` names."""
    args = ["copy", "--quiet", *registry.skopeo_flags("dest-")]
    args += ["--format", "v2s2"] if docker_format else ["--preserve-digests"]
    if index:
        args += ["--multi-arch", "all"]
    done = skopeo(*args, source, dest)
    assert done.returncode == 0, done.stderr
    digest = manifest_digest(registry, dest)
    assert digest
    return digest
