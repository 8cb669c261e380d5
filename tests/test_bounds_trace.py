"""A traced run's evidence costs memory bounded by budgets, whatever the app does.

What strace writes is the app's to choose: a loop over fresh names writes millions of
distinct uses within the trace_bytes budget, and an app running as root can write into
strace's FIFO itself (through /proc/1/fd, it shares strace's user and CAP_SYS_PTRACE).
Parsing used to hold every syscall of the trace at once (about five times the trace's
size in memory: gigabytes for a trace within its 2 GiB budget) and read a line of any
length whole. Each test runs the traced run in a child process (tests/test_security_trace
helpers) and measures its peak memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_security_trace import RSS_LIMIT_KB, _run_child

from tracer.profile.model import Profile, RunSpec

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_a_loop_over_fresh_names_keeps_at_most_the_entries_budget(fixture_image,
                                                                   tmp_path: Path):
    # strace writes all of it (about 150 MB), no FIFO of its own needed: a non-root app
    # can do the same, only slower (traced without strace's seccomp filter)
    loop = 'for my $i (1..800_000) { stat("/nonexistent/$i") } print "looped\\n"'
    profile = Profile(
        name="fresh-names", image=fixture_image("base"),
        run=RunSpec(mode="job", entrypoint=["perl", "-e", loop], cmd=[],
                    stdout="^looped$", timeout=300),
    )
    result, rss_kb, _ = _run_child(tmp_path, profile, fixture_image("base"),
                                   {"entries": 20_000})
    assert result["passed"], result["steps"]
    assert rss_kb < RSS_LIMIT_KB, f"tracer's memory grew to {rss_kb} KiB"
    assert len(result["paths"]) <= 20_000 + 100  # fanotify's few besides strace's
    assert "/nonexistent/1" in result["paths"], "the first uses are recorded"
    assert any("distinct uses" in n and "--budget entries" in n for n in result["notes"]), \
        result["notes"]


def test_a_root_app_writing_an_endless_line_into_its_trace(fixture_image, tmp_path: Path):
    # strace's output FIFO is fd N of PID 1 (strace): the app writes a call whose
    # argument never ends, 300 MB without a newline, then a normal life
    attack = (
        'for fd in /proc/1/fd/*; do case $(readlink "$fd") in *.fifo*) ;; *) continue;; esac; '
        '{ printf "7 1.0 openat(AT_FDCWD, \\""; head -c 300000000 /dev/zero | tr "\\0" a; '
        'printf "\\", O_RDONLY) = 3\\n"; } > "$fd" && echo "WROTE $fd"; done; '
        'cat /etc/hostname > /dev/null; echo done')
    profile = Profile(
        name="endless-line", image=fixture_image("base"),
        run=RunSpec(mode="job", entrypoint=["sh", "-c", attack], cmd=[],
                    stdout=r"WROTE /proc/1/fd/\d+[\s\S]*^done$", timeout=300),
    )
    result, rss_kb, _ = _run_child(tmp_path, profile, fixture_image("base"),
                                   {"trace_bytes": 1 << 30})
    assert result["passed"], result["steps"]
    assert rss_kb < RSS_LIMIT_KB, f"tracer's memory grew to {rss_kb} KiB"
    assert "/etc/hostname" in result["paths"], "what strace wrote after it still counts"
    assert any("longer than" in n for n in result["notes"]), result["notes"]


def test_an_image_whose_user_database_is_a_huge_directory(docker_client, fixture_image,
                                                           tmp_path: Path):
    # a non-root user makes tracer read /etc/passwd, /etc/group and /etc/nsswitch.conf
    # from the image: here the last is a directory holding 400 MB (user:group given, so
    # the app is started by numbers and no name service in the container reads it)
    tag = "tracer-test/rsec-huge-nsswitch:test"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {fixture_image('base')}\n"
        "RUN rm /etc/nsswitch.conf && mkdir /etc/nsswitch.conf "
        "&& head -c 400000000 /dev/urandom > /etc/nsswitch.conf/big\n"
        "USER 65534:65534\n"
        'CMD ["/usr/bin/id", "-u"]\n')
    docker_client.images.build(path=str(ctx), tag=tag, network_mode="none", rm=True,
                               forcerm=True)
    try:
        profile = Profile(name="huge-nsswitch", image=tag,
                          run=RunSpec(mode="job", stdout="^65534$", timeout=120))
        result, rss_kb, _ = _run_child(tmp_path, profile, tag, {})
    finally:
        docker_client.images.remove(tag, force=True)
    assert result["passed"], result["steps"]
    assert rss_kb < RSS_LIMIT_KB, f"tracer's memory grew to {rss_kb} KiB"
