"""The docker-daemon transport: images in the local engine's store, read and written.

Every engine call goes through `tracer.engine.connect()`: one client per thread, a
deadline per call, failures mapped to exit 4. Answers are checked before use: an engine
that sends JSON of the wrong shape is an environment problem too, not a crash. Podman,
through its Docker-compatible socket, is this same transport over the same client; where
its answers differ (image names, messages), the engine's Flavour hides it.

Opening an engine image gives one of two `Image`s (interface.py): its layer directories
and the tar-split records of the layers' headers, read in place (`overlay.InPlaceImage`)
when tracer runs as root next to a local engine whose store it knows (Docker's overlay2,
overlay.py; containers-storage's overlay, containers_storage.py), else a `docker save`
into the work dir read as a docker-archive (`open_saved`).
`choose_reader` is the one place that decides, and says why. The flattener reads both
the same way, by the same rules and under the same budgets, so both give the same index.

Writing is go-containerregistry's `daemon.Write`, without the temp file: the one-layer
image is streamed into the engine's load as a docker-archive made while it is sent
(`LoadStream`), so the layer is written once, into the engine. Publishing the verified
candidate, which the engine already has, only hashes the layer to check it is that image
and moves the tag. The image the output tag named before is removed when nothing else
names it.

`EngineImages` tracks the temporary images a run puts into the engine (an input copy that
can run, the candidate) and removes them at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracer.budgets import Budgets
from tracer.engine import Engine, NotInEngine, connect, current_title, transfer_timeout
from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError
from tracer.image import containers_storage
from tracer.image.archive import read_archive, tar_member_header
from tracer.image.diskio import disk_full, new_file
from tracer.image.documents import DIGEST_RE
from tracer.image.interface import Image
from tracer.image.layerwrite import HashingWriter
from tracer.image.output import OneLayer, WrittenImage, json_bytes, tar_member
from tracer.image.overlay import NotReadable, OverlayStorage, in_place_image, locate
from tracer.image.reference import ImageRef
from tracer.image.source import ImageSource
from tracer.workdir import TEMP_REPOSITORY, temp_tag

_CHUNK = 1 << 20


@dataclass(frozen=True)
class EngineImage:
    """What `docker image inspect` says about an image, checked."""

    id: str
    size: int
    tags: tuple[str, ...]
    driver: str
    driver_data: dict[str, str] = field(default_factory=dict)


def _malformed(what: str, detail: str) -> EnvironmentProblem:
    return EnvironmentProblem(f"{current_title()} sent a malformed answer while trying to "
                              f"{what}: {detail}")


def inspect(engine: Engine, name: str) -> EngineImage | None:
    """The engine's view of image `name` (a tag or an id); None when it has none."""
    what = f"inspect image {name}"
    try:
        with engine.lookup(what):
            attrs = engine.api.inspect_image(name)
    except NotInEngine:
        return None
    if not isinstance(attrs, dict):
        raise _malformed(what, "not an object")
    image_id = attrs.get("Id")
    if not isinstance(image_id, str) or not DIGEST_RE.match(image_id):
        raise _malformed(what, f"image id {str(image_id)[:80]!r}")
    size = attrs.get("Size")
    tags = attrs.get("RepoTags") or []
    graph = attrs.get("GraphDriver") or {}
    if not isinstance(graph, dict):
        graph = {}
    data = graph.get("Data") or {}
    if (isinstance(size, bool) or not isinstance(size, int) or not isinstance(tags, list)
            or not all(isinstance(t, str) for t in tags) or not isinstance(data, dict)):
        raise _malformed(what, "unexpected Size, RepoTags or GraphDriver")
    driver = graph.get("Name")
    return EngineImage(image_id, max(size, 0),
                       tuple(engine.flavour.local_name(t) for t in tags),
                       driver if isinstance(driver, str) else "",
                       {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)})


# ---------------------------------------------------------------- reading


# Members `docker save` adds to the archive around the layers (per layer a directory, its
# VERSION, json and layer.tar before Docker 25; blobs and index files after): the engine's
# packaging, not paths of the image. The `entries` budget bounds the image's paths; the
# archive listing gets this much more, so an image the in-place reader accepts is never
# refused by `docker save` for the packaging alone.
_SAVE_MEMBERS_PER_LAYER = 4
_SAVE_MEMBERS_EXTRA = 16


