"""Numbers operators set in the environment: deadlines, retries.

A nightly job's environment is written once and read for months: a value that is not a
number (`TRACER_ENGINE_TIMEOUT=30s`) is bad input (exit 2) naming the variable, never
silently replaced by the default.
"""

from __future__ import annotations

import math
import os

from tracer.errors import BadInput


def env_number(name: str, default: float, *, integer: bool = False) -> float:
    """The number in the environment variable `name` (`default` when unset or empty): a
    positive number of seconds, or with `integer` a whole number from 0."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (value < 0 if integer else value <= 0) or \
            (integer and value != int(value)):
        raise BadInput(f"{name}={text!r}: expected a "
                       + ("whole number" if integer else "positive number of seconds"))
    return value
