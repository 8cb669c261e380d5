"""`#!` scripts and PATH lookups inside the image.

A script's real dependency is its interpreter (and that interpreter's ELF closure). The
kernel takes the `#!` path literally; `#!/usr/bin/env NAME` then finds NAME on the PATH of
the process, which for a container is the image's (or profile's) Env PATH, so lookups run
inside the image, never on the host.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from tracer.rootfs import RootFS, SymlinkLoop

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BINPRM_BUF_SIZE = 256  # the kernel reads at most this much of the #! line


@dataclass(frozen=True)
class Shebang:
    """A parsed `#!` line: the interpreter path and its single optional argument."""

    interpreter: str
    arg: str | None

    def env_program(self) -> str | None:
        """NAME when the line is `#!/usr/bin/env [-S] [-opts] NAME ...`, else None."""
        if self.interpreter.rsplit("/", 1)[-1] != "env" or not self.arg:
            return None
        for word in self.arg.split():
            if word.startswith("-") or "=" in word:
                continue  # env options and VAR=value assignments
            return word
        return None


def parse_shebang(head: bytes) -> Shebang | None:
    """Parse the first line of a file as the kernel's binfmt_script does."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:BINPRM_BUF_SIZE].split(b"\n", 1)[0].strip(b" \t\r")
    if not line:
        return None
    interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
    arg = arg.strip(b" ")
    return Shebang(
        interp.decode("utf-8", "surrogateescape"),
        arg.decode("utf-8", "surrogateescape") or None,
    )


def which(root: RootFS, name: str, path_env: str) -> str | None:
    """First executable regular file called `name` on `path_env`, as an in-image path.

    A name with a slash is taken as a path (as execvp does). The returned path is the one
    the program would be started as, before symlink resolution, so its links get kept.
    """
    if "/" in name:
        return name if _is_exec(root, name) else None
    for d in path_env.split(":"):
        d = d or "/"  # an empty element means the working directory; "/" in a container
        cand = d.rstrip("/") + "/" + name
        if _is_exec(root, cand):
            return cand
    return None


def _is_exec(root: RootFS, path: str) -> bool:
    try:
        st = root.stat(path)
    except SymlinkLoop:
        return False
    return st is not None and stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)

