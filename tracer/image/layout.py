"""The oci transport: an OCI image layout directory, read in place and written atomically.

Reading: index.json selects a manifest (by its `org.opencontainers.image.ref.name` tag,
through nested indexes by the host's platform); manifest and config are verified against
their digests; layers are the blob files. The layout is untrusted: every file in it is
opened relative to the layout's own directory without following links (inputfiles.py),
must be a regular file, and JSON documents are refused over the json_bytes budget before
they are read.

Writing: the layout is built in a temp directory beside the target and swapped in with
one rename (renameat2 RENAME_EXCHANGE when the target exists), keeping the target's other
tags. A target that is a symlink to a layout is written through: the layout the link
names is replaced and the link stays. When the layout already holds exactly this image
under this tag, nothing is replaced.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput, ImageFormatError
from tracer.image import documents as doc
from tracer.image.diskio import disk_full, new_file
from tracer.image.inputfiles import file_identity, open_beneath, open_root, read_all, sha256_of
from tracer.image.layerwrite import LayerStats
from tracer.image.output import (
    REF_NAME,
    OciDocuments,
    OneLayer,
    WrittenImage,
    index_bytes,
    oci_image_documents,
)
from tracer.image.reference import ImageRef
from tracer.image.source import FileTransport, ImageSource
from tracer.image.streams import Layer

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
_MAX_INDEX_DEPTH = 4


def _host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return "linux", arch


class _Layout:
    """An open layout directory: JSON documents and blobs read below its descriptor."""

    def __init__(self, root: Path, budgets: Budgets) -> None:
        self.where = f"oci layout {root}"
        self.budgets = budgets
        self.fd = open_root(root, self.where)

    def close(self) -> None:
        os.close(self.fd)

    def read_json_file(self, name: str) -> object:
        fd = open_beneath(self.fd, name, self.where)
        return doc.parse(self._read_document(fd, f"{self.where}: {name}"),
                         f"{self.where}: {name}")

    def _read_document(self, fd: int, where: str) -> bytes:
        """The whole file open as `fd` (closed after), within the json_bytes budget."""
        try:
            size = os.fstat(fd).st_size
            doc.check_size(size, where, self.budgets)
            return read_all(fd, size)
        finally:
            os.close(fd)

    def open_blob(self, digest: str, where: str) -> int:
        try:
            return open_beneath(self.fd, f"blobs/sha256/{digest[7:]}", where)
        except ImageFormatError as exc:
            raise ImageFormatError(str(exc).replace(f"blobs/sha256/{digest[7:]}",
                                                    f"blob {digest}")) from None

    def read_blob(self, desc: object, where: str) -> tuple[str, bytes]:
        """A JSON blob named by descriptor `desc`, checked against its digest and size."""
        desc = doc.obj(desc, f"{where}: descriptor")
        digest = doc.digest(desc.get("digest"), where)
        want = doc.size(desc, where)
        data = self._read_document(self.open_blob(digest, where), f"{where}: blob {digest}")
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            raise ImageFormatError(f"{where}: digest mismatch: blob {digest} hashes to {got}")
        if want is not None and want != len(data):
            raise ImageFormatError(f"{where}: blob {digest} is {len(data)} bytes, the "
                                   f"descriptor says {want}")
        return digest, data


def _select(manifests: list[Any], ref: ImageRef, where: str) -> dict[str, Any]:
    descs = [doc.obj(d, f"{where}: index.json manifests entry") for d in manifests]
    if ref.tag:
        found = [d for d in descs if doc.string_map(d, "annotations", where).get(REF_NAME)
                 == ref.tag]
        if not found:
            names = [doc.string_map(d, "annotations", where).get(REF_NAME) for d in descs]
            raise BadInput(f"{where}: no manifest tagged {ref.tag!r} (has: {names[:20]})")
        return found[0]
    if len(descs) == 1:
        return descs[0]
    raise BadInput(f"{where}: holds {len(descs)} manifests; name one as oci:PATH:TAG")


def read_layout(ref: ImageRef, root: Path, budgets: Budgets) -> ImageSource:
    layout = _Layout(root, budgets)
    where = layout.where
    source = ImageSource(ref, {}, b"", "", [])
    try:
        try:
            index = layout.read_json_file("index.json")
        except ImageFormatError as exc:
            if "index.json is missing" in str(exc):
                raise BadInput(f"{where}: no index.json (not an OCI image layout)") from None
            raise
        manifests = doc.obj(index, f"{where}: index.json").get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise ImageFormatError(f"{where}: index.json has no manifests")
        desc = _select(manifests, ref, where)
        for _ in range(_MAX_INDEX_DEPTH):  # nested indexes: pick the host platform
            if desc.get("mediaType") not in INDEX_TYPES:
                break
            digest, data = layout.read_blob(desc, where)
            sub = doc.obj(doc.parse(data, f"{where}: index {digest}"), f"{where}: index")
            os_, arch = _host_platform()
            cands = [d for d in doc.array(sub.get("manifests") or [], f"{where}: index")
                     if isinstance(d, dict)
                     and doc.string_map(d, "platform", where).get("os") == os_
                     and doc.string_map(d, "platform", where).get("architecture") == arch]
            if not cands:
                raise ImageFormatError(f"{where}: index {digest} has no {os_}/{arch} image")
            desc = cands[0]
        mdigest, mdata = layout.read_blob(desc, where)
        mwhere = f"{where}: manifest {mdigest}"
        manifest = doc.obj(doc.parse(mdata, mwhere), mwhere)
        layer_descs = manifest.get("layers")
        if not isinstance(layer_descs, list):
            raise ImageFormatError(f"{mwhere}: not an image manifest (no layers list)")
        budgets.check("layers", len(layer_descs), f"{mwhere}: lists {len(layer_descs)} layers")
        cfg_digest, cfg_bytes = layout.read_blob(manifest.get("config"), f"{mwhere}: config")
        config = doc.parse(cfg_bytes, f"{mwhere}: config")
        diff_ids = doc.image_config(config, f"{mwhere}: config", len(layer_descs), budgets)
        total = 0
        for i, ld in enumerate(layer_descs):
            lwhere = f"{mwhere}: layer {i}"
            ld = doc.obj(ld, f"{lwhere}: descriptor")
            digest = doc.digest(ld.get("digest"), lwhere)
            size = doc.size(ld, lwhere)
            media_type = doc.optional_str(ld, "mediaType", lwhere)
            fd = layout.open_blob(digest, lwhere)
            path = source.hold(fd, str(Path(root).absolute() / f"blobs/sha256/{digest[7:]}"))
            # a size that differs from the file's is found while the digest is checked
            total += os.fstat(fd).st_size
            budgets.check("image_bytes", total, f"{mwhere}: layer blobs")
            source.layers.append(Layer(
                i, f"{lwhere} ({digest})", lambda p=path: open(p, "rb"),  # noqa: SIM115
                diff_id=diff_ids[i], blob_digest=digest, blob_size=size,
                media_type=media_type, location=(path, 0)))
        assert isinstance(config, dict)  # image_config checked it
        source.config, source.config_bytes, source.digest = config, cfg_bytes, cfg_digest
        source.manifest_digest = mdigest
        return source
    except BaseException:
        source.close()
        raise
    finally:
        layout.close()


# ---------------------------------------------------------------- writing


def write_image_blobs(image: OneLayer, blobs: Path) -> tuple[OciDocuments, list[LayerStats]]:
    """Every layer, the config and the manifest of `image` as blobs of an OCI layout's
    `blobs/sha256` directory (each written whole, then renamed to its digest)."""
    stats = []
    for plan in image.layers():
        part = blobs / ".layer.partial"
        with new_file(part) as f:
            layer = plan.write(f)
        os.replace(part, blobs / layer.diff_id[7:])
        stats.append(layer)
    docs = oci_image_documents(image.config_bytes([x.diff_id for x in stats]), stats)
    for digest, data in ((docs.config_digest, docs.config),
                         (docs.manifest_digest, docs.manifest)):
        with new_file(blobs / digest[7:]) as f:
            f.write(data)
    return docs, stats


def _write_layout(image: OneLayer, tmp: Path, tag: str | None,
                  previous: list[dict[str, Any]], previous_dir: Path | None
                  ) -> tuple[OciDocuments, WrittenImage]:
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    with new_file(tmp / "oci-layout") as f:
        f.write(b'{"imageLayoutVersion":"1.0.0"}')
    docs, stats = write_image_blobs(image, blobs)
    manifests = [docs.descriptor(tag)]
    if tag:
        # Keep the layout's other tags (skopeo's behaviour): link its blobs, merge its index.
        manifests += [d for d in previous
                      if doc.string_map(d, "annotations", "").get(REF_NAME) not in (None, tag)]
        old_blobs = previous_dir / "blobs" / "sha256" if previous_dir else None
        if old_blobs is not None and old_blobs.is_dir():
            for p in old_blobs.iterdir():
                target = blobs / p.name
                if p.is_file() and not p.is_symlink() and not target.exists():
                    try:
                        os.link(p, target)
                    except OSError:
                        shutil.copyfile(p, target, follow_symlinks=False)
    with new_file(tmp / "index.json") as f:
        f.write(index_bytes(manifests))
    written = WrittenImage.of(ImageRef("oci", str(tmp), None, tag), docs.config_digest, stats,
                              docs.manifest_digest)
    return docs, written


def _holds(layout_dir: Path, previous: list[dict[str, Any]], docs: OciDocuments,
           layer_digests: list[str], tag: str | None) -> bool:
    """Does the existing layout already hold exactly this image under `tag`? Its index
    entry must be the same descriptor, and every blob of the image present with the bytes
    its digest names (a layout edited by hand does not pass for unchanged)."""
    if docs.descriptor(tag) not in previous or (tag is None and len(previous) != 1):
        return False
    fd = open_root(layout_dir, str(layout_dir))
    try:
        for digest in (docs.manifest_digest, docs.config_digest, *layer_digests):
            try:
                blob = open_beneath(fd, f"blobs/sha256/{digest[7:]}", str(layout_dir))
            except ImageFormatError:
                return False
            try:
                same = sha256_of(blob) == digest
            finally:
                os.close(blob)
            if not same:
                return False
    finally:
        os.close(fd)
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _install_dir(tmp: Path, dest: Path) -> None:
    """Put the finished layout `tmp` at `dest` (a real directory, never a symlink)."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous layout
        return
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


