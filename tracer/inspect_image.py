"""Read-only questions about an image that need no container: `tracer ldd`."""

from __future__ import annotations

from tracer.image.flatten import flatten
from tracer.image.reference import parse_reference
from tracer.image.source import open_image
from tracer.pipeline import effective_argv, image_env, workdir
from tracer.profile_model import Profile
from tracer.static import Closure, Resolver


def ldd(image: str, paths: list[str]) -> Closure:
    """ELF closure of `paths` (default: entrypoint + cmd's program) inside `image`."""
    ref = parse_reference(image)
    with workdir() as work:
        with open_image(ref, work / "source") as source:
            flat = flatten(source, work / "root")
        roots = list(paths)
        if not roots:
            argv = effective_argv(Profile(name="ldd", image=image), flat.config)
            roots = argv[:1]
        env = image_env(flat.config, {})
        return Resolver(flat.rootfs(), env=env).closure(roots)
