"""The docker-archive transport: the `docker save` tar, read in place and written.

Reading: the outer tar is listed once (offsets of its members), manifest.json names the
config and the layers, and each layer is a window into the archive file: nothing is
extracted. Members named by the manifest may be symlinks or hardlinks inside the archive
(`docker save` links duplicate layers to one copy); they are followed by name within the
archive only, and a link that climbs out of it is refused. The archive itself is opened
once and read through that descriptor.

Writing: the format `docker save` of Docker 25 writes, which is at the same time an OCI
image layout: `blobs/sha256/<digest>` for the layer, the config and an OCI manifest, plus
`index.json`, `oci-layout` and Docker's `manifest.json`. Older engines read only
manifest.json and the blobs it names; the manifest blob gives the archive a manifest
digest. Every header is fixed (mtime 0, no owner names), so the same image gives the
same bytes.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import posixpath
import re
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.budgets import Budgets
from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError, no_space
from tracer.image import documents as doc
from tracer.image.diskio import NO_SPACE, disk_full, new_file
from tracer.image.inputfiles import file_identity, open_input_file
from tracer.image.output import (
    OneLayer,
    WrittenImage,
    index_bytes,
    json_bytes,
    oci_image_documents,
    tar_member,
)
from tracer.image.reference import ImageRef
from tracer.image.source import FileTransport, ImageSource
from tracer.image.streams import Layer, LayerStream, Region, sniff_compression

_HEX_JSON = re.compile(r"^([0-9a-f]{64})\.json$")
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_MAX_LINK_HOPS = 8
_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeDecodeError)


@dataclass
class _Members:
    """Where each regular member of the outer tar lies, and its link members."""

    path: str  # names the archive file (/proc/self/fd/N of the descriptor held open)
    where: str
    regular: dict[str, tuple[int, int]]  # name -> (offset, size)
    links: dict[str, str]  # name -> target name, both relative to the archive root

    def locate(self, name: str) -> tuple[int, int]:
        """(offset, size) of the regular member `name`, following links inside the archive."""
        start = name
        name = _clean(name, self.where)
        for _ in range(_MAX_LINK_HOPS):
            if name in self.regular:
                return self.regular[name]
            if name not in self.links:
                raise ImageFormatError(f"{self.where}: manifest.json names {start!r}, which "
                                       "is not in the archive (missing blob)")
            name = self.links[name]
        raise ImageFormatError(f"{self.where}: {start!r}: too many links in a row")

    def read(self, name: str, budgets: Budgets) -> bytes:
        """A JSON member's bytes, refused over the json_bytes budget before reading."""
        off, size = self.locate(name)
        doc.check_size(size, f"{self.where}: {name}", budgets)
        r = Region(self.path, off, size)
        try:
            data = r.read()
        finally:
            r.close()
        if len(data) != size:
            raise ImageFormatError(f"{self.where}: {name} is truncated")
        return data


def _clean(name: str, where: str) -> str:
    """A member name relative to the archive root; one that climbs out of it is refused."""
    cleaned = posixpath.normpath("/" + name).lstrip("/") if name.startswith("/") \
        else posixpath.normpath(name)
    if cleaned in (".", "") or cleaned == ".." or cleaned.startswith("../"):
        raise ImageFormatError(f"{where}: member or link {name!r} points outside the archive")
    return cleaned


def _list_members(path: str, where: str, budgets: Budgets) -> _Members:
    regular: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    count = 0
    try:
        with tarfile.open(path, "r:") as tf:
            for ti in tf:
                count += 1
                budgets.check("entries", count, f"{where}: archive members")
                name = posixpath.normpath(ti.name.lstrip("/"))
                if ti.isreg():
                    regular[name] = (ti.offset_data, ti.size)
                elif ti.issym():
                    target = ti.linkname if ti.linkname.startswith("/") else \
                        posixpath.join(posixpath.dirname(name), ti.linkname)
                    links[name] = target
                elif ti.islnk():
                    links[name] = ti.linkname
    except _TAR_ERRORS as exc:
        raise ImageFormatError(f"{where}: not a readable tar archive: {exc}") from None
    except OSError as exc:
        raise ImageFormatError(f"{where}: cannot read the archive: {exc}") from None
    checked = {}
    for name, target in links.items():
        # a symlink's target resolves inside the archive; absolute = from the archive root
        checked[name] = _clean(target, where)
    return _Members(path, where, regular, checked)


