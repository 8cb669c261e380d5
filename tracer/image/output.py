"""The image tracer writes, independent of where it is written.

`OutputImage` is what every output transport receives: the kept paths of a flattened
image (its own layer, written straight from the source's layer data), the layers below it
when it stands on a fleet's shared base (`lower`: `tracer batch --share-base`), and the
config to carry. Most images have one layer (`OneLayer` is the same class); a transport
writes `layers()` bottom first and never needs to know which case it has. The bytes are
reproducible (reproducible-builds.org): each layer keeps the original mtimes in sorted
member order with fixed header fields, and the config's `created` is the input's own (or
SOURCE_DATE_EPOCH), never the clock, so the same input and keep-list give the same
digests on any machine. `WrittenImage` says what a transport wrote.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from tracer import __version__
from tracer.errors import BadInput
from tracer.image import documents as doc
from tracer.image.layerwrite import LayerPlan, LayerStats
from tracer.image.model import FlatImage
from tracer.image.reference import ImageRef

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"  # what Docker 25+ `docker load` reads from index.json


@dataclass
class WrittenImage:
    """What was written: where, its image id (config digest), its own (top) layer's
    numbers, the manifest digest (docker-archive and oci) and whether the output already
    held exactly this image (then it was left as it was). `layers`: every layer, bottom
    first (a shared base, then the image's own)."""

    ref: ImageRef
    image_id: str
    layer_digest: str
    layer_size: int
    file_count: int
    manifest_digest: str | None = None
    unchanged: bool = False
    push_seconds: float | None = None  # a registry output: the time the push took
    layers: list[LayerStats] = field(default_factory=list)

    @classmethod
    def of(cls, ref: ImageRef, image_id: str, layers: list[LayerStats],
           manifest_digest: str | None = None) -> WrittenImage:
        top = layers[-1]
        return cls(ref, image_id, top.diff_id, top.size, top.members, manifest_digest,
                   layers=list(layers))

    def expect(self, image_id: str | None) -> None:
        """Refuse to publish anything but the verified candidate (`image_id`): the write is
        reproducible, so a difference is a bug of tracer, never a reason to go on."""
        if image_id is not None and self.image_id != image_id:
            raise RuntimeError(f"the output image {self.image_id} is not the verified "
                               f"candidate {image_id}: writing is not reproducible")

    @property
    def digest(self) -> str:
        """The digest a deployment watches: the manifest digest of an archive or layout,
        the image id in the engine (which keeps no manifest of a loaded image)."""
        return self.manifest_digest or self.image_id


def json_bytes(obj: object) -> bytes:
    """Canonical enough to be reproducible: keys in the order given, no spaces."""
    return json.dumps(obj, separators=(",", ":")).encode()


def tar_member(out: BinaryIO, name: str, data: bytes) -> None:
    """A regular member with fixed header fields (mode 0644, mtime 0, no owner names)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    out.write(ti.tobuf(tarfile.USTAR_FORMAT))
    out.write(data)
    out.write(bytes((-len(data)) % tarfile.BLOCKSIZE))


def output_created(base: Mapping[str, Any], environ: Mapping[str, str] = os.environ
                   ) -> str | None:
    """`created` of the output: SOURCE_DATE_EPOCH when set (reproducible-builds.org),
    else the input image's own; None when neither exists (the field is then left out)."""
    text = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if text:
        try:
            if not text.isdigit():
                raise ValueError(text)
            when = datetime.fromtimestamp(int(text), UTC)
        except (ValueError, OverflowError, OSError):
            raise BadInput(f"SOURCE_DATE_EPOCH={text!r}: expected a whole number of seconds "
                           "since 1970-01-01 UTC") from None
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    created = base.get("created")
    return created if isinstance(created, str) else None


def build_config(base: dict[str, Any], diff_id: str | list[str], *, created: str | None,
                 created_by: str, comment: str,
                 lower: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The original config with rootfs pointing at the new layers (`diff_id`: one, or a
    list bottom first).

    Env, Entrypoint, Cmd, User, WorkingDir, ExposedPorts, Volumes, Labels, StopSignal,
    Healthcheck, architecture and os are carried over untouched; the old history stays for
    provenance but is marked empty_layer so history and rootfs still agree; one entry is
    appended per new layer, at `created` (not the clock): `lower` gives (created_by,
    comment) of the layers under the image's own, whose entry comes last.
    """
    diff_ids = [diff_id] if isinstance(diff_id, str) else list(diff_id)
    lower = lower or []
    if len(diff_ids) != len(lower) + 1:
        raise ValueError(f"{len(diff_ids)} layers, {len(lower) + 1} history entries")
    base = doc.obj(base, "image config")
    history = base.get("history")
    old = [doc.obj(h, "image config: history entry")
           for h in doc.array(history, "image config: history")] if history is not None else []
    cfg = copy.deepcopy(base)
    cfg.pop("created", None)
    if created is not None:
        cfg["created"] = created
    cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    entries = []
    for by, note in [*lower, (created_by, comment)]:
        entry: dict[str, Any] = {"created": created} if created is not None else {}
        entry.update(created_by=by, comment=note)
        entries.append(entry)
    cfg["history"] = [dict(copy.deepcopy(h), empty_layer=True) for h in old] + entries
    return cfg


def provenance(source_digest: str, profile_hash: str | None) -> str:
    """The history comment: which tracer made the layer, from which input and profile.
    Content digests only: a host path would make the digest differ between machines."""
    text = f"tracer {__version__}: minimized from {source_digest}"
    if profile_hash:
        text += f" with profile sha256:{profile_hash.removeprefix('sha256:')}"
    return text


@dataclass(frozen=True)
class LowerLayer:
    """A layer under an image's own: a fleet's shared base (`tracer batch --share-base`),
    planned from its own flattened index, with the history entry it adds."""

    plan: LayerPlan
    created_by: str
    comment: str


@dataclass
class OutputImage:
    """The kept paths of `flat` (from layerwrite.closed_paths) and the config to carry;
    on a shared base, the layers under them (`lower`) and what of those the image must
    not show (`whiteouts`)."""

    flat: FlatImage
    paths: list[str]
    base_config: dict[str, Any]
    created_by: str
    comment: str
    created: str | None
    lower: list[LowerLayer] = field(default_factory=list)
    whiteouts: list[str] = field(default_factory=list)
    _plan: LayerPlan | None = field(default=None, repr=False, compare=False)

    def plan(self) -> LayerPlan:
        """The image's own (top) layer: its members and size, planned once."""
        if self._plan is None:
            self._plan = LayerPlan(self.flat, self.paths, self.whiteouts)
        return self._plan

    def layers(self) -> list[LayerPlan]:
        """Every layer, bottom first: what a transport writes, in this order."""
        return [low.plan for low in self.lower] + [self.plan()]

    def config_bytes(self, diff_ids: str | list[str]) -> bytes:
        """The config for the layers' digests (bottom first; one digest: one layer)."""
        return json_bytes(build_config(
            self.base_config, diff_ids, created=self.created, created_by=self.created_by,
            comment=self.comment, lower=[(low.created_by, low.comment) for low in self.lower]))

    def estimated_size(self) -> int:
        """Bytes the layers will take, about (for a "no space" message)."""
        entries = self.flat.entries
        content = sum(e.size for p in self.paths if (e := entries[p]).kind == "file")
        own = content + 1024 * len(self.paths) + 3 * tarfile.BLOCKSIZE
        return own + sum(low.plan.size for low in self.lower)


OneLayer = OutputImage  # the name transports knew it by: an image of one layer or more


@dataclass
class OciDocuments:
    """The config and OCI manifest of a one-layer image, with their digests."""

    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str

    def descriptor(self, tag: str | None, repo_tag: str | None = None) -> dict[str, Any]:
        """The index entry for this manifest: annotated with its tag (OCI) and, for an
        archive, the fully qualified name Docker 25+ reads when loading it."""
        desc: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": self.manifest_digest,
                                "size": len(self.manifest)}
        notes = {}
        if repo_tag:
            notes[IMAGE_NAME] = qualified_name(repo_tag)
            tag = tag or repo_tag.rpartition(":")[2]
        if tag:
            notes[REF_NAME] = tag
        if notes:
            desc["annotations"] = notes
        return desc


def index_bytes(manifests: list[dict[str, Any]]) -> bytes:
    return json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def qualified_name(repo_tag: str) -> str:
    """Docker's normalization: `app:1` is `docker.io/library/app:1`."""
    first, slash, _ = repo_tag.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return repo_tag
    return f"docker.io/{repo_tag}" if slash else f"docker.io/library/{repo_tag}"


def oci_image_documents(config: bytes, layer: LayerStats | list[LayerStats]) -> OciDocuments:
    """Config and manifest of an image whose layers (one, or a list bottom first) are
    stored uncompressed."""
    layers = [layer] if isinstance(layer, LayerStats) else layer
    cfg_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json_bytes({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": x.diff_id, "size": x.size}
                   for x in layers]})
    return OciDocuments(config, cfg_digest, manifest,
                        "sha256:" + hashlib.sha256(manifest).hexdigest())
