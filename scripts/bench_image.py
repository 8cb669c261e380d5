#!/usr/bin/env python3
"""Benchmark tracer's image reading and writing.

    python scripts/bench_image.py [flatten] [--size-mb N --files N]   # flatten+write vs GNU tar
    python scripts/bench_image.py readers [--apt] [IMAGE ...]   # in place vs docker save
    python scripts/bench_image.py write [--apt] [IMAGE ...]     # output into the engine

flatten (the default): builds (with the engine, --network none) a multi-layer image of
about SIZE MB in about FILES files, with whiteouts and rewritten files across layers, then
in the same run times:
  tracer: flatten (index every layer of the saved image, reading file bytes in place: no
          extraction) + write a one-layer archive of every path, bytes read from the layers
  GNU tar: `tar -xf` each layer into a dir + `tar -cf` that dir into one tar
  tracer --extract (for reference): flatten that also extracts a host tree, as tracer did
          before it read content in place
and prints the wall times, the ratio (target <= 1.5x) and peak RSS. Saving the image from
the engine is done once, before any timing, and is shared by all.

readers: for each engine image (default: the fixture images), the read phase both ways:
in place (the engine's layer directories and tar-split records) and `docker save` + the
archive reader; median of --repeat runs, page cache warm. Target: in place at most 1 s
for a 700 MB, 15,000-file image; `--apt` builds one (FROM the base fixture, apt packages
installed with --network host; kept as tracer-test/bench-apt:TAG for the next run).

write: each image written whole as a one-layer image into the engine, the way an input
that is not in the engine is loaded: before (the archive written to the work dir, then
`docker load`ed from it) and now (streamed into the engine's load, nothing written here),
alternating, the image removed between runs; then publishing it under a second tag with
the candidate's id (hash the layer, move the tag).

    python scripts/bench_image.py                 # ~1 GB, ~50,000 files
    python scripts/bench_image.py --size-mb 64 --files 4000   # quick run
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.budgets import DEFAULT  # noqa: E402
from tracer.engine import connect  # noqa: E402
from tracer.image import flatten, open_image, parse_reference, write_image  # noqa: E402
from tracer.image.daemon import choose_reader, inspect, open_saved  # noqa: E402
from tracer.image.overlay import in_place_image  # noqa: E402

DOCKERFILE = """\
FROM tracer-fixture/base:bookworm
ARG HALF
ARG CHUNK
RUN mkdir -p /bench/a && cd /bench/a && head -c $HALF /dev/urandom | split -b $CHUNK -a 5 - f
RUN mkdir -p /bench/b && cd /bench/b && head -c $HALF /dev/urandom | split -b $CHUNK -a 5 - g \\
 && rm -f /bench/a/f*a && head -c $CHUNK /dev/urandom > /bench/a/faaaab
