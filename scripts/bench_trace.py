#!/usr/bin/env python3
"""Overhead of tracing: the same smoke test untraced and traced, wall time of each and ratio.

The target is a ratio of at most 1.5 for a smoke test (`service`: a perl HTTP service
started, made ready, asked over HTTP, checked with exec steps) with `--seccomp-bpf`, which
stops the app only at the file and fork/exec calls that are recorded. A second scenario,
`stress` (an exec-heavy shell loop starting perl again and again), shows the worst case;
it is printed for information, not held to the target. Each variant runs `--repeat` times,
interleaved so that load from other work on the machine hits both alike; best times are
compared. Needs the Docker engine and `tracer-fixture/base:bookworm` (perl-base, coreutils).

    python3 scripts/bench_trace.py [--image tracer-fixture/base:bookworm] [--repeat 3]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.image.reference import parse_reference  # noqa: E402
from tracer.profile.load import load_profile  # noqa: E402
from tracer.profile.model import (  # noqa: E402
    CommandStep,
    ExecStep,
    HttpStep,
    Profile,
    Ready,
    RunSpec,
    SmokeStep,
)
from tracer.trace.run import run_smoke  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = ("nginx", "pyapp", "hardcases", "layers")

SERVER = r"""
use strict; use IO::Socket::INET; use POSIX ();
my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $ARGV[0], Listen => 5,
                              ReuseAddr => 1) or die "listen: $!";
$SIG{TERM} = sub { exit 0 }; $| = 1; print "listening\n";
while (my $c = $s->accept) {
    my $r = <$c>; while (my $l = <$c>) { last if $l =~ /^\r?\n$/ }
    open(my $f, '<', '/etc/os-release') or die; local $/; my $b = <$f>; close $f;
    print $c "HTTP/1.0 200 OK\r\n\r\n$b"; close $c;
}
"""

STRESS = (
    "for i in $(seq 30); do perl -MPOSIX -MIO::Socket::INET -e 1; "
    "cat /etc/os-release /etc/passwd >/dev/null; ls /usr/share >/dev/null; done; echo done"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_profile(image: str) -> Profile:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    steps = [HttpStep(url=url, status=200, body="Debian") for _ in range(20)]
    steps += [
        ExecStep(argv=["cat", "/etc/debian_version"], stdout="^12"),
        ExecStep(argv=["perl", "-MPOSIX", "-e", "print 1"], stdout="1"),
    ]
    return Profile(
        name="bench-service",
        image=image,
        run=RunSpec(
            entrypoint=["perl", "-e", SERVER, str(port)],
            cmd=[],
            network="host",
            ready=Ready(log="listening", tcp=port, timeout=30),
            timeout=300,
        ),
        smoke=[SmokeStep(i, s) for i, s in enumerate(steps)],
    )


def stress_profile(image: str) -> Profile:
    return Profile(
        name="bench-stress",
        image=image,
        run=RunSpec(mode="job", entrypoint=["sh", "-c"], cmd=[STRESS], stdout="done", timeout=600),
        smoke=[SmokeStep(0, CommandStep(argv=["perl", "-MPOSIX", "-e", "print 1"], stdout="1"))],
    )


def measure(profile: Profile, image: str, repeat: int, workdir: Path) -> tuple[float, float, str]:
    times: dict[bool, list[float]] = {False: [], True: []}
    info = ""
    for _ in range(repeat):
        for traced in (False, True):
            t = time.monotonic()
            r = run_smoke(profile, image, traced=traced, workdir=workdir)
            times[traced].append(time.monotonic() - t)
            if not r.passed:
                raise SystemExit(
                    f"{profile.name}: smoke test failed "
                    f"({'traced' if traced else 'untraced'}): {r.failure}"
                )
            if traced:
                info = f"recorders: {','.join(r.recorders)}; {len(r.accesses)} accesses"
    return min(times[False]), min(times[True]), info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="tracer-fixture/base:bookworm")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-stress", action="store_true", help="skip the worst-case scenario")
    ap.add_argument("--no-fixtures", action="store_true",
                    help="skip the fixture profiles (profiles/*.yaml on tracer-fixture images)")
    args = ap.parse_args()
    scenarios = [("service", service_profile(args.image), args.image, True)]
    if not args.no_fixtures:
        for name in FIXTURES:
            prof = load_profile(REPO / "profiles" / f"{name}.yaml")
            ref = parse_reference(prof.image)
            scenarios.append((name, prof, f"{ref.name}:{ref.tag or 'latest'}", True))
    if not args.no_stress:
        scenarios.append(("stress", stress_profile(args.image), args.image, False))
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        for name, prof, image, held in scenarios:
            untraced, traced, info = measure(prof, image, args.repeat, Path(tmp))
            ratio = traced / untraced
            if held:
                worst = max(worst, ratio)
            target = "target <= 1.5x" if held else "worst case, informational"
            print(
                f"{name:10} untraced {untraced:6.2f}s  traced {traced:6.2f}s  "
                f"ratio {ratio:4.2f}x  ({target}; {info})"
            )
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
