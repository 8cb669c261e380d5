"""Container images: references, reading and writing through one transport interface
(docker-daemon, docker-archive, OCI layout: transports.py), exact layer flattening and
writing a reproducible one-layer image with the original config.

This package knows nothing of ELF or tracing; it turns an image reference into a flattened
filesystem index whose file bytes are read from the layer data on demand, and a kept
subset of that back into an image.
"""

from tracer.image.flatten import flatten
from tracer.image.model import Entry, FlatImage
from tracer.image.output import WrittenImage
from tracer.image.reference import ImageRef, default_output, parse_reference
from tracer.image.sink import write_image
from tracer.image.source import ImageSource, open_image

__all__ = [
    "Entry",
    "FlatImage",
    "ImageRef",
    "ImageSource",
    "WrittenImage",
    "default_output",
    "flatten",
    "open_image",
    "parse_reference",
    "write_image",
]
