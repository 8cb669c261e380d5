"""tracer's own state between two processes of one batch, on disk.

`tracer batch --share-base` runs each job in two steps (analyse, then write and verify
on the fleet's shared base) and indexes the layers its images share once, for all of
them: what one process hands the next is plain tracer data (dataclasses: a flattened
index, a smoke run's outcome, a keep-list), written here with pickle because it is
exactly that, fast, and keeps Python's types.

A pickle can run code when it is read, so these files are treated as what they are: the
private state of this batch, never input. They are written atomically with mode 0600 into
a directory tracer made (0700, owned by this user); they are read only from such a
directory, as regular files that are not links and within a size budget, and the reader
rebuilds only tracer's own dataclasses and enums and a few plain standard types (any
other class or function named in the file is refused). A state file that fails any of
this is an error, never a reason to guess.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any

from tracer.errors import BadInput, EnvironmentProblem

_PLAIN = {("pathlib", "PosixPath"), ("pathlib", "Path"), ("builtins", "set"),
          ("builtins", "frozenset"), ("collections", "Counter"),
          ("collections", "OrderedDict")}
MAX_BYTES = 4 << 30  # a state file is tracer's own; this only stops a runaway


class _TracerOnly(pickle.Unpickler):
    """Rebuilds tracer's dataclasses and enums and nothing else (see the module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module == "tracer" or module.startswith("tracer."):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj)
                                          or issubclass(obj, enum.Enum)):
                return obj
        raise BadInput(f"state file: refusing to rebuild {module}.{name} (not tracer data)")


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can write (made 0700 when missing); an
    existing one that is a link, someone else's or writable by others is refused."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise EnvironmentProblem(f"{path}: not a private directory of this user (a link, "
                                 "another owner, or writable by others): tracer keeps its "
                                 "state only in its own")
    return path


def save(obj: object, path: Path) -> None:
    """Write `obj` to `path` (in a private_dir) atomically, readable by this user only."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load(path: Path) -> Any:
    """Read back what `save` wrote (checked as the module doc says)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the state file: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise BadInput(f"{path}: not a state file tracer wrote (not a regular file of "
                           "this user, or writable by others)")
        if st.st_size > MAX_BYTES:
            raise BadInput(f"{path}: state file of {st.st_size} bytes, more than tracer "
                           "ever writes")
        data = f.read()
    return _TracerOnly(io.BytesIO(data)).load()