def _gunzip(src_fd: int, where: str, workdir: Path, budgets: Budgets) -> Path:
    """Decompress a gzipped archive into the work dir (a tar cannot be indexed in place
    while compressed).

    The outer gzip is a compressed blob like any layer, so the same LayerStream bounds it:
    at most `expansion` times the file's size (or expansion_floor) and image_bytes; a 1 MB
    `docker save | gzip` that inflates to 1 GiB is refused after about 100 MB, not spooled
    whole into TMPDIR. A full disk names the size the archive will really have (gzip's
    trailer; never more than the budgets allow), not four times the compressed size.
    """
    plain = workdir / f"archive-{uuid.uuid4().hex[:12]}.tar"
    outer = f"{where} (gzip-compressed archive)"
    raw = open(f"/proc/self/fd/{src_fd}", "rb")  # noqa: SIM115 - closed by the stream
    stream = LayerStream(raw, outer, compression="gzip", blob_digest=None, blob_size=None,
                         diff_id=None, budgets=budgets)
    try:
        with new_file(plain) as dst:
            while True:
                try:
                    chunk = stream.read(1 << 20)
                except (OSError, EOFError, zlib.error) as exc:
                    raise ImageFormatError(f"{where}: corrupt gzip: {exc}") from None
                if not chunk:
                    break
                dst.write(chunk)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space(workdir, stream.estimated_size()) from None
        raise EnvironmentProblem(f"{where}: cannot write the decompressed archive to "
                                 f"{plain}: {exc.strerror or exc}") from None
    finally:
        stream.close()
    return plain


def read_archive(ref: ImageRef, path: Path, where: str, workdir: Path, budgets: Budgets,
                 cleanup: list[Path] | None = None) -> ImageSource:
    """Open the docker-archive at `path` (`where` names it in messages). `cleanup` lists
    temp files (a saved engine image) the source removes on close."""
    source = ImageSource(ref, {}, b"", "", [], [p.absolute() for p in cleanup or []])
    try:
        fd = open_input_file(path, where)
        name = source.hold(fd, str(Path(path).absolute()))
        if sniff_compression(os.pread(fd, 4, 0)) == "gzip":
            plain = _gunzip(fd, where, workdir, budgets)
            source._cleanup.append(plain)
            name = str(plain)
        members = _list_members(name, where, budgets)
        manifest = doc.parse(members.read("manifest.json", budgets), f"{where}: manifest.json")
        entry = _select_image(manifest, ref, where)
        cfg_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(cfg_name, str) or not isinstance(layer_names, list):
            raise ImageFormatError(f"{where}: manifest.json entry lacks Config/Layers")
        budgets.check("layers", len(layer_names), f"{where}: manifest.json lists "
                      f"{len(layer_names)} layers")
        if not all(isinstance(n, str) for n in layer_names):
            raise ImageFormatError(f"{where}: manifest.json Layers must be strings")
        cfg_bytes = members.read(cfg_name, budgets)
        digest = "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()
        m = _HEX_JSON.match(posixpath.basename(cfg_name)) or _BLOB.match(cfg_name)
        if m and digest != f"sha256:{m.group(1)}":
            raise ImageFormatError(f"{where}: digest mismatch: config {cfg_name} hashes to "
                                   f"{digest}")
        config = doc.parse(cfg_bytes, f"{where}: {cfg_name}")
        diff_ids = doc.image_config(config, f"{where}: {cfg_name}", len(layer_names), budgets)
        for i, lname in enumerate(layer_names):
            off, size = members.locate(lname)
            bm = _BLOB.match(posixpath.normpath(lname))
            source.layers.append(Layer(
                i, f"{where}: layer {i} ({lname})",
                lambda off=off, size=size: Region(members.path, off, size),
                diff_id=diff_ids[i], blob_digest=f"sha256:{bm.group(1)}" if bm else None,
                blob_size=size, location=(members.path, off)))
        assert isinstance(config, dict)  # image_config checked it
        source.config, source.config_bytes, source.digest = config, cfg_bytes, digest
        return source
    except BaseException:
        source.close()
        raise