RUN rm -rf /bench/b/g*b && chmod 4755 /bench/a/faaaac && ln /bench/a/faaaac /bench/a/link
"""


def _run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def bench_flatten(args: argparse.Namespace) -> int:
    size = args.size_mb << 20
    chunk = max(1, size // args.files)
    tag = args.image or f"tracer-test/bench:{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="tracer-bench-", dir=args.workdir))
    if args.image:
        args.keep_image = True
    try:
        if not args.image:
            ctx = work / "ctx"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(DOCKERFILE)
            print(f"building {tag}: {args.size_mb} MB in ~{args.files} files ...", flush=True)
            res = subprocess.run(["docker", "build", "--network", "none", "--force-rm", "-q",
                                  "-t", tag,
                                  "--build-arg", f"HALF={size // 2}", "--build-arg",
                                  f"CHUNK={chunk}", str(ctx)], capture_output=True, text=True)
            if res.returncode:
                print(res.stdout, res.stderr, file=sys.stderr)
                return 1
        engine = connect()
        image = inspect(engine, tag)
        assert image is not None, tag
        # `docker save`d once: the layers as tars, for tracer and GNU tar alike
        with open_saved(engine, parse_reference(tag), image, work / "src", DEFAULT) as src:
            # GNU tar gets the same layer bytes as plain files (not timed).
            layer_files = []
            for layer in src.layers:
                p = work / f"layer{layer.index}.tar"
                raw = layer.open_raw()
                with open(p, "wb") as f:
                    while chunk_bytes := raw.read(1 << 20):
                        f.write(chunk_bytes)
                raw.close()
                layer_files.append(p)

            os.sync()  # flush the saved archive first: dirty pages would bias whoever runs next
            t0 = time.perf_counter()
            flat = flatten(src, work / "tracer-root")
            t_flat = time.perf_counter() - t0
            written = write_image(flat, list(flat.entries),
                                  parse_reference(f"docker-archive:{work / 'tracer-out.tar'}"),
                                  workdir=work / "w", comment="bench")
            t_tracer = time.perf_counter() - t0
            os.sync()
            t0 = time.perf_counter()
            flatten(src, work / "tracer-extract", extract=True)
            t_extract = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        (work / "tar-root").mkdir()
        os.sync()
        t0 = time.perf_counter()
        for p in layer_files:
            _run(["tar", "-xf", str(p), "-C", str(work / "tar-root")])
        t_x = time.perf_counter() - t0
        _run(["tar", "-cf", str(work / "tar-out.tar"), "-C", str(work / "tar-root"), "."])
        t_tar = time.perf_counter() - t0

        mb = 2**20
        print(f"layers: {len(layer_files)}; final files: {flat.file_count()}; content: "
              f"{flat.content_size() / mb:.0f} MB; output layer {written.layer_size / mb:.0f} MB")
        print(f"tracer flatten+write: {t_tracer:.2f} s ({t_flat:.2f} + {t_tracer - t_flat:.2f})")
        print(f"tracer flatten with --extract (old behaviour, reference): {t_extract:.2f} s")
        print(f"GNU tar extract+create: {t_tar:.2f} s ({t_x:.2f} + {t_tar - t_x:.2f})")
        print(f"ratio: {t_tracer / t_tar:.2f}x (target <= 1.5x)")
        print(f"peak RSS (tracer process): {rss_mb:.0f} MB")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep_image:
            subprocess.run(["docker", "rmi", "-f", tag], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- readers and writers

FIXTURES = ["tracer-fixture/base:bookworm", "tracer-fixture/nginx:test",
            "tracer-fixture/pyapp:test", "tracer-fixture/hardcases:test",
            "tracer-fixture/layers:test"]
# ~780 MB and ~15,900 paths on Debian 12: the size the in-place target names
APT_DOCKERFILE = """\
FROM tracer-fixture/base:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \\
      --no-install-recommends build-essential python3 git && rm -rf /var/lib/apt/lists/*
"""
MB = 1e6


def apt_image() -> str:
    """The big apt image, built once (its tag is the Dockerfile's hash, so it is reused)."""
    tag = "tracer-test/bench-apt:" + hashlib.sha256(APT_DOCKERFILE.encode()).hexdigest()[:12]
    have = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    if have.returncode == 0:
        return tag
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(APT_DOCKERFILE)
        print(f"building {tag} (apt, --network host) ...", flush=True)
        built = subprocess.run(["docker", "build", "--network", "host", "--force-rm", "-q",
                                "-t", tag, ctx], capture_output=True, text=True,
                               env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if built.returncode:
            raise SystemExit(f"building {tag} failed:\n{built.stderr}")
    return tag


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _images(args: argparse.Namespace) -> list[str]:
    images = list(args.images) or [i for i in FIXTURES if subprocess.run(
        ["docker", "image", "inspect", i], capture_output=True).returncode == 0]
    if args.apt:
        images.append(apt_image())
    return images


def bench_readers(args: argparse.Namespace) -> int:
    engine = connect()
    print(f"{'image':42} {'paths':>7} {'MB':>6} {'in place':>9} {'docker save':>12} {'ratio':>6}")
    for name in _images(args):
        ref = parse_reference(name)
        image = inspect(engine, name)
        assert image is not None, name
        storage, reason = choose_reader(engine, image, DEFAULT)
        if storage is None:
            print(f"{name}: in place is not possible here: {reason}")
            return 1
        times: dict[str, list[float]] = {"in place": [], "save": []}
        flat = None
        for _ in range(args.repeat):
            for how in ("in place", "save"):
                work = Path(tempfile.mkdtemp(prefix="tracer-bench-", dir=args.workdir))
                try:
                    t0 = time.perf_counter()
                    opened = in_place_image(ref, storage) if how == "in place" else \
                        open_saved(engine, ref, image, work / "source", DEFAULT)
                    with opened as src:
                        flat = flatten(src, work / "root")
                    times[how].append(time.perf_counter() - t0)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        assert flat is not None
        inplace, save = _median(times["in place"]), _median(times["save"])
        print(f"{name:42} {len(flat.entries):7,} {flat.content_size() / MB:6.0f} "
              f"{inplace:8.3f}s {save:11.3f}s {save / inplace:5.1f}x", flush=True)
    return 0


def _load_file(archive: Path) -> None:
    """The old way: `docker load` of an archive tracer wrote first."""
    from tracer.engine import transfer_timeout

    engine = connect(transfer_timeout())
    with open(archive, "rb") as f:
        for message in engine.api.load_image(f):
            assert not (isinstance(message, dict) and message.get("error")), message


def bench_write(args: argparse.Namespace) -> int:
    from tracer.image.archive import write_archive_file
    from tracer.image.daemon import DaemonTransport, EngineImages
    from tracer.image.sink import one_layer

    print(f"{'image':42} {'layer MB':>8} {'before: write + load':>21} {'now: streamed':>14} "
          f"{'publish before':>15} {'publish now':>12}")
    for name in _images(args):
        work = Path(tempfile.mkdtemp(prefix="tracer-bench-", dir=args.workdir))
        tag = f"tracer-test/bench-write:{uuid.uuid4().hex[:8]}"
        published = f"{tag}-published"
        images = EngineImages()  # only its engine client: nothing is tracked
        try:
            with open_image(parse_reference(name), work / "src") as src:
                flat = flatten(src, work / "root")
            image = one_layer(flat, list(flat.entries), comment="bench")
            before: list[float] = []
            now: list[float] = []
            image_id = ""
            for i in range(args.repeat):
                for how in ("before", "now") if i % 2 == 0 else ("now", "before"):
                    t0 = time.perf_counter()
                    if how == "before":
                        archive = work / "out.tar"
                        written = write_archive_file(image, archive, tag)
                        _load_file(archive)
                        archive.unlink()
                    else:
                        written = DaemonTransport().write(image, parse_reference(tag), work)
                    (before if how == "before" else now).append(time.perf_counter() - t0)
                    image_id = written.image_id
                    assert inspect(images.engine, tag).id == image_id  # type: ignore[union-attr]
                    subprocess.run(["docker", "rmi", tag], capture_output=True, check=True)
            DaemonTransport().write(image, parse_reference(tag), work)  # the candidate
            t0 = time.perf_counter()  # before: the archive was written to learn the id
            archive = work / "out.tar"
            write_archive_file(image, archive, published).expect(image_id)
            images.engine.api.tag(image_id, published.rsplit(":", 1)[0], "old", force=True)
            archive.unlink()
            publish_before = time.perf_counter() - t0
            t0 = time.perf_counter()
            DaemonTransport().write(image, parse_reference(published), work, expect_id=image_id)
            publish = time.perf_counter() - t0
            print(f"{name:42} {written.layer_size / MB:8.0f} {_median(before):20.3f}s "
                  f"{_median(now):13.3f}s {publish_before:14.3f}s {publish:11.3f}s", flush=True)
        finally:
            subprocess.run(["docker", "rmi", "-f", tag, published,
                            published.rsplit(":", 1)[0] + ":old"], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="flatten", choices=["flatten", "readers",
                                                                    "write"])
    ap.add_argument("images", nargs="*", help="readers/write: engine images (default: "
                    "the fixtures)")
    ap.add_argument("--apt", action="store_true", help="readers/write: also the ~780 MB, "
                    "~15,900-path apt image (built once)")
    ap.add_argument("--repeat", type=int, default=3, help="readers/write: runs per image")
    ap.add_argument("--size-mb", type=int, default=1024, help="image content size (MB)")
    ap.add_argument("--files", type=int, default=50_000, help="approximate file count")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: temp)")
    ap.add_argument("--keep-image", action="store_true", help="do not remove the built image")
    ap.add_argument("--image", help="reuse this already built bench image (not removed)")
    args = ap.parse_args()
    return {"flatten": bench_flatten, "readers": bench_readers, "write": bench_write}[
        args.what](args)


if __name__ == "__main__":
    raise SystemExit(main())