class LayoutTransport(FileTransport):
    """oci:PATH[:TAG]"""

    name = "oci"

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> ImageSource:
        return read_layout(ref, Path(ref.path or ""), budgets)

    def check_output(self, ref: ImageRef) -> tuple[Path, list[dict[str, Any]] | None]:
        """The directory to write (a symlink resolved: the layout it names is replaced, the
        link stays) and the index entries of the layout already there (None: none)."""
        dest = Path(os.path.realpath(ref.path or ""))
        if not dest.parent.is_dir():
            raise BadInput(f"output {ref}: directory {dest.parent} does not exist")
        if not dest.exists():
            return dest, None
        where = f"output {ref}"
        if not dest.is_dir() or not (dest / "index.json").is_file():
            raise BadInput(f"{where}: {dest} exists and is not an OCI layout; refusing to "
                           "replace it")
        try:
            fd = open_root(dest, where)
            try:
                fd_index = open_beneath(fd, "index.json", where)
            finally:
                os.close(fd)
            try:
                size = os.fstat(fd_index).st_size
                doc.check_size(size, f"{where}: index.json", DEFAULT)
                index = doc.parse(read_all(fd_index, size), f"{where}: index.json")
            finally:
                os.close(fd_index)
            manifests = doc.array(doc.obj(index, f"{where}: index.json").get("manifests"),
                                  f"{where}: index.json manifests")
            entries = [doc.obj(d, f"{where}: index.json entry") for d in manifests]
            for d in entries:
                doc.string_map(d, "annotations", f"{where}: index.json entry")
            return dest, entries
        except ImageFormatError as exc:
            raise BadInput(f"{exc}; refusing to replace a layout tracer cannot read") from None

    def write(self, image: OneLayer, ref: ImageRef, workdir: Path,
              expect_id: str | None = None) -> WrittenImage:
        dest, previous = self.check_output(ref)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with disk_full(dest.parent, image.estimated_size()):
                docs, written = _write_layout(image, tmp, ref.tag, previous or [],
                                              dest if previous is not None else None)
            written.expect(expect_id)
            unchanged = previous is not None and _holds(
                dest, previous, docs, [x.diff_id for x in written.layers], ref.tag)
            if unchanged:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with disk_full(dest.parent):
                    _install_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.ref, written.unchanged = ref, unchanged
        return written

    def identity(self, ref: ImageRef) -> str:
        return file_identity(Path(ref.path or "") / "index.json")
