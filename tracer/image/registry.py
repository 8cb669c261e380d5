"""The docker transport: images in a registry (`docker://HOST/REPO:TAG` or `@sha256:...`),
read and written through skopeo (skopeo.py says why and how it is bounded), no daemon
involved.

Reading (`open`):
1. the reference is resolved once: `skopeo inspect --raw` gives the manifest or index the
   tag names; its sha256 is the input's digest (a reference by digest must hash to it:
   skopeo 1.9's inspect does not check that, so tracer does);
2. an index (OCI image index or Docker manifest list) picks the platform asked for
   (`--platform`, default the engine's); one it lacks is exit 2 listing what it has;
3. the platform's manifest is checked against the budgets before a blob moves: its size
   (json_bytes), its layer count (layers), the bytes its layers declare (image_bytes);
4. `skopeo copy` BY DIGEST puts exactly that image into the run's work dir (its `dir:`
   format: the registry's manifest, config and layer blobs byte for byte), verifying
   every blob against its digest on the way, killed if the directory grows past what the
   manifest declares;
5. the files are renamed into an OCI layout and read by the oci transport's reader
   (layout.py), streamed from disk into the flattener, after checking that its config and
   layers are the very ones of the registry's manifest.

Writing (`write`): the verified image is written as an OCI layout in the work dir (the
oci transport's writer: the same bytes and digests an `oci:` output gets) and
`skopeo copy --preserve-digests` pushes it: blobs the registry already has are not sent,
the manifest goes last (a push that fails midway never moves the tag), and the digest
skopeo reports must be the one tracer wrote. The layer is pushed as written
(uncompressed), so the pushed manifest digest is reproducible on any machine and equal to
the one an `oci:` output of the same run has. An output tag that already names exactly
that manifest is left alone (`unchanged`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError
from tracer.image import documents as doc
from tracer.image.diskio import disk_full
from tracer.image.layout import INDEX_TYPES, LayoutTransport, read_layout, write_image_blobs
from tracer.image.output import (
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    OneLayer,
    WrittenImage,
    json_bytes,
)
from tracer.image.platforms import Platform, engine_platform, of_config, of_descriptor
from tracer.image.reference import ImageRef
from tracer.image.registryauth import Credentials, lookup
from tracer.image.skopeo import RegistryError, Skopeo, Watch, meaning
from tracer.image.source import ImageSource

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
_LAYOUT_TAG = "tracer"
_SLACK = 1 << 20  # bytes a pulled layout may hold beyond what the manifest declares
_PER_FILE = 64 << 10  # ... and per blob (file system blocks, skopeo's temp files)


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Resolved:
    """What a reference names now: the document (index or manifest) and its digest."""

    ref: ImageRef  # by digest
    digest: str
    data: bytes
    document: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.document.get("mediaType") in INDEX_TYPES or \
            (self.document.get("mediaType") is None and "manifests" in self.document)


@dataclass
class Entry:
    """One platform's image of an index."""

    platform: Platform
    digest: str
    size: int | None


@dataclass
class Chosen:
    """The image manifest a run reads, and how it was reached."""

    digest: str
    data: bytes
    manifest: dict[str, Any]
    platform: Platform | None  # from the index (None: a single-platform reference)
    index_digest: str | None = None
    available: list[Platform] = field(default_factory=list)


@dataclass
class Pulled:
    """How a registry image came into the work dir (for the report and progress)."""

    input_digest: str  # what the reference named: the index or the manifest
    manifest_digest: str
    platform: str | None
    layers: int
    declared_bytes: int
    seconds: float