def _select_image(manifest: object, ref: ImageRef, where: str) -> dict[str, Any]:
    images = doc.array(manifest, f"{where}: manifest.json")
    if not images:
        raise ImageFormatError(f"{where}: manifest.json lists no image")
    images = [doc.obj(m, f"{where}: manifest.json entry") for m in images]

    def tags(m: dict[str, Any]) -> list[str]:
        value = m.get("RepoTags")
        return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []

    if ref.name:
        wanted = {ref.repo_tag, f"docker.io/{ref.repo_tag}", f"docker.io/library/{ref.repo_tag}"}
        for m in images:
            if wanted & set(tags(m)):
                return m
        raise BadInput(f"{where}: no image tagged {ref.repo_tag} (has: "
                       f"{[t for m in images for t in tags(m)][:20]})")
    if len(images) != 1:
        raise BadInput(f"{where}: holds {len(images)} images; name one as "
                       "docker-archive:PATH:NAME:TAG")
    return images[0]


# ---------------------------------------------------------------- writing


def write_archive_file(image: OneLayer, dest: Path, repo_tag: str | None) -> WrittenImage:
    """Write the archive as the new file `dest` (the caller renames it into place).

    Each layer goes first, streamed right after a placeholder header that is patched once
    its digest and size are known, so the content is written exactly once."""
    with new_file(dest) as f:
        stats = []
        names = []
        for plan in image.layers():
            start = f.tell()
            f.write(bytes(tarfile.BLOCKSIZE))
            layer = plan.write(f)
            f.write(bytes((-layer.size) % tarfile.BLOCKSIZE))
            end = f.tell()
            name = f"blobs/sha256/{layer.diff_id[7:]}"
            f.seek(start)
            f.write(tar_member_header(name, layer.size))
            f.seek(end)
            stats.append(layer)
            names.append(name)
        docs = oci_image_documents(image.config_bytes([x.diff_id for x in stats]), stats)
        for digest, data in ((docs.config_digest, docs.config),
                             (docs.manifest_digest, docs.manifest)):
            tar_member(f, f"blobs/sha256/{digest[7:]}", data)
        tar_member(f, "index.json", index_bytes([docs.descriptor(None, repo_tag)]))
        tar_member(f, "manifest.json", json_bytes([{
            "Config": f"blobs/sha256/{docs.config_digest[7:]}",
            "RepoTags": [repo_tag] if repo_tag else None,
            "Layers": names}]))
        tar_member(f, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        f.write(bytes(2 * tarfile.BLOCKSIZE))
    return WrittenImage.of(ImageRef("docker-archive", str(dest), None, None),
                           docs.config_digest, stats, docs.manifest_digest)


def tar_member_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 0
    return ti.tobuf(tarfile.USTAR_FORMAT)


class ArchiveTransport(FileTransport):
    """docker-archive:PATH[:NAME[:TAG]]"""

    name = "docker-archive"

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> ImageSource:
        return read_archive(ref, Path(ref.path or ""), f"docker-archive {ref.path}", workdir,
                            budgets)

    def check_output(self, ref: ImageRef) -> Path:
        """The file to write (a symlink is resolved: its target is replaced, not the link)."""
        dest = Path(os.path.realpath(ref.path or ""))
        if not dest.parent.is_dir():
            raise BadInput(f"output {ref}: directory {dest.parent} does not exist")
        if dest.is_dir():
            raise BadInput(f"output {ref}: {dest} is a directory")
        return dest

    def write(self, image: OneLayer, ref: ImageRef, workdir: Path,
              expect_id: str | None = None) -> WrittenImage:
        dest = self.check_output(ref)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with disk_full(dest.parent, image.estimated_size()):
                written = write_archive_file(image, tmp, ref.repo_tag)
            written.expect(expect_id)
            unchanged = dest.is_file() and os.path.getsize(dest) == os.path.getsize(tmp) \
                and filecmp.cmp(tmp, dest, shallow=False)
            if unchanged:
                tmp.unlink()
            else:
                os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.ref, written.unchanged = ref, unchanged
        return written

    def identity(self, ref: ImageRef) -> str:
        return file_identity(Path(ref.path or ""))
