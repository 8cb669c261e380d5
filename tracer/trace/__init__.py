"""Tracing: run an image's smoke test under strace (and fanotify) and record every file used.

The public entry point is `tracer.trace.run.run_smoke`; the result types live in
`tracer.trace.result`. Everything else here is an implementation detail with one job per
module (bundle, parser, fanotify, docker runner, smoke steps).
"""

from tracer.trace.result import Access, SmokeResult, StepOutcome

__all__ = ["Access", "SmokeResult", "StepOutcome"]
