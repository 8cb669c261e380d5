"""The traced run of the ORIGINAL image, and what a failure of it means.

A traced run that fails proves nothing by itself: the app may behave differently under
ptrace (a timing-sensitive server, a program that refuses to be traced, a setuid helper
on a host that will not let strace keep its privilege). So:

1. traced run (strace + fanotify): passes -> that is the evidence;
2. it failed: the same smoke test untraced. Fails too -> the smoke test fails on the
   original image (the caller's exit 3), with both failures in the result;
3. untraced passes -> "the app behaves differently under strace: <traced failure>", and
   the run is recorded again with fanotify ALONE (no ptrace at all; a bundled waiter holds
   the app until the mark is in place). That evidence is marked `fanotify_only`: opens and
   execs only, no failed lookups, no stat/readlink/listing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tracer.budgets import Budgets
from tracer.errors import EnvironmentProblem
from tracer.profile.model import Profile
from tracer.trace import fanotify
from tracer.trace.result import SmokeResult
from tracer.trace.run import Mode, run_in_mode

DIFFERENT = "the app behaves differently under strace"


def trace_original(
    profile: Profile,
    image: str,
    *,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
    budgets: Budgets | None = None,
    privileged_programs: bool | None = None,
) -> SmokeResult:
    """Record what the original image uses; `passed=False` only when the smoke test fails
    untraced as well (then `failure` is the untraced run's, the traced one is in `notes`).

    `privileged_programs`: see `run_smoke`.
    Raises EnvironmentProblem when the app only fails traced and fanotify cannot record
    it either (not root on the engine's host): nothing honest can be recorded then.
    """
    say = progress or (lambda _msg: None)
    traced = run_in_mode(profile, image, Mode.STRACE, workdir=workdir / "traced",
                         progress=progress, budgets=budgets,
                         privileged_programs=privileged_programs)
    if traced.passed:
        return traced
    say(f"the traced run failed ({traced.failure}); running the smoke test untraced")
    plain = run_in_mode(profile, image, Mode.UNTRACED, workdir=workdir / "untraced",
                        progress=progress, budgets=budgets)
    if not plain.passed:
        if traced.failure != plain.failure:  # the same words twice say nothing more
            plain.notes.append(f"traced, it failed as well: {traced.failure}")
        return plain
    why = f"{DIFFERENT}: {traced.failure}"
    say(why)
    reason = fanotify.available()
    if reason is not None:
        raise EnvironmentProblem(f"{why}; it passes untraced, and fanotify cannot record it "
                                 f"instead ({reason})")
    alone = run_in_mode(profile, image, Mode.FANOTIFY, workdir=workdir / "fanotify",
                        progress=progress, budgets=budgets)
    alone.notes.insert(0, f"{why}; recorded with fanotify alone (opens and execs only: no "
                          "failed lookups, no stat, readlink or directory listings)")
    if not alone.passed:
        alone.notes.append(f"recorded with fanotify alone, it failed: {alone.failure}")
    return alone
