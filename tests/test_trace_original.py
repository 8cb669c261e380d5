"""trace_original: a traced failure is only "fails on the original" if it fails untraced too.

The app here refuses to work under ptrace (it reads its own TracerPid), the way some
servers behave differently when traced; fanotify alone still records what it used.
"""

from __future__ import annotations

import pytest
from prereq import missing

from tracer.profile.model import CommandStep, Profile, RunSpec, SmokeStep
from tracer.trace import fanotify
from tracer.trace.original import DIFFERENT, trace_original

pytestmark = pytest.mark.integration

# exit 1 when traced; otherwise read a file and print it
NOT_UNDER_PTRACE = ('grep -q "^TracerPid:[[:space:]]*0$" /proc/self/status '
                    '|| { echo "traced: refusing" >&2; exit 1; }; cat /etc/debian_version')


def _profile(script: str, smoke: bool = True, **run) -> Profile:
    return Profile(
        name="ptrace-shy",
        image="tracer-fixture/base:bookworm",
        run=RunSpec(entrypoint=["sh", "-c", script], cmd=[], mode="job", stdout=r"^12",
                    timeout=60, **run),
        smoke=[SmokeStep(0, CommandStep(argv=["sh", "-c", NOT_UNDER_PTRACE],
                                        stdout=r"^12"))] if smoke else [],
    )


def test_an_app_that_fails_only_under_strace_is_recorded_with_fanotify_alone(
    docker_client, fixture_image, tmp_path
):
    if fanotify.available() is not None:
        missing(f"needs fanotify (root on the engine's host): {fanotify.available()}")
    image = fixture_image("base")
    r = trace_original(_profile(NOT_UNDER_PTRACE, user="nobody"), image, workdir=tmp_path)
    assert r.passed, (r.failure, r.notes)
    assert r.fanotify_only and r.recorders == ["fanotify"]
    assert r.notes[0].startswith(f"{DIFFERENT}: run: expected exit code 0, got 1")
    assert "recorded with fanotify alone" in r.notes[0]
    opened = {(a.path, a.syscall, a.step) for a in r.accesses}
    assert ("/etc/debian_version", "fanotify:open", "run") in opened
    assert ("/etc/debian_version", "fanotify:open", "smoke[0].command") in opened
    assert "/usr/bin/grep" in r.execs and "/usr/bin/cat" in r.execs
    assert not [a for a in r.accesses if a.path.startswith(("/.tracer", "/proc"))]
    assert not list(tmp_path.rglob("*.fifo")), "the work files are removed"


def test_an_app_that_fails_untraced_too_fails_on_the_original(
    docker_client, fixture_image, tmp_path
):
    image = fixture_image("base")
    r = trace_original(_profile("echo broken >&2; exit 7", smoke=False), image, workdir=tmp_path)
    assert not r.passed and not r.fanotify_only
    assert r.failure == "run: expected exit code 0, got 7"
    assert r.recorders == [] and "broken" in r.steps[0].output
    # traced, it failed the same way: said once (a note repeating it adds nothing)
    assert not any("failed as well" in note for note in r.notes)


def test_a_traced_failure_unlike_the_untraced_one_is_kept_as_a_note(
    docker_client, fixture_image, tmp_path
):
    """Both runs fail, differently: the verdict is the untraced one, the traced one is
    evidence too."""
    image = fixture_image("base")
    script = ("if grep -q TracerPid:.[1-9] /proc/self/status; then exit 5; fi; "
              "echo broken >&2; exit 7")
    r = trace_original(_profile(script, smoke=False), image, workdir=tmp_path)
    assert not r.passed and r.failure == "run: expected exit code 0, got 7"
    assert "traced, it failed as well: run: expected exit code 0, got 5" in r.notes


def test_a_passing_traced_run_is_the_evidence(docker_client, fixture_image, tmp_path):
    image = fixture_image("base")
    r = trace_original(_profile("cat /etc/debian_version", smoke=False), image, workdir=tmp_path)
    assert r.passed and not r.fanotify_only and "strace" in r.recorders
    assert any(a.path == "/etc/debian_version" and a.syscall == "openat" for a in r.accesses)