class RegistryTransport:
    """docker://NAME[:TAG|@sha256:HEX]"""

    name = "docker"

    # -- the pieces ------------------------------------------------------------------

    def client(self, ref: ImageRef, workdir: Path, budgets: Budgets = DEFAULT
               ) -> tuple[Skopeo, Credentials]:
        creds = lookup(str(ref.name))
        return Skopeo(ref.options, creds, workdir, budgets), creds

    def _inspect(self, client: Skopeo, creds: Credentials, ref: ImageRef, what: str) -> bytes:
        try:
            return client.run(["inspect", "--raw", *client.access(), str(ref)], what,
                              stdout_cap=client.budgets.json_bytes + 1).stdout
        except RegistryError as exc:
            raise meaning(exc, creds) from None

    def resolve(self, ref: ImageRef, workdir: Path, budgets: Budgets = DEFAULT) -> Resolved:
        """The document `ref` names now and its digest, checked (a reference by digest
        must hash to its digest)."""
        client, creds = self.client(ref, workdir, budgets)
        return self._resolve(client, creds, ref)

    def _resolve(self, client: Skopeo, creds: Credentials, ref: ImageRef) -> Resolved:
        data = self._inspect(client, creds, ref, f"resolve {ref}")
        digest = _digest_of(data)
        if ref.digest is not None and digest != ref.digest:
            raise ImageFormatError(f"{ref}: the registry's manifest hashes to {digest}, not "
                                   "the digest asked for")
        where = f"{ref} ({digest})"
        document = doc.obj(doc.parse(data, where), where)
        return Resolved(ref.pinned(digest), digest, data, document)

    def entries(self, resolved: Resolved) -> list[Entry]:
        """The platforms of an index, in its order (image manifests only; attestation
        manifests, which declare platform unknown/unknown, are not images)."""
        where = f"{resolved.ref}: index"
        out = []
        for i, d in enumerate(doc.array(resolved.document.get("manifests"), where)):
            d = doc.obj(d, f"{where}: manifests[{i}]")
            platform = of_descriptor(d)
            media = doc.optional_str(d, "mediaType", f"{where}: manifests[{i}]")
            if platform is None or platform.os == "unknown" or \
                    (media is not None and media not in MANIFEST_TYPES):
                continue
            out.append(Entry(platform, doc.digest(d.get("digest"), f"{where}: manifests[{i}]"),
                             doc.size(d, f"{where}: manifests[{i}]")))
        return out

    def choose(self, client: Skopeo, creds: Credentials, resolved: Resolved) -> Chosen:
        """The image manifest to read: the reference's own, or its index's entry for the
        platform asked for (default: the engine's)."""
        if not resolved.is_index:
            self._check_manifest(resolved.document, str(resolved.ref))
            return Chosen(resolved.digest, resolved.data, resolved.document, None)
        entries = self.entries(resolved)
        want = resolved.ref.options.platform or engine_platform()
        found = [e for e in entries if want.matches(e.platform)]
        if not found:
            has = ", ".join(str(e.platform) for e in entries) or "no image platforms"
            raise BadInput(f"{resolved.ref.name}@{resolved.digest} has no {want} image (it "
                           f"has: {has}); choose one with --platform")
        entry = found[0]
        client.budgets.check("json_bytes", entry.size or 0,
                             f"{resolved.ref}: the {entry.platform} manifest")
        mref = resolved.ref.pinned(entry.digest)
        data = self._inspect(client, creds, mref, f"read the {entry.platform} manifest")
        if _digest_of(data) != entry.digest:
            raise ImageFormatError(f"{mref}: the registry's manifest hashes to "
                                   f"{_digest_of(data)}, not the digest its index names")
        manifest = doc.obj(doc.parse(data, str(mref)), str(mref))
        self._check_manifest(manifest, str(mref))
        return Chosen(entry.digest, data, manifest, entry.platform, resolved.digest,
                      [e.platform for e in entries])

    def _check_manifest(self, manifest: dict[str, Any], where: str) -> None:
        media = manifest.get("mediaType")
        if media is not None and media not in MANIFEST_TYPES:
            raise ImageFormatError(f"{where}: not an image manifest (mediaType {media!r}); "
                                   "tracer reads OCI and Docker v2 schema 2 images")
        if manifest.get("schemaVersion") != 2 or not isinstance(manifest.get("layers"), list):
            raise ImageFormatError(f"{where}: not a schema 2 image manifest")

    def _budget(self, manifest: dict[str, Any], where: str, budgets: Budgets
                ) -> tuple[int, list[str], str]:
        """Check the manifest's declared sizes against the budgets before any blob moves;
        (bytes its blobs declare, layer digests, config digest)."""
        layers = doc.array(manifest.get("layers"), f"{where}: layers")
        budgets.check("layers", len(layers), f"{where}: lists {len(layers)} layers")
        config = doc.obj(manifest.get("config"), f"{where}: config")
        config_size = doc.size(config, f"{where}: config") or 0
        budgets.check("json_bytes", config_size, f"{where}: the config is {config_size} bytes")
        total, digests = config_size, []
        for i, layer in enumerate(layers):
            lwhere = f"{where}: layer {i}"
            layer = doc.obj(layer, lwhere)
            size = doc.size(layer, lwhere)
            if size is None:
                raise ImageFormatError(f"{lwhere}: no size")
            if layer.get("urls"):
                raise ImageFormatError(f"{lwhere}: a foreign layer (fetched from urls, not "
                                       "the registry); tracer does not read those")
            digests.append(doc.digest(layer.get("digest"), lwhere))
            total += size
            budgets.check("image_bytes", total, f"{where}: its layers declare")
        return total, digests, doc.digest(config.get("digest"), f"{where}: config")

    # -- the transport ---------------------------------------------------------------

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> ImageSource:
        workdir = Path(workdir)
        client, creds = self.client(ref, workdir, budgets)
        resolved = self._resolve(client, creds, ref)
        chosen = self.choose(client, creds, resolved)
        mref = resolved.ref.pinned(chosen.digest)
        declared, layer_digests, config_digest = self._budget(chosen.manifest, str(mref),
                                                              budgets)
        dest = workdir / f"pulled-{chosen.digest[7:19]}"
        watch = Watch(dest, declared + len(chosen.data) + _SLACK
                      + _PER_FILE * (len(layer_digests) + 3), declared)
        started = time.monotonic()
        try:
            with disk_full(workdir, declared):
                client.run(["copy", "--quiet", "--remove-signatures", *client.access("src-"),
                            str(mref), f"dir:{dest}"],
                           f"pull {mref}", watch=watch, clean=dest)
        except RegistryError as exc:
            _remove(dest)
            raise meaning(exc, creds) from None
        except BaseException:
            _remove(dest)
            raise
        seconds = time.monotonic() - started
        try:
            with disk_full(workdir):
                _as_layout(dest, chosen.digest, str(mref))
            source = read_layout(ImageRef("oci", str(dest), None, _LAYOUT_TAG), dest, budgets)
        except BaseException:
            _remove(dest)
            raise
        source.own(dest)
        platform = chosen.platform or of_config(source.config)
        try:
            self._same_image(source, config_digest, layer_digests, str(mref))
            want = ref.options.platform
            if want is not None and (platform is None or not want.matches(platform)):
                raise BadInput(f"{ref} is a single {platform or 'unnamed'} image, not "
                               f"{want}: it has no other platform to choose")
        except BaseException:
            source.close()
            raise
        source.ref = ref
        source.manifest_digest = chosen.digest
        source.reader = (f"skopeo copy by digest ({len(layer_digests)} layers, "
                         f"{declared:,} bytes in {seconds:.1f}s) and the oci reader")
        source.pulled = Pulled(resolved.digest, chosen.digest,
                               str(platform) if platform else None, len(layer_digests),
                               declared, seconds)
        return source

    def _same_image(self, source: ImageSource, config_digest: str, layers: list[str],
                    where: str) -> None:
        got = [layer.blob_digest for layer in source.layers]
        if source.digest != config_digest or got != layers:
            raise ImageFormatError(f"{where}: the copy holds config {source.digest} and "
                                   f"layers {got}, not the registry manifest's "
                                   f"{config_digest} and {layers}")

    def check_output(self, ref: ImageRef) -> ImageRef:
        """A tag (not a digest), and a registry that answers for it with the credentials
        found: a refusal or an unreachable registry is said before minutes of work, not
        at the push. (Reading a tag may be allowed where pushing is not: that is found
        at the push.)"""
        ref = self._tagged(ref)
        with _scratch() as work:
            self.current(ref, work)
        return ref

    def _tagged(self, ref: ImageRef) -> ImageRef:
        if ref.digest is not None or not ref.name:
            raise BadInput(f"output {ref}: a registry output needs a tag "
                           "(docker://HOST/REPO:TAG), not a digest")
        return ref if ref.tag else ImageRef("docker", None, ref.name, "latest",
                                            options=ref.options)

    def current(self, ref: ImageRef, workdir: Path) -> str | None:
        """The digest the tag names now; None when there is no such tag (or repository)."""
        client, creds = self.client(ref, workdir)
        try:
            data = client.run(["inspect", "--raw", *client.access(), str(ref)],
                              f"look up {ref}", stdout_cap=DEFAULT.json_bytes + 1).stdout
        except RegistryError as exc:
            if exc.kind == "notfound":
                return None
            raise meaning(exc, creds) from None
        return _digest_of(data)

    def write(self, image: OneLayer, ref: ImageRef, workdir: Path,
              expect_id: str | None = None) -> WrittenImage:
        ref = self._tagged(ref)
        workdir = Path(workdir)
        layout = workdir / "push-layout"
        written = LayoutTransport().write(image, ImageRef("oci", str(layout), None,
                                                          _LAYOUT_TAG), workdir, expect_id)
        try:
            return self.push(layout, written, ref, workdir)
        finally:
            _remove(layout)

    def push(self, layout: Path, written: WrittenImage, ref: ImageRef, workdir: Path,
             all_images: bool = False) -> WrittenImage:
        """Push the layout's `tracer` image (an index with `all_images`) to `ref`, unless
        the tag names exactly that manifest already."""
        digest = written.digest
        written.ref = ref
        if self.current(ref, workdir) == digest:
            written.unchanged = True
            return written
        client, creds = self.client(ref, workdir)
        digestfile = workdir / "pushed.digest"
        digestfile.unlink(missing_ok=True)
        started = time.monotonic()
        try:
            client.run(["copy", "--quiet", "--preserve-digests", "--digestfile",
                        str(digestfile), *(["--multi-arch", "all"] if all_images else []),
                        *client.access("dest-"), f"oci:{layout}:{_LAYOUT_TAG}", str(ref)],
                       f"push {ref}")
        except RegistryError as exc:
            raise meaning(exc, creds, pushing=True) from None
        written.push_seconds = time.monotonic() - started
        pushed = digestfile.read_text().strip() if digestfile.exists() else ""
        if pushed != digest:
            raise EnvironmentProblem(f"push {ref}: skopeo reports {pushed or 'no digest'}, "
                                     f"not the verified image's manifest {digest}")
        return written

    def engine_name(self, ref: ImageRef) -> str | None:
        return None

    def identity(self, ref: ImageRef) -> str:
        with _scratch() as work:
            return self.current(ref, work) or "missing"

    def exists(self, ref: ImageRef) -> bool:
        return self.identity(ref) != "missing"


