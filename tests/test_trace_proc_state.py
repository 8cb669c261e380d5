"""Process state in the trace interpreter: only calls that succeeded move it.

The interpreter models a process's cwd (chdir, fchdir), root (chroot), their sharing
(CLONE_FS threads, unshare) and inheritance (fork, vfork, clone), and its program
(execve). A relative name is resolved against that state, so a call that failed but was
taken as done (or one that succeeded on a directory the trace cannot name, taken as not
done) makes every later relative `execve`, `bind` or open name the wrong path: the wrong
file kept, the right one dropped. Each call of the class is exercised twice: by a real
program compiled here and traced by the host's strace with the bundle's options, and by
hand-written lines for the forms a program cannot easily make (an fd strace could not
name, a name cut short).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_trace_parser import STRACE_OPTS

from tracer.trace.parser import parse_trace

STATE_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* open(2) itself, as musl makes it: no dirfd, so no `-y` annotation tells the cwd */
static void use(const char *name) {
    long fd = syscall(SYS_open, name, O_RDONLY);
    if (fd >= 0) close((int)fd);
}

static void *mover(void *arg) { (void)arg; chdir("sub"); return 0; }      /* CLONE_FS */
static void *loner(void *arg) {                                            /* its own */
    (void)arg; unshare(CLONE_FS); chdir("/"); use("loner-at-root"); return 0;
}

int main(int argc, char **argv) {
    char *const args[] = {"nothing", 0};
    (void)argc;
    if (chdir(argv[1]) != 0) return 2;
    chdir("missing-dir");                 /* fails: the cwd stays */
    use("after-chdir");
    execve("rel-prog", args, 0);          /* a relative exec after the failed chdir */
    fchdir(1000);                         /* fails: EBADF */
    use("after-fchdir");
    chroot("missing-root");               /* fails: the root stays */
    use("/after-chroot");
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, "app.sock");
    bind(s, (struct sockaddr *)&a, sizeof a);
    pthread_t t;
    pthread_create(&t, 0, mover, 0);     /* a thread moves every thread's cwd */
    pthread_join(t, 0);
    use("after-thread");
    pthread_create(&t, 0, loner, 0);     /* a thread that unshared moves only its own */
    pthread_join(t, 0);
    use("after-loner");
    pid_t kid = fork();
    if (kid == 0) {
        chdir("/");                       /* a child's cwd is its own */
        if (chroot(argv[1]) == 0)          /* as root: absolute names start there */
            use("/in-jail");
        chroot("/missing-jail");           /* fails: the jail stays */
        use("/still-in-jail");
        _exit(0);
    }
    waitpid(kid, 0, 0);
    use("after-child");
    return 0;
}
"""


@pytest.fixture(scope="module")
def state_trace(host_strace, gcc, tmp_path_factory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("state")
    (tmp / "c.c").write_text(STATE_C)
    subprocess.run([gcc, "-O1", "-pthread", "-o", str(tmp / "state"), str(tmp / "c.c")],
                   check=True)
    work = tmp / "work"
    (work / "sub").mkdir(parents=True)
    out = tmp / "state.trace"
    subprocess.run([host_strace, *STRACE_OPTS, "-o", str(out), "--", str(tmp / "state"),
                    str(work)], check=True, capture_output=True)
    return work, out.read_text(encoding="utf-8", errors="surrogateescape").splitlines()


def _uses(lines: list[str]) -> dict[str, tuple[str, bool]]:
    """path -> (syscall, ok) of each recorded use (the last one of a path)."""
    return {a.path: (a.syscall, a.ok) for a in parse_trace(lines, initial_cwd="/").accesses}


def test_failed_chdir_fchdir_and_chroot_move_nothing(state_trace):
    work, lines = state_trace
    uses = _uses(lines)
    assert uses[f"{work}/missing-dir"] == ("chdir", False)
    assert uses[f"{work}/after-chdir"] == ("open", False)
    assert uses[f"{work}/rel-prog"] == ("execve", False)
    assert f"{work}/after-fchdir" in uses
    assert uses[f"{work}/missing-root"] == ("chroot", False)
    assert "/after-chroot" in uses
    assert uses[f"{work}/app.sock"] == ("bind", True)
    assert not [p for p in uses if "missing-dir/" in p or "missing-root/" in p]


def test_threads_share_the_cwd_unless_they_unshare_it(state_trace):
    work, lines = state_trace
    uses = _uses(lines)
    assert f"{work}/sub/after-thread" in uses, "a thread's chdir moved the main thread too"
    assert "/loner-at-root" in uses, "the unshared thread's own chdir counts for it"
    assert f"{work}/sub/after-loner" in uses, "... and not for the main thread"


def test_a_child_has_its_own_cwd_and_root(state_trace):
    work, lines = state_trace
    uses = _uses(lines)
    assert f"{work}/sub/after-child" in uses, "the child's chdir did not move its parent"
    assert f"{work}/in-jail" in uses, "after chroot an absolute name is inside the jail"
    assert uses[f"{work}/missing-jail"] == ("chroot", False)  # named inside the jail
    assert f"{work}/still-in-jail" in uses, "a failed chroot left the jail where it was"


@pytest.mark.parametrize("call", [
    "fchdir(7) = 0",  # strace could not name the fd
    'chdir("/srv/long"...) = 0',  # the name was cut short
    "chdir(0x7ffd1234) = 0",  # an address, no string
])
def test_a_move_to_a_directory_the_trace_cannot_name_leaves_the_cwd_unknown(call):
    lines = [
        '5 1.0 chdir("/srv") = 0',
        f"5 1.1 {call}",
        '5 1.2 open("rel.conf", O_RDONLY) = 3',
        '5 1.3 openat(AT_FDCWD</opt>, "told.conf", O_RDONLY) = 3',
        '5 1.4 open("again.conf", O_RDONLY) = 3',
    ]
    parsed = parse_trace(lines)
    paths = [a.path for a in parsed.accesses]
    assert "/srv/rel.conf" not in paths, "resolved against the directory it left"
    assert parsed.unresolved == 1
    # strace's `-y` annotation names the cwd again: from then on names resolve
    assert paths[-2:] == ["/opt/told.conf", "/opt/again.conf"]


def test_clone3_flags_and_a_failed_clone_or_unshare():
    lines = [
        '1 1.0 chdir("/a") = 0',
        "1 1.1 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_THREAD, child_tid=0x7f, "
        "exit_signal=0, stack=0x7f, stack_size=0x7fff00, tls=0x7f}, 88) = 2",
        "1 1.2 clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD) = -1 EAGAIN (no)",
        "2 1.3 unshare(CLONE_FS) = -1 EPERM (Operation not permitted)",
        '2 1.4 chdir("/b") = 0',  # still shared: moves thread 1 too
        '1 1.5 open("x", O_RDONLY) = 3',
        "2 1.6 unshare(CLONE_FS|CLONE_NEWNS) = 0",
        '2 1.7 chdir("/c") = 0',  # its own now
        '1 1.8 open("y", O_RDONLY) = 3',
        '2 1.9 open("z", O_RDONLY) = 3',
    ]
    paths = [a.path for a in parse_trace(lines).accesses if a.syscall == "open"]
    assert paths == ["/b/x", "/b/y", "/c/z"]
