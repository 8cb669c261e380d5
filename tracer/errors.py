"""Errors that end a run, each carrying the exit code of the command-line contract.

README.md and docs/profile.md fix the exit codes scripts rely on; raising one anywhere in the
pipeline is how a module says which of them applies, without knowing about the CLI.
"""

from __future__ import annotations


class TracerError(Exception):
    """Base class: a failure with a message meant for the operator."""

    exit_code = 2


class BadInput(TracerError):
    """Profile, image reference or arguments are wrong (exit 2)."""

    exit_code = 2


class ImageFormatError(BadInput):
    """An image (archive, layout, layer, manifest) is malformed or unsafe (exit 2)."""


class SmokeFailedOnOriginal(TracerError):
    """The smoke test failed on the original image (exit 3)."""

    exit_code = 3


class EnvironmentProblem(TracerError):
    """No Docker engine, no strace, no permission (exit 4)."""

    exit_code = 4


def no_space(directory: object, needed: int | None = None) -> EnvironmentProblem:
    """The error for a full disk (ENOSPC/EDQUOT): exit 4, naming where and roughly how much.

    A full disk is the machine's problem, never a malformed image: tracer used to report
    it as "corrupt gzip" (2) or crash in a cleanup that hit the same full disk (70).
    """
    about = f" (needed about {max(needed >> 20, 1)} MB)" if needed else ""
    return EnvironmentProblem(f"no space left in {directory}{about}; free some space or set "
                              "TMPDIR (or TRACER_WORKDIR) to a larger filesystem")
