"""Read-only questions about an image that need no container: `tracer ldd`."""

from __future__ import annotations

from tracer.budgets import DEFAULT, Budgets
from tracer.image.config import ImageConfig
from tracer.image.reference import parse_reference
from tracer.image.transports import read_image
from tracer.static import Closure, Resolver
from tracer.workdir import workdir


def ldd(image: str, paths: list[str], budgets: Budgets = DEFAULT) -> Closure:
    """ELF closure of `paths` (default: entrypoint + cmd's program) inside `image`.

    `budgets` (the command line's --budget) bound reading the image and resolving.
    """
    ref = parse_reference(image)
    with workdir() as work:
        flat, _how = read_image(ref, work, budgets)  # in place where it can
        config = ImageConfig.from_image_json(flat.config, str(ref))
        roots = list(paths) or config.command(None, None)[:1]
        env = config.environment()
        return Resolver(flat.rootfs(), env=env, budgets=budgets).closure(roots)
