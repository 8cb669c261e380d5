"""The one way a test says "I cannot run here": skip locally, fail in CI.

README promises that in CI (CI=true) a missing engine, tool, fixture or privilege is a
failure, never a skip: a suite that silently skips its integration tests proves nothing.
Every skip in the suite goes through `missing()`, so that promise holds in one place.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the calling test with `reason`; under CI=true fail it instead."""
    if IN_CI:
        pytest.fail(f"test prerequisite missing in CI: {reason}")
    pytest.skip(reason)


def require(ok: object, reason: str) -> None:
    """`missing(reason)` unless `ok` is true."""
    if not ok:
        missing(reason)