def index_document(manifests: list[tuple[str, int, Platform]]) -> bytes:
    """An OCI image index of (manifest digest, size, platform) entries."""
    return json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": d, "size": n,
         "platform": {"architecture": p.architecture, "os": p.os,
                      **({"variant": p.variant} if p.variant else {})}}
        for d, n, p in manifests]})


@dataclass
class PlatformImage:
    """One verified platform of a multi-platform output."""

    platform: Platform
    image: OneLayer
    expect_id: str  # the verified candidate's image id


def write_index(images: list[PlatformImage], ref: ImageRef, workdir: Path) -> WrittenImage:
    """Write every platform's verified image and an OCI image index of them as one OCI
    layout in `workdir`, and push it to `ref` (skopeo copy --multi-arch all
    --preserve-digests: the index and each manifest keep the digests written here). A
    tag that already names this index is left alone. Each image must be its verified
    candidate (`expect_id`), as for a single-platform output."""
    transport = RegistryTransport()
    ref = transport._tagged(ref)
    layout = Path(workdir) / "push-index"
    blobs = layout / "blobs" / "sha256"
    entries: list[tuple[str, int, Platform]] = []
    size = files = 0
    try:
        blobs.mkdir(parents=True)
        with disk_full(workdir, sum(i.image.estimated_size() for i in images)):
            (layout / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
            for item in images:
                docs, stats = write_image_blobs(item.image, blobs)
                if docs.config_digest != item.expect_id:
                    raise RuntimeError(f"the {item.platform} image {docs.config_digest} is not "
                                       f"the verified candidate {item.expect_id}: writing is "
                                       "not reproducible")
                entries.append((docs.manifest_digest, len(docs.manifest), item.platform))
                size += sum(s.size for s in stats)
                files += sum(s.members for s in stats)
            index = index_document(entries)
            digest = _digest_of(index)
            (blobs / digest[7:]).write_bytes(index)
            (layout / "index.json").write_bytes(json_bytes({
                "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                    {"mediaType": OCI_INDEX, "digest": digest, "size": len(index),
                     "annotations": {REF_NAME: _LAYOUT_TAG}}]}))
        written = WrittenImage(ref, digest, "", size, files, digest)
        return transport.push(layout, written, ref, Path(workdir), all_images=True)
    finally:
        _remove(layout)


