"""What a trace makes the interpreter hold is bounded, and nothing recurses on its depth.

Two ordinary programs used to break tracer, no FIFO writing needed: a job that works in a
1,000-level deep directory and stats relative names (each use became a path string of a
quarter of a megabyte: 2.5 GB of memory from a 3 MB trace), and a 1,200-deep chain of
vfork'd processes (each child's state was made from its parent's by recursion: exit 70 on
RecursionError). Both programs are compiled here, traced by the host's strace with the
bundle's options, and the trace is parsed in a child process whose time and peak memory
are measured; then the same program runs as a non-root job in an image built here,
through `tracer minimize`. A root app can also write lines into its trace: forged chains
and cycles of clone lines must cost no more.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from image_builders import run_tracer
from parse_child import parse_in_child
from test_trace_parser import STRACE_OPTS

from tracer.trace.parser import parse_trace
from tracer.trace.proc_state import StateBudget

REPO = Path(__file__).resolve().parent.parent

DEEP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* argv: DIR LEVELS STATS CHAIN. In DIR: LEVELS nested directories of 250-character
   names, STATS stats of relative names at the bottom; then a chain of CHAIN processes,
   each vfork'd by the one before, the last one stats /etc/chain-end. */
int main(int argc, char **argv) {
    if (argc != 5 || chdir(argv[1]) != 0) return 2;
    int levels = atoi(argv[2]), stats = atoi(argv[3]), chain = atoi(argv[4]);
    char name[251];
    memset(name, 'd', 250);
    name[250] = 0;
    for (int i = 0; i < levels; i++) {
        mkdir(name, 0755);
        if (chdir(name) != 0) { perror("chdir"); return 3; }
    }
    struct stat st;
    for (int i = 0; i < stats; i++) {
        char f[32];
        snprintf(f, sizeof f, "f%d", i);
        stat(f, &st);
    }
    pid_t top = getpid();
    for (int i = 0; i < chain; i++) {
        pid_t kid = vfork();
        if (kid < 0) _exit(4);
        if (kid > 0) {  /* the child is done (vfork): pass its status up the chain */
            int status = 0;
            waitpid(kid, &status, 0);
            if (getpid() != top) _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 5);
            printf("deep job done, chain %s\n", WEXITSTATUS(status) == 0 ? "ok" : "broken");
            return WEXITSTATUS(status);
        }
    }
    stat("/etc/chain-end", &st);
    _exit(0);
}
"""

@pytest.fixture(scope="module")
def deep_program(gcc, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("deep")
    (tmp / "deep.c").write_text(DEEP_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(tmp / "deep"), str(tmp / "deep.c")],
                   check=True)
    return tmp / "deep"


def _traced(host_strace: str, program: Path, tmp: Path, *args: str) -> Path:
    work = tmp / "work"
    work.mkdir()
    out = tmp / "deep.trace"
    done = subprocess.run([host_strace, *STRACE_OPTS, "-o", str(out), "--", str(program),
                           str(work), *args], capture_output=True, text=True, timeout=300)
    # GNU rm removes a tree of any depth; Python's rmtree (pytest's cleanup) recurses
    subprocess.run(["rm", "-rf", str(work)], check=True)
    assert done.returncode == 0, done.stderr
    return out


def test_relative_names_a_thousand_levels_deep_cost_no_memory(host_strace, deep_program,
                                                               tmp_path):
    trace = _traced(host_strace, deep_program, tmp_path, "1000", "8000", "0")
    assert trace.stat().st_size < 8 << 20  # a few megabytes of trace ...
    got = parse_in_child(trace, "/")
    assert got["maxrss_kb"] < 100 * 1024, f"... made {got['maxrss_kb']} KiB"  # was 2.5 GB
    assert got["seconds"] < 30
    # what can be in an image is recorded: the directories within the path limit
    work = str(tmp_path / "work")
    first = f"{work}/{'d' * 250}"
    assert first in got["paths"] and f"{first}/{'d' * 250}" in got["paths"]
    assert max(len(p) for p in got["paths"]) <= 4096
    # the stats at the bottom name paths no image can hold: counted, not kept
    assert got["unresolved"] >= 8000
    assert got["state_bytes"] < 4 << 20


def test_a_chain_of_1200_vforks_is_followed_without_recursion(host_strace, deep_program,
                                                              tmp_path):
    trace = _traced(host_strace, deep_program, tmp_path, "0", "0", "1200")
    got = parse_in_child(trace, "/")
    assert got["seconds"] < 30 and got["maxrss_kb"] < 100 * 1024
    # the last child inherited its program from the first, 1,200 forks up
    assert got["program_of"]["/etc/chain-end"] == str(deep_program)


