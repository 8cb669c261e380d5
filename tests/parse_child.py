"""parse_trace in a fresh process (a helper module for the tests, not a test module): its
result, seconds and peak memory. A child, so that what the parser holds is measured alone
and never raises the peak of the pytest process the bounds tests run in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_PARSE = r"""
import json, sys, time
def peak_kb():
    # this process's own peak (VmHWM starts afresh at exec; ru_maxrss would carry over
    # the peak of the pytest process it was forked from)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
from tracer.trace.parser import parse_trace
t0 = time.monotonic()
with open(sys.argv[1], encoding="utf-8", errors="surrogateescape") as f:
    parsed = parse_trace(f, initial_cwd=sys.argv[2])
print(json.dumps({"paths": sorted({a.path for a in parsed.accesses}),
                  "accesses": len(parsed.accesses),
                  "program_of": {a.path: a.program for a in parsed.accesses},
                  "unresolved": parsed.unresolved, "state_bytes": parsed.state_bytes,
                  "seconds": time.monotonic() - t0,
                  "maxrss_kb": peak_kb()}))
"""


def parse_in_child(trace: Path, cwd: str = "/") -> dict:
    """What parse_trace made of `trace` (started in `cwd`): `paths` (sorted, each once),
    `accesses` (how many), `program_of`, `unresolved`, `state_bytes`, `seconds` and
    `maxrss_kb` (the child's own peak)."""
    done = subprocess.run([sys.executable, "-c", _PARSE, str(trace), cwd], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