def open_saved(engine: Engine, ref: ImageRef, image: EngineImage, workdir: Path,
               budgets: Budgets, why: str = "") -> ImageSource:
    """The image `docker save`d into `workdir` and opened as a docker-archive (the temp
    archive is removed when the image is closed). Works with any engine, local or remote,
    whatever its storage."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"saved-{image.id[7:19]}-{uuid.uuid4().hex[:8]}.tar"
    transfer = connect(transfer_timeout())
    try:
        # the save streams for as long as the image is big: a deadline on silence only
        with disk_full(workdir, image.size), new_file(tmp) as f, \
                transfer.errors(f"save image {ref}"):
            for chunk in transfer.api.get_image(image.id, chunk_size=_CHUNK):
                f.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    outer = replace(budgets, entries=budgets.entries + _SAVE_MEMBERS_PER_LAYER
                    * budgets.layers + _SAVE_MEMBERS_EXTRA)
    source = read_archive(ImageRef("docker-archive", str(tmp), None, None), tmp, str(ref),
                          workdir, outer, cleanup=[tmp])
    source.ref = ref
    source.reader = f"docker save ({why})" if why else "docker save"
    if source.digest != image.id:
        source.close()
        raise ImageFormatError(f"{ref}: saved config hashes to {source.digest}, the "
                               f"engine says {image.id}")
    return source


READER_ENV = "TRACER_IMAGE_READER"  # auto (default) | save: how engine images are read


@dataclass(frozen=True)
class _Store:
    """An engine store the in-place reader knows, by the driver name the engine gives."""

    name: str  # how the log names its layer directories
    locate: Callable[[str, str, dict[str, str], str, Budgets], OverlayStorage]


_STORES = {"overlay2": _Store("overlay2", locate),
           containers_storage.DRIVER: _Store("containers-storage overlay",
                                             containers_storage.locate)}


def choose_reader(engine: Engine, image: EngineImage, budgets: Budgets
                  ) -> tuple[OverlayStorage | None, str]:
    """Where to read `image` from, and why (said in the run's log): its storage, to read
    in place, when the engine's storage is here and checks out; else None and the reason
    `docker save` is used instead."""
    wanted = os.environ.get(READER_ENV, "auto").strip() or "auto"
    if wanted not in ("auto", "save"):
        raise BadInput(f"{READER_ENV}={wanted!r}: expected auto or save")
    if wanted == "save":
        return None, f"{READER_ENV}=save"
    if not engine.local:
        return None, f"the engine at {engine.address} is not local"
    info = engine.info()
    options = info.get("SecurityOptions") or []
    remapped = [o for o in options if isinstance(o, str)
                and ("name=userns" in o or "name=rootless" in o)]
    if remapped:
        return None, f"the engine runs with {remapped[0]}: its storage holds shifted owners"
    if engine.rootless:
        return None, "the engine runs rootless: its storage holds shifted owners"
    root_dir = info.get("DockerRootDir")
    if not isinstance(root_dir, str) or not root_dir.startswith("/"):
        return None, "the engine names no storage directory"
    store = _STORES.get(image.driver)
    if store is None:
        return None, (f"the image is stored by the {image.driver or 'unknown'!r} driver; "
                      "in-place reading knows overlay2 (Docker) and overlay "
                      "(containers-storage) only")
    try:
        storage = store.locate(image.id, image.driver, image.driver_data, root_dir,
                               budgets)
    except NotReadable as exc:
        return None, str(exc)
    return storage, f"its {store.name} layer directories are readable here"


def open_engine_image(engine: Engine, ref: ImageRef, workdir: Path, budgets: Budgets
                      ) -> Image:
    """The engine image `ref` as an Image: in place when `choose_reader` allows, else
    saved. Both readers are held to the same budgets (the flattener applies them all);
    the engine's own size claim is checked here, before either reads a byte."""
    image = inspect(engine, str(ref.repo_tag))
    if image is None:
        raise BadInput(f"image {ref} is not in {engine.flavour.title}")
    budgets.check("image_bytes", image.size, f"{ref}: the engine says it is "
                  f"{image.size} bytes")
    storage, why = choose_reader(engine, image, budgets)
    if storage is not None:
        return in_place_image(ref, storage, _STORES[image.driver].name)
    return open_saved(engine, ref, image, workdir, budgets, why)


# ---------------------------------------------------------------- the transport


def _split_repo_tag(repo_tag: str) -> tuple[str, str]:
    repo, _, tag = repo_tag.rpartition(":")
    if not repo or "/" in tag:
        return repo_tag, "latest"
    return repo, tag


class DaemonTransport:
    """docker-daemon:NAME[:TAG] (or a bare NAME[:TAG])"""

    name = "docker-daemon"

    def open(self, ref: ImageRef, workdir: Path, budgets: Budgets) -> Image:
        return open_engine_image(connect(), ref, workdir, budgets)

    def check_output(self, ref: ImageRef) -> str:
        if not ref.repo_tag:
            raise BadInput(f"output {ref}: needs an image name")
        return ref.repo_tag

    def write(self, image: OneLayer, ref: ImageRef, workdir: Path,
              expect_id: str | None = None) -> WrittenImage:
        """Make `ref` name `image`. Publishing the verified candidate (`expect_id`, which
        the engine has) only hashes the layer, to check it is that image, and moves the
        tag; anything else is streamed into the engine's load. `workdir` is not used:
        nothing is written on this side."""
        repo_tag = self.check_output(ref)
        engine = connect()
        previous = inspect(engine, repo_tag)
        written = None
        if expect_id is not None and inspect(engine, expect_id) is not None:
            written = _described(image)
            written.expect(expect_id)
            if previous is None or previous.id != written.image_id:
                written = _tag(engine, written, ref, image)
        else:
            written = _load(image, ref, expect_id)
        written.ref = ref
        written.manifest_digest = None  # the engine keeps no manifest of a loaded image
        if previous is not None and previous.id == written.image_id:
            written.unchanged = True
            return written
        if previous is not None:
            _remove_if_untagged(engine, previous.id)
        return written

    def engine_name(self, ref: ImageRef) -> str | None:
        return ref.repo_tag

    def identity(self, ref: ImageRef) -> str:
        image = inspect(connect(), str(ref.repo_tag))
        return image.id if image is not None else "missing"

    def exists(self, ref: ImageRef) -> bool:
        return inspect(connect(), str(ref.repo_tag)) is not None


def _described(image: OneLayer) -> WrittenImage:
    """What writing `image` would give, from hashing its layers: nothing is written."""
    stats = [plan.digest() for plan in image.layers()]
    config = image.config_bytes([x.diff_id for x in stats])
    return WrittenImage.of(ImageRef("docker-daemon", None, None, None),
                           "sha256:" + hashlib.sha256(config).hexdigest(), stats)


def _tag(engine: Engine, written: WrittenImage, ref: ImageRef, image: OneLayer
         ) -> WrittenImage:
    """Point `ref` at the image the engine already has. Another run may remove it between
    the check and the tag (its temp tag was the last name of an identical image): then it
    is loaded after all."""
    repo, tag = _split_repo_tag(str(ref.repo_tag))
    try:
        with engine.lookup(f"tag {written.image_id} as {ref.repo_tag}"):
            engine.api.tag(written.image_id, repo, tag, force=True)
        return written
    except NotInEngine:
        return _load(image, ref, written.image_id)


LAYER_MEMBER = "layer.tar"


def layer_member(index: int, count: int) -> str:
    """The name of layer `index` in the load stream: `layer.tar` alone, else numbered."""
    return LAYER_MEMBER if count == 1 else f"layer{index}.tar"


class LoadStream:
    """`image` as the docker-archive `docker load` reads, made while it is sent.

    The format is `docker save`'s before Docker 25, which every engine loads (the graph
    driver store and the containerd one alike): the layers under fixed names, then the
    config and manifest.json, which name their digests. Each layer's size is planned
    before its first byte (layerwrite.LayerPlan), so its member header comes first; its
    bytes are read from the source's layer data, hashed, and handed on in chunks of about
    1 MiB: the layers are written once, into the engine, and never land on disk here. The
    image id is known once the layers have gone by; when it is not `expect_id`, the stream
    ends before the manifest, so the engine loads nothing. manifest.json tags the image
    `repo_tag`: the engine moves the tag only once the whole image is in. (A layer the
    engine has already, a fleet's shared base, is sent too: `docker load` reads the whole
    archive before it looks; it then keeps the copy it has.)

    An error raised while producing the stream is kept in `failure`: the HTTP client
    reports it as a lost connection, which it is not.
    """

    def __init__(self, image: OneLayer, repo_tag: str, expect_id: str | None) -> None:
        self.image = image
        self.repo_tag = repo_tag
        self.expect_id = expect_id
        self.written: WrittenImage | None = None
        self.failure: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        try:
            yield from self._parts(buf)
            if buf:
                yield bytes(buf)
        except BaseException as exc:
            self.failure = exc
            raise

    def _parts(self, buf: bytearray) -> Iterator[bytes]:
        """Yields full chunks of `buf` (what is left stays in it)."""
        plans = self.image.layers()
        stats = []
        names = [layer_member(i, len(plans)) for i in range(len(plans))]
        for plan, name in zip(plans, names, strict=True):
            buf += tar_member_header(name, plan.size)
            w = HashingWriter(_Append(buf))
            for chunk in plan.chunks():
                w.write(chunk)
                if len(buf) >= _CHUNK:
                    yield bytes(buf)
                    buf.clear()
            layer = plan.stats(w)
            buf += bytes((-layer.size) % tarfile.BLOCKSIZE)
            stats.append(layer)
        config = self.image.config_bytes([x.diff_id for x in stats])
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        written = WrittenImage.of(ImageRef("docker-daemon", None, None, None), image_id, stats)
        written.expect(self.expect_id)
        config_name = f"{image_id[7:]}.json"
        out = io.BytesIO()
        tar_member(out, config_name, config)
        tar_member(out, "manifest.json", json_bytes([{
            "Config": config_name, "RepoTags": [self.repo_tag], "Layers": names}]))
        out.write(bytes(2 * tarfile.BLOCKSIZE))
        buf += out.getvalue()
        self.written = written


class _Append:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def write(self, data: bytes) -> None:
        self.buf += data


def _load(image: OneLayer, ref: ImageRef, expect_id: str | None) -> WrittenImage:
    """Stream `image` into the engine's load (LoadStream); the engine must end up with
    the image and `ref` naming it."""
    stream = LoadStream(image, str(ref.repo_tag), expect_id)
    engine = connect(transfer_timeout())
    errors: list[str] = []
    try:
        with engine.errors(f"load {ref}"):
            for message in engine.api.load_image(iter(stream)):
                if isinstance(message, dict) and message.get("error"):
                    errors.append(str(message["error"]))
    except BaseException:
        if stream.failure is not None:
            raise stream.failure from None
        raise
    if stream.failure is not None:  # raised and swallowed by the HTTP client
        raise stream.failure
    title = engine.flavour.title
    if errors:
        raise EnvironmentProblem(f"{title} refused to load {ref}: {errors[0]}")
    written = stream.written
    if written is None:
        raise EnvironmentProblem(f"{title} answered the load of {ref} before reading all "
                                 "of it")
    loaded = inspect(connect(), str(ref.repo_tag))
    if loaded is None or loaded.id != written.image_id:
        raise EnvironmentProblem(f"{title} loaded {ref} but it names "
                                 f"{loaded.id if loaded else 'nothing'}, not {written.image_id}")
    return written


def _remove_if_untagged(engine: Engine, image_id: str) -> None:
    """Remove an image the output tag named before, when nothing names it any more, so
    nightly runs do not pile up dangling images. In use (a container, a child image):
    it stays."""
    image = inspect(engine, image_id)
    if image is None or image.tags:
        return
    try:
        with engine.lookup(f"remove the previous output {image_id}"):
            engine.api.remove_image(image_id)
    except (NotInEngine, EnvironmentProblem) as exc:
        _warn(f"left the previous output image {image_id[:19]} in the engine: {exc}")


def _warn(message: str) -> None:
    print(f"tracer: warning: {message}", file=sys.stderr, flush=True)


class EngineImages:
    """Temporary images this run put into the engine; their tags are removed at the end
    (an image then named by nothing is removed with its tag). Usable from any thread:
    every call goes through that thread's own engine client."""

    def __init__(self, warn: Callable[[str], None] = _warn) -> None:
        connect()  # no engine: said now, before any work
        self.tags: list[str] = []
        self._warn = warn

    @property
    def engine(self) -> Engine:
        """The calling thread's engine client."""
        return connect()

    def temp_ref(self, name: str, purpose: str) -> ImageRef:
        """A new, unique engine reference for a temporary image of profile `name`."""
        # the tag names this process, so a later run removes it if this one is killed
        tag = temp_tag(purpose)
        # profile names allow `app-` or `a..b`, which are no valid repository names
        repo = TEMP_REPOSITORY + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                                  or "image")
        self.tags.append(f"{repo}:{tag}")
        return ImageRef(transport="docker-daemon", path=None, name=repo, tag=tag)

    def image_id(self, ref: ImageRef) -> str:
        """The id of temp image `ref` (it must be there)."""
        image = inspect(self.engine, str(ref.repo_tag))
        if image is None:
            raise EnvironmentProblem(f"the temporary image {ref} vanished from the engine")
        return image.id

    def cleanup(self) -> None:
        """Remove every temp tag; a failure is reported, never raised over the run's
        own outcome."""
        engine = self.engine
        for tag in self.tags:
            try:
                with engine.lookup(f"remove the temporary image {tag}"):
                    engine.api.remove_image(tag, force=True, noprune=False)
            except NotInEngine:
                pass
            except EnvironmentProblem as exc:
                self._warn(str(exc))
        self.tags.clear()

