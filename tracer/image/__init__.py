"""Container images: references, reading through one interface, flattening, writing.

The shape is go-containerregistry's `pkg/v1`:
- interface.py: `Image` (config, identity, ordered layers) and `Layer` (digests, size,
  media type, opened as a `TarStream`), the `Transport` that opens and writes them;
- one module per transport, registered by skopeo transport name in transports.py:
  daemon.py (the engine's store: overlay.py in place, else `docker save`), archive.py
  (docker-archive), layout.py (oci), registry.py (docker://, through skopeo.py);
- flatten.py: the only reader of an `Image`, giving the `FlatImage` index (model.py);
- writing as functions of (flat image, keep-list): sink.one_layer makes the image,
  a transport's `write` puts it somewhere (sink.write_image does both).

This package knows nothing of ELF or tracing. Within it, modules import each other at
module level only, in one direction (tests/test_image_imports.py checks there is no cycle).
"""

from tracer.image.flatten import flatten
from tracer.image.interface import Image, InDirectory, InFile, Layer, TarStream, Transport
from tracer.image.model import Entry, FlatImage
from tracer.image.output import OneLayer, WrittenImage
from tracer.image.reference import ImageRef, default_output, parse_reference
from tracer.image.sink import one_layer, write_image
from tracer.image.transports import TRANSPORTS, open_image, read_image, register, transport

__all__ = [
    "TRANSPORTS",
    "Entry",
    "FlatImage",
    "Image",
    "ImageRef",
    "InDirectory",
    "InFile",
    "Layer",
    "OneLayer",
    "TarStream",
    "Transport",
    "WrittenImage",
    "default_output",
    "flatten",
    "one_layer",
    "open_image",
    "parse_reference",
    "read_image",
    "register",
    "transport",
    "write_image",
]
