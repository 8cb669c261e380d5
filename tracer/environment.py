"""Checks of the machine the pipeline runs on (exit code 4 when something is missing).

Checked up front so a nightly job fails in a second with "no Docker engine" rather than
after flattening a large image.
"""

from __future__ import annotations

import shutil

from tracer.errors import EnvironmentProblem


def require_strace() -> str:
    path = shutil.which("strace")
    if path is None:
        raise EnvironmentProblem("strace is not installed on this machine (apt-get install "
                                 "strace); it is what records the traced run")
    return path
