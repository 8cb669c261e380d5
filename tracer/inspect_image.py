"""Read-only questions about an image that need no container: `tracer ldd`."""

from __future__ import annotations

from tracer.budgets import DEFAULT, Budgets
from tracer.image.config import ImageConfig
from tracer.image.reference import RefOptions, parse_reference
from tracer.image.transports import read_image
from tracer.static import Closure, Resolver
from tracer.workdir import workdir


def ldd(image: str, paths: list[str], budgets: Budgets = DEFAULT,
        options: RefOptions | None = None) -> Closure:
    """ELF closure of `paths` (default: entrypoint + cmd's program) inside `image`.

    `budgets` (the command line's --budget) bound reading the image and resolving;
    path_walk is handed to the image's RootFS here, explicitly: FlatImage.rootfs() makes
    its one RootFS on the first call, and a call without the limit would fix the default.
    `options`: --tls-verify, --cert-dir and --platform for a registry image.
    """
    ref = parse_reference(image).with_options(options or RefOptions())
    with workdir() as work:
        flat, _how = read_image(ref, work, budgets)  # in place where it can
        config = ImageConfig.from_image_json(flat.config, str(ref))
        roots = list(paths) or config.command(None, None)[:1]
        env = config.environment()
        root = flat.rootfs(budgets.path_walk)
        return Resolver(root, env=env, budgets=budgets).closure(roots)
