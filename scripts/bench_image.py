#!/usr/bin/env python3
"""Benchmark tracer's flatten + write against GNU tar doing the same job.

Builds (with the engine, --network none) a multi-layer image of about SIZE MB in about
FILES files, with whiteouts and rewritten files across layers, then in the same run times:
  tracer: flatten (index every layer of the saved image, reading file bytes in place: no
          extraction) + write a one-layer archive of every path, bytes read from the layers
  GNU tar: `tar -xf` each layer into a dir + `tar -cf` that dir into one tar
  tracer --extract (for reference): flatten that also extracts a host tree, as tracer did
          before it read content in place
and prints the wall times, the ratio (target <= 1.5x) and peak RSS. Saving the image from
the engine is done once, before any timing, and is shared by all.

    python scripts/bench_image.py                 # ~1 GB, ~50,000 files
    python scripts/bench_image.py --size-mb 64 --files 4000   # quick run
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.image import flatten, open_image, parse_reference, write_image  # noqa: E402

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="image content size (MB)")
    ap.add_argument("--files", type=int, default=50_000, help="approximate file count")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: temp)")
    ap.add_argument("--keep-image", action="store_true", help="do not remove the built image")
    ap.add_argument("--image", help="reuse this already built bench image (not removed)")
    args = ap.parse_args()
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
        with open_image(parse_reference(tag), work / "src") as src:
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


if __name__ == "__main__":
    raise SystemExit(main())