_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")


def _as_layout(directory: Path, manifest_digest: str, where: str) -> None:
    """Turn what `skopeo copy ... dir:DIRECTORY` wrote into an OCI image layout, moving
    nothing but names: blobs (named by their hex digest, verified by skopeo) go under
    blobs/sha256/, manifest.json (the registry's bytes, which must hash to
    `manifest_digest`) becomes the manifest blob named by index.json. The dir: format
    keeps the registry's manifest and config exactly; an `oci:` copy would rewrite a
    Docker image's manifest and config as OCI ones (dropping Docker-only fields such as
    Healthcheck)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for name in os.listdir(directory):
        path = directory / name
        if _BLOB_NAME.match(name) and stat.S_ISREG(os.lstat(path).st_mode):
            os.rename(path, blobs / name)
    manifest = directory / "manifest.json"
    if not stat.S_ISREG(os.lstat(manifest).st_mode):
        raise ImageFormatError(f"{where}: skopeo wrote no manifest")
    with open(manifest, "rb") as f:
        data = f.read(DEFAULT.json_bytes + 1)
    if _digest_of(data) != manifest_digest:
        raise ImageFormatError(f"{where}: the copied manifest hashes to {_digest_of(data)}, "
                               f"not {manifest_digest}")
    os.rename(manifest, blobs / manifest_digest[7:])
    media = doc.optional_str(doc.obj(doc.parse(data, where), where), "mediaType", where)
    (directory / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_bytes(json_bytes({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": media or OCI_MANIFEST, "digest": manifest_digest,
             "size": len(data), "annotations": {REF_NAME: _LAYOUT_TAG}}]}))


@contextmanager
def _scratch() -> Iterator[Path]:
    """A private temp dir for one lookup outside a run (batch's identity checks)."""
    with tempfile.TemporaryDirectory(prefix="tracer-registry-") as d:
        yield Path(d)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
