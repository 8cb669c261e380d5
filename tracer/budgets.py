"""Resource budgets: how much work an untrusted input may cost before tracer refuses it.

An image, a profile and everything a container writes are hostile input (README,
"Security model"). A few kilobytes of crafted input must not cost minutes or gigabytes:
a gzip layer that inflates to the size of the disk, a manifest naming one layer 200,000
times, an ELF with thousands of RPATH entries. Each such dimension has a budget here with
a default that real images stay far below; crossing one is bad input (exit 2) with a
message that names the budget and how to raise it. Operators raise a budget for one run
with `--budget NAME=VALUE` or for a profile with `budgets: {NAME: VALUE}`.

Budgets are plain data passed to the stage that spends them (no global state), so a
stage's tests can use small ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from tracer.errors import BadInput

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Budgets:
    """Limits per run. Sizes are bytes; counts are plain numbers."""

    # -- reading images -------------------------------------------------------------------
    image_bytes: int = 32 * GiB  # uncompressed bytes of all layers of one image
    expansion: int = 100  # a compressed layer may inflate to this many times its size ...
    expansion_floor: int = 64 * MiB  # ... or to this, whichever is larger
    layers: int = 500  # layers of one image (Docker's overlay2 stops at 128)
    entries: int = 2_000_000  # paths of one image (and layer); uses and fanotify events kept
    path_length: int = 4096  # bytes of one in-image path or link target (PATH_MAX)
    index_bytes: int = 512 * MiB  # bytes of all paths of one flattened image (index memory)
    path_walk: int = 20_000_000  # components image symlinks add to lookups (per image root)
    json_bytes: int = 4 * MiB  # one manifest, index or config document
    package_db_bytes: int = 256 * MiB  # package databases read (dpkg, ...) + the paths they name
    # -- analysis -------------------------------------------------------------------------
    resolver_work: int = 2_000_000  # units of static ELF resolver work (lookups, probes)
    profile_bytes: int = 1 * MiB  # one profile file
    # -- the traced run -------------------------------------------------------------------
    trace_bytes: int = 2 * GiB  # strace output of one traced run, and its fanotify text
    evidence_bytes: int = 512 * MiB  # memory what one run's traces name may take in tracer
    output_bytes: int = 1 * MiB  # captured stdout/stderr per step or container (tail kept)
    http_body: int = 4 * MiB  # bytes of one http step's response body (per step: max_body)
    tmpfs_bytes: int = 256 * MiB  # size of each writable tmpfs the profile mounts
    # -- production evidence ----------------------------------------------------------------
    recording_bytes: int = 256 * MiB  # one recording written by `tracer record`, or read

    def override(self, values: dict[str, Any], where: str) -> Budgets:
        """A copy with `values` (name -> int or size text like `8GiB`) applied.

        Unknown names and malformed values are bad input naming `where` (a profile line,
        or `--budget`).
        """
        known = {f.name for f in fields(self)}
        changes: dict[str, int] = {}
        for name, value in values.items():
            if name not in known:
                raise BadInput(f"{where}: unknown budget {name!r} (known: "
                               f"{', '.join(sorted(known))})")
            number = parse_size(value)
            if number is None or number < 1:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                limit = f" (at most {MAX_VALUE:,})" if too_large(value) else ""
                raise BadInput(f"{where}: budget {name}: expected a positive number or size "
                               f"like 512MiB{limit}, got {shown}")
            changes[name] = number
        return replace(self, **changes)

    def check(self, name: str, used: int, what: str) -> None:
        """Raise BudgetExceeded when `used` is over the budget `name`."""
        limit = getattr(self, name)
        if used > limit:
            raise BudgetExceeded(name, limit, what)


DEFAULT = Budgets()

_SIZE = re.compile(r"^\s*(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$", re.I)
_UNIT = {"k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}
# The largest budget (and size) value: what a signed 64-bit size holds, far above any disk.
# Python would parse 4,000 digits into an int (and raise ValueError at 4,301): bigger is
# refused as a bad value before int() sees it.
MAX_VALUE = (1 << 63) - 1
_MAX_DIGITS = len(str(MAX_VALUE))


def parse_size(value: object) -> int | None:
    """An int, or text `N`, `NKiB`/`NK`, `NMiB`/`NM`, `NGiB`/`NG` (binary units); None if bad,
    and None above MAX_VALUE."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value <= MAX_VALUE else None
    if not isinstance(value, str) or len(value) > 100:
        return None
    m = _SIZE.match(value)
    if not m or len(m.group(1).lstrip("0")) > _MAX_DIGITS:
        return None
    unit = (m.group(2) or "").lower()[:1]
    number = int(m.group(1)) * (_UNIT[unit] if unit else 1)
    return number if number <= MAX_VALUE else None


def too_large(value: object) -> bool:
    """Whether `value` is written as a size but is over MAX_VALUE (for the message)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > MAX_VALUE
    return isinstance(value, str) and _SIZE.match(value) is not None \
        and parse_size(value) is None


def human(n: int) -> str:
    """A budget value the way an operator would write it back (`64MiB`, `2000000`)."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


class BudgetExceeded(BadInput):
    """An input needs more than a budget allows (exit 2); says which and how to raise it."""

    def __init__(self, name: str, limit: int, what: str) -> None:
        self.name, self.limit = name, limit
        super().__init__(
            f"{what}: over the {name} budget of {human(limit)}; if this input is trusted, "
            f"raise it with --budget {name}=N or `budgets: {{{name}: N}}` in the profile")