def _forged_chain(n: int) -> list[str]:
    """n processes, each cloned by the one before, every child's line before any clone
    returns: the order a vfork chain gives, as a root app can write it into its trace."""
    lines = [f'{100 + n} 1.0 openat(AT_FDCWD, "leaf", O_RDONLY) = 3\n']
    lines += [f"{pid} 1.0 vfork() = {pid + 1}\n" for pid in range(100 + n - 1, 99, -1)]
    return ['100 0.9 chdir("/top") = 0\n', *lines]


def test_forged_clone_chains_and_cycles_cost_no_recursion_and_bounded_time():
    t0 = time.monotonic()
    parsed = parse_trace(_forged_chain(100_000))
    assert time.monotonic() - t0 < 30
    assert [a.path for a in parsed.accesses if a.syscall == "openat"] == ["/top/leaf"]
    cycle = ["5 1.0 clone(child_stack=NULL, flags=SIGCHLD) = 6\n",
             "6 1.0 clone(child_stack=NULL, flags=SIGCHLD) = 5\n",
             '7 1.0 clone(child_stack=NULL, flags=SIGCHLD) = 5\n',
             '5 1.1 openat(AT_FDCWD, "/etc/x", O_RDONLY) = 3\n']
    assert [a.path for a in parse_trace(cycle).accesses] == ["/etc/x"]


def test_derived_state_past_its_budget_is_refused_and_counted():
    # a root app's forged trace: each line makes a new process with a new 4,000-character
    # cwd and a use under it; the budget stops the state, not the parse
    name = "x" * 3990
    lines = [line for pid in range(10, 5010)
             for line in (f'{pid} 1.0 chdir("/{name}{pid}") = 0\n',
                          f'{pid} 1.0 openat(AT_FDCWD, "f", O_RDONLY) = 3\n')]
    budget = StateBudget(1 << 20)
    parsed = parse_trace(lines, budget=budget)
    assert budget.full and budget.spent <= 1 << 20
    assert 0 < len(parsed.accesses) < 400
    assert parsed.refused > 4500  # every later call, counted
    assert [a.path for a in parsed.accesses[:2]] == [f"/{name}10", f"/{name}10/f"]


def test_a_path_past_the_path_limit_comes_back_within_reach_by_dotdot():
    lines = ['1 1.0 chdir("/base") = 0\n']
    lines += ['1 1.0 chdir("' + "d" * 200 + '") = 0\n'] * 30  # 6,000 characters deep
    lines += ['1 1.0 open("cannot-be-in-an-image", O_RDONLY) = -1 ENOENT (No such file)\n',
              '1 1.0 open("' + "../" * 29 + 'back", O_RDONLY) = 3\n',
              '1 1.0 chdir("' + "/".join([".."] * 30) + '") = 0\n',
              '1 1.0 open("home", O_RDONLY) = 3\n']
    parsed = parse_trace(lines)
    opened = [a.path for a in parsed.accesses if a.syscall == "open"]
    assert opened == ["/base/" + "d" * 200 + "/back", "/base/home"]
    assert parsed.unresolved >= 1



@pytest.mark.integration
def test_a_deep_non_root_job_is_minimized_in_bounded_memory(docker_client, deep_program,
                                                           tmp_path):
    """The same program as a real job: non-root, a thousand levels deep, then the chain."""
    tag = "tracer-test/bounds-deep-job:test"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "deep").write_bytes(deep_program.read_bytes())
    (ctx / "deep").chmod(0o755)
    (ctx / "work").mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY deep /deep\nCOPY --chown=1000:1000 work /work\n"
        'USER 1000:1000\nCMD ["/deep", "/work", "1000", "8000", "1200"]\n')
    docker_client.images.build(path=str(ctx), tag=tag, network_mode="none", rm=True,
                               forcerm=True)
    profile = tmp_path / "deep.yaml"
    profile.write_text(
        f"version: 1\nname: deep-job\nimage: docker-daemon:{tag}\n"
        f"output: docker-daemon:{tag}-min\n"
        "run:\n  mode: job\n  stdout: 'deep job done, chain ok'\n  timeout: 300s\n")
    try:
        res = run_tracer(["minimize", str(profile), "--quiet"],
                         env={"TRACER_WORKDIR": str(tmp_path)}, timeout=900)
    finally:
        for ref in (tag, f"{tag}-min"):
            subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.max_rss_mb < 400, f"tracer grew to {res.max_rss_mb:.0f} MB"
    assert res.seconds < 300
