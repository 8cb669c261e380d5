"""Keep-list policy: what a minimized image keeps although no loader rule or trace shows it.

The static resolver answers what the image's loader maps at start-up, nothing more; that
is a fact about the image, checked against the real loader. What a minimizer must keep on
top of that is a judgement about risk, and lives here so the loader simulation stays
exact and the policy is visible in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Libraries a library dlopen()s by itself, unseen by DT_NEEDED, by the DT_SONAME of the
# library that loads them. glibc loads libgcc_s for pthread_cancel/pthread_exit unwinding
# and backtrace(), often only when a thread exits, so a smoke test rarely sees it and the
# application then aborts in production ("libgcc_s.so.1 must be installed for
# pthread_cancel to work"). Kept when present in the image, never reported missing.
IMPLICIT_DLOPENS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "libc.so.6": ("libgcc_s.so.1",),
})
