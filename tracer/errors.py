"""Errors that end a run, each carrying the exit code of the command-line contract.

PROFILE.md fixes the exit codes scripts rely on; raising one of these anywhere in the
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


class VerificationFailed(TracerError):
    """The minimized image failed its smoke test (exit 1)."""

    exit_code = 1


class EnvironmentProblem(TracerError):
    """No Docker engine, no strace, no permission (exit 4)."""

    exit_code = 4
