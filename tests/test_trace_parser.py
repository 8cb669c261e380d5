"""The strace output parser, on real strace output of real programs and hand-written edge cases.

The real traces are captured here with the host's strace using exactly the options the
bundle uses (`bundle.StraceBundle.command`), so a change of options that breaks parsing
breaks these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.trace.bundle import TRACE_SET
from tracer.trace.parser import excluder, normalize, parse_trace
from tracer.trace.strace_syntax import decode_string, fd_path, iter_syscalls, split_args

STRACE_OPTS = [
    "-f",
    "-y",
    "-xx",
    "-ttt",
    "-qq",
    "-s",
    "4096",
    "-e",
    f"trace={TRACE_SET}",
    "-e",
    "signal=none",
]


def capture(strace: str, tmp: Path, script: str, cwd: Path) -> list[str]:
    out = tmp / "real.trace"
    subprocess.run(
        [strace, *STRACE_OPTS, "-o", str(out), "--", "sh", "-c", script],
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    return out.read_text(encoding="utf-8", errors="surrogateescape").splitlines()


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "file").write_text("x")
    (d / "link").symlink_to("file")
    (d / "other").write_text("z")
    (d / "s.sh").write_text("#!/bin/sh\ncat ../other >/dev/null\n")
    (d / "s.sh").chmod(0o755)
    return d


def _by(accesses, path, syscall=None, ok=None):
    return [
        a
        for a in accesses
        if a.path == str(path)
        and (syscall is None or a.syscall == syscall)
        and (ok is None or a.ok == ok)
    ]


def test_real_trace_resolves_relative_paths_against_each_process_cwd(host_strace, tmp_path, tree):
    lines = capture(
        host_strace, tmp_path, "cd d && cat file link >/dev/null; cd sub && ./../s.sh", tmp_path
    )
    parsed = parse_trace(lines, initial_cwd=str(tmp_path))
    acc = parsed.accesses
    cat_file = _by(acc, tree / "file", "openat", True)
    assert cat_file, "cat opened d/file by a relative name after `cd d`"
    assert any(
        a.program == "/usr/bin/cat" and a.cmdline == ("cat", "file", "link") for a in cat_file
    )
    # the symlink is recorded under the name the program used, not its target
    assert _by(acc, tree / "link", "openat", True)
    # the script is exec'd by a path relative to the child's cwd (inherited over fork)
    assert _by(acc, tree / "s.sh", "execve", True)
    assert str(tree / "s.sh") in parsed.execs
    # ../other from the script, run in d/sub, is d/other, attributed to the script's cat
    other = _by(acc, tree / "other", "openat", True)
    assert [a.cmdline for a in other] == [("cat", "../other")]
    assert "/usr/bin/cat" in parsed.execs


def test_real_trace_records_failed_lookups_and_directory_listings(host_strace, tmp_path, tree):
    lines = capture(
        host_strace,
        tmp_path,
        "cd d; ls >/dev/null; readlink link >/dev/null; cat nothere 2>/dev/null; "
        "test -e sub/missing; true",
        tmp_path,
    )
    acc = parse_trace(lines, initial_cwd=str(tmp_path)).accesses
    missing = _by(acc, tree / "nothere", "openat", False)
    assert missing and missing[0].errno == "ENOENT"
    assert _by(acc, tree, "getdents64", True), "the listed directory is kept"
    assert _by(acc, tree / "link", "readlink", True)
    assert [a for a in acc if a.path == str(tree / "sub" / "missing") and not a.ok]


def test_real_trace_round_trips_odd_bytes_in_names(host_strace, tmp_path, tree):
    odd = os.fsencode(tree) + b'/odd\x01\xff "q\\.txt'
    with open(odd, "wb") as f:
        f.write(b"y")
    lines = capture(host_strace, tmp_path, "cat d/odd* >/dev/null", tmp_path)
    acc = parse_trace(lines, initial_cwd=str(tmp_path)).accesses
    names = [os.fsencode(a.path) for a in acc if a.syscall == "openat" and a.ok]
    assert odd in names


def test_real_trace_fork_inherits_cwd_and_background_jobs_are_followed(host_strace, tmp_path, tree):
    lines = capture(
        host_strace,
        tmp_path,
        "cd d/sub; (cd ..; cat file >/dev/null) & (stat ../link >/dev/null) & wait",
        tmp_path,
    )
    acc = parse_trace(lines, initial_cwd=str(tmp_path)).accesses
    assert _by(acc, tree / "file", "openat", True)
    assert [a for a in acc if a.path == str(tree / "link") and a.ok]


def _meanings(accesses, path) -> set[tuple[str, str, bool]]:
    return {(a.syscall, str(a.meaning), a.ok) for a in accesses if a.path == str(path)}


def test_real_trace_gives_every_path_naming_call_its_meaning(host_strace, tmp_path):
    """Names made, linked, renamed and removed at run time are recorded as such: the
    keep-list needs the directory they were made in, not the name."""
    d = tmp_path / "w"
    d.mkdir()
    lines = capture(
        host_strace, tmp_path,
        "cd w; mkdir new; touch new/f; : > g; mkfifo p; ln new/f h; ln -s f s; mv g g2; "
        "rm h; rmdir new 2>/dev/null; cat g2",
        tmp_path,
    )
    acc = parse_trace(lines, initial_cwd=str(tmp_path)).accesses
    assert ("mkdir", "create", True) in _meanings(acc, d / "new")
    assert ("openat", "create", True) in _meanings(acc, d / "new" / "f")  # touch: O_CREAT
    assert ("openat", "create", True) in _meanings(acc, d / "g")  # shell redirection
    assert ("mknodat", "create", True) in _meanings(acc, d / "p")
    assert ("linkat", "entry", True) in _meanings(acc, d / "new" / "f")  # the existing name
    assert ("linkat", "create", True) in _meanings(acc, d / "h")
    assert ("symlinkat", "create", True) in _meanings(acc, d / "s")
    assert not _meanings(acc, d / "f"), "a symlink's text is not a lookup"
    assert ("renameat2", "remove", True) in _meanings(acc, d / "g")
    assert ("renameat2", "create", True) in _meanings(acc, d / "g2")
    assert ("unlinkat", "remove", True) in _meanings(acc, d / "h")
    assert ("rmdir", "remove", False) in _meanings(acc, d / "new")  # not empty: ENOTEMPTY
    assert ("openat", "read", True) in _meanings(acc, d / "g2")  # cat reads it


def test_real_trace_records_unix_socket_names_and_unnamed_temp_files(host_strace, tmp_path):
    d = tmp_path / "sockdir"
    d.mkdir()
    script = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_UNIX); s.bind('sockdir/srv.sock'); s.listen(1)\n"
        f"c = socket.socket(socket.AF_UNIX); c.connect({str(d / 'srv.sock')!r})\n"
        "a = socket.socket(socket.AF_UNIX); a.bind(b'\\0abstract-name')\n"
        "t = socket.socket()\n"
        "try: t.connect(('127.0.0.1', 9))\n"
        "except OSError: pass\n"
        f"os.close(os.open({str(d)!r}, os.O_TMPFILE | os.O_RDWR))\n"
    )
    (tmp_path / "sock.py").write_text(script)
    lines = capture(host_strace, tmp_path, f"{sys.executable} sock.py", tmp_path)
    acc = parse_trace(lines, initial_cwd=str(tmp_path)).accesses
    sock = _meanings(acc, d / "srv.sock")
    assert ("bind", "create", True) in sock, "a relative sun_path resolves against the cwd"
    assert ("connect", "connect", True) in sock
    assert not [a for a in acc if "abstract-name" in a.path], "abstract sockets name no file"
    # the TCP connect names no file (glibc may probe nscd's socket when it looks up a user)
    assert {a.path for a in acc if a.syscall == "connect"} <= {str(d / "srv.sock"),
                                                                "/var/run/nscd/socket"}
    assert ("openat", "entry", True) in _meanings(acc, d), "O_TMPFILE uses the directory"


def test_real_trace_failed_execve_is_no_exec(host_strace, tmp_path):
    """A PATH search tries execve in each directory: the misses are failed lookups, never
    an exec of that program, and never the program later accesses are attributed to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "noexec").write_text("#!/bin/sh\necho never\n")  # exists, not executable
    lines = capture(
        host_strace, tmp_path,
        f"PATH={tmp_path}/missing:{bindir}:/usr/bin /usr/bin/env cat /dev/null; "
        f"PATH={bindir}:{tmp_path}/missing /usr/bin/env noexec; true",
        tmp_path,
    )
    parsed = parse_trace(lines, initial_cwd=str(tmp_path))
    failed = [a for a in parsed.accesses if a.syscall == "execve" and not a.ok]
    assert {a.path for a in failed} >= {f"{tmp_path}/missing/cat", f"{bindir}/cat",
                                         f"{bindir}/noexec", f"{tmp_path}/missing/noexec"}
    assert all(str(a.meaning) == "exec" and a.program == "/usr/bin/env" for a in failed)
    assert not [e for e in parsed.execs if e.startswith(str(tmp_path))], parsed.execs
    assert "/usr/bin/cat" in parsed.execs and "/usr/bin/env" in parsed.execs
    # what runs after the misses is attributed to the program that really runs
    devnull_reads = [a for a in parsed.accesses if a.path == "/dev/null" and a.ok]
    assert devnull_reads and {a.program for a in devnull_reads} == {"/usr/bin/cat"}


# ---- hand-written edge cases -------------------------------------------------------------


def test_decode_string_handles_every_escape_strace_emits():
    assert decode_string(r'"\x2f\x65tc"') == ("/etc", False)
    assert decode_string(r'"a\tb\n\\\"\v\f\r"') == ('a\tb\n\\"\x0b\x0c\r', False)
    assert decode_string(r'"\0\1\377x\12"') == (os.fsdecode(b"\x00\x01\xffx\n"), False)
    assert decode_string(r'"abc"...') == ("abc", True)
    assert decode_string("NULL") is None
    assert decode_string('"unterminated') is None


def test_split_args_respects_quotes_brackets_and_fd_annotations():
    args, rest = split_args(
        r'AT_FDCWD</a,b>, "x, y)", ["s,]", {a=1, b=[2, 3]}], O_RDONLY|O_CLOEXEC) = 3</p>'
    )
    assert args == ["AT_FDCWD</a,b>", r'"x, y)"', r'["s,]", {a=1, b=[2, 3]}]', "O_RDONLY|O_CLOEXEC"]
    assert rest == " = 3</p>"
    assert fd_path("AT_FDCWD</srv>") == "/srv"
    assert fd_path(r"3<\x2f\x65\x74\x63>") == "/etc"
    assert fd_path("1<pipe:[1234]>") is None
    assert fd_path("4</tmp/x (deleted)>") is None


def test_unfinished_and_resumed_pairs_join_across_interleaved_pids():
    lines = [
        '10 1.000001 openat(AT_FDCWD</srv>, "a.conf", O_RDONLY <unfinished ...>',
        '11 1.000002 openat(AT_FDCWD</>, "/etc/b" <unfinished ...>',
        "10 1.000003 <... openat resumed>) = 3</srv/a.conf>",
        "11 1.000004 <... openat resumed>, O_RDONLY) = -1 ENOENT (No such file or directory)",
        "12 1.000005 +++ exited with 0 +++",
        "12 1.000006 --- SIGCHLD {si_signo=SIGCHLD} ---",
    ]
    calls = list(iter_syscalls(lines))
    assert [(c.pid, c.name, c.ok, c.errno) for c in calls] == [
        (10, "openat", True, None),
        (11, "openat", False, "ENOENT"),
    ]
    acc = parse_trace(lines).accesses
    assert [(a.path, a.ok, a.errno) for a in acc] == [
        ("/srv/a.conf", True, None),
        ("/etc/b", False, "ENOENT"),
    ]


def test_child_seen_before_parent_clone_returns_still_inherits_cwd_and_program():
    lines = [
        '5 1.0 execve("/usr/bin/app", ["app", "-x"], 0x7ff /* 3 vars */) = 0',
        '5 1.1 chdir("/opt/app") = 0',
        "5 1.2 clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD <unfinished ...>",
        '6 1.3 open("data/x.db", O_RDONLY) = 3',
        "5 1.4 <... clone resumed>, child_tidptr=0x7f) = 6",
        '6 1.5 stat("rel", 0x7ffd) = -1 EACCES (Permission denied)',
    ]
    acc = parse_trace(lines).accesses
    x = next(a for a in acc if a.path == "/opt/app/data/x.db")
    assert (x.pid, x.program, x.cmdline) == (6, "/usr/bin/app", ("app", "-x"))
    rel = next(a for a in acc if a.path == "/opt/app/rel")
    assert (rel.ok, rel.errno) == (False, "EACCES")


def test_dirfd_fchdir_execveat_openat2_statx_and_empty_path():
    lines = [
        '7 2.0 openat2(3</etc/ssl>, "certs/ca.pem", {flags=O_RDONLY, resolve=0}, 24) = 4',
        "7 2.1 fchdir(3</usr/lib/jvm>) = 0",
        '7 2.2 readlink("java", 0x7ff, 4096) = 12',
        '7 2.3 statx(AT_FDCWD, "conf/../lib/x", AT_STATX_SYNC_AS_STAT, STATX_ALL, 0x7f) = 0',
        '7 2.4 newfstatat(4</etc/ssl/certs/ca.pem>, "", {st_mode=S_IFREG}, AT_EMPTY_PATH) = 0',
        '7 2.5 execveat(5</usr/bin/tool>, "", ["tool"], 0x7f /* 0 vars */, AT_EMPTY_PATH) = 0',
        '7 2.6 faccessat2(AT_FDCWD, "/etc/x", R_OK, AT_EACCESS) = -1 ENOENT (No such file)',
        "7 2.7 getdents64(6</usr/share/zoneinfo>, 0x55 /* 12 entries */, 32768) = 400",
        '7 2.8 unlink("/tmp/sock") = 0',
        '7 2.9 openat(AT_FDCWD, "/proc/self/status", O_RDONLY) = 3',
    ]
    parsed = parse_trace(lines, excluded=excluder(["/proc", "/tmp"]))
    got = {(a.path, a.syscall) for a in parsed.accesses}
    assert ("/etc/ssl/certs/ca.pem", "openat2") in got
    assert ("/usr/lib/jvm", "fchdir") in got
    assert ("/usr/lib/jvm/java", "readlink") in got
    assert ("/usr/lib/jvm/lib/x", "statx") in got
    assert ("/usr/bin/tool", "execveat") in got
    assert ("/etc/x", "faccessat2") in got
    assert ("/usr/share/zoneinfo", "getdents64") in got
    assert not [p for p, s in got if p.startswith(("/proc", "/tmp")) or s == "newfstatat"]
    assert parsed.execs == ["/usr/bin/tool"]
    after = [a for a in parsed.accesses if a.syscall == "getdents64"][0]
    assert after.program == "/usr/bin/tool"


def test_process_killed_mid_call_and_truncated_trace_are_skipped():
    lines = [
        '3 1.0 execve("/bin/x", ["x"], 0x1 /* 1 var */) = ?',
        '3 1.1 openat(AT_FDCWD</>, "/etc/never" <unfinished ...>',
        "garbage that is not strace output",
        '4 1.2 openat(AT_FDCWD, "/etc/half',
    ]
    assert parse_trace(lines).accesses == []


def test_step_attribution_and_dedup():
    lines = [
        '1 10.0 openat(AT_FDCWD, "/etc/a", O_RDONLY) = 3',
        '1 10.5 openat(AT_FDCWD, "/etc/a", O_RDONLY) = 3',
        '1 20.0 openat(AT_FDCWD, "/etc/a", O_RDONLY) = 3',
    ]
    acc = parse_trace(
        lines, step_of=lambda ts: "run" if ts is not None and ts < 15 else "smoke[0].http"
    ).accesses
    assert [(a.path, a.step) for a in acc] == [("/etc/a", "run"), ("/etc/a", "smoke[0].http")]


def test_normalize_and_excluder():
    assert normalize("//a/./b/../c/") == "/a/c"
    ex = excluder(["/proc", "/run/"])
    assert ex("/proc") and ex("/proc/1/maps") and ex("/run/x")
    assert not ex("/processes") and not ex("/runner")


def test_socket_names_hex_escaped_relative_truncated_and_failed():
    lines = [
        '9 3.0 chdir("/srv/app") = 0',
        r'9 3.1 bind(3<socket:[1]>, {sa_family=AF_UNIX, sun_path="\x2f\x72\x75\x6e\x2f'
        r'\x61\x2f\x73"}, 110) = 0',
        '9 3.2 connect(4<socket:[2]>, {sa_family=AF_UNIX, sun_path="rel.sock"}, 110) = 0',
        '9 3.3 connect(5<socket:[3]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, '
        "110) = -1 ENOENT (No such file or directory)",
        '9 3.4 bind(6<socket:[4]>, {sa_family=AF_UNIX, sun_path="/run/lo"...}, 110) = 0',
        '9 3.5 connect(7<socket:[5]>, {sa_family=AF_INET, sin_port=htons(80), '
        'sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '9 3.6 bind(8<socket:[6]>, {sa_family=AF_UNIX, sun_path=@"abstract"}, 11) = 0',
    ]
    acc = parse_trace(lines).accesses
    got = [(a.path, a.syscall, str(a.meaning), a.ok, a.errno) for a in acc
           if a.syscall != "chdir"]
    assert got == [
        ("/run/a/s", "bind", "create", True, None),
        ("/srv/app/rel.sock", "connect", "connect", True, None),
        ("/var/run/nscd/socket", "connect", "connect", False, "ENOENT"),
    ]  # a truncated name is not a name; AF_INET and abstract sockets name no file


def test_open_flags_decide_between_read_create_and_directory_use():
    lines = [
        '1 1.0 openat(AT_FDCWD, "/etc/a", O_RDONLY|O_CLOEXEC) = 3',
        '1 1.1 openat(AT_FDCWD, "/var/log/app.log", O_WRONLY|O_CREAT|O_APPEND, 0640) = 3',
        '1 1.2 open("/tmp/x", O_RDWR|O_CREAT|O_EXCL, 0600) = 4',
        '1 1.3 openat2(AT_FDCWD, "/tmp/y", {flags=O_RDWR|O_CREAT, mode=0600}, 24) = 5',
        '1 1.4 openat(AT_FDCWD, "/var/tmp", O_RDWR|O_TMPFILE, 0600) = 6',
        '1 1.5 creat("/tmp/z", 0644) = 7',
        '1 1.6 linkat(6</var/tmp/#123 (deleted)>, "", AT_FDCWD, "/var/tmp/done", '
        "AT_EMPTY_PATH) = 0",
        '1 1.7 symlinkat("/etc/target", AT_FDCWD, "/run/app/current") = 0',
        '1 1.8 renameat2(AT_FDCWD, "/tmp/x", 3</var/lib>, "app/state", RENAME_NOREPLACE) = 0',
    ]
    got = [(a.path, a.syscall, str(a.meaning)) for a in parse_trace(lines).accesses]
    assert got == [
        ("/etc/a", "openat", "read"),
        ("/var/log/app.log", "openat", "create"),
        ("/tmp/x", "open", "create"),
        ("/tmp/y", "openat2", "create"),
        ("/var/tmp", "openat", "entry"),
        ("/tmp/z", "creat", "create"),
        ("/var/tmp/done", "linkat", "create"),  # the fd half (AT_EMPTY_PATH) names nothing
        ("/run/app/current", "symlinkat", "create"),
        ("/tmp/x", "renameat2", "remove"),
        ("/var/lib/app/state", "renameat2", "create"),
    ]


def test_same_path_used_two_ways_is_two_accesses():
    lines = [
        '1 1.0 openat(AT_FDCWD, "/run/app.pid", O_RDONLY) = -1 ENOENT (No such file)',
        '1 1.1 openat(AT_FDCWD, "/run/app.pid", O_RDONLY) = -1 ENOENT (No such file)',
        '1 1.2 openat(AT_FDCWD, "/run/app.pid", O_WRONLY|O_CREAT, 0644) = -1 ENOENT (No such)',
    ]
    acc = parse_trace(lines).accesses
    assert [(str(a.meaning), a.ok) for a in acc] == [("read", False), ("create", False)]


def test_failed_execve_changes_neither_program_nor_execs():
    lines = [
        '4 1.0 execve("/usr/bin/env", ["env", "tool"], 0x1 /* 1 var */) = 0',
        '4 1.1 execve("/usr/local/bin/tool", ["tool"], 0x1 /* 1 var */) = -1 ENOENT (No such)',
        '4 1.2 execve("/usr/bin/tool", ["tool"], 0x1 /* 1 var */) = -1 EACCES (Permission)',
        '4 1.3 openat(AT_FDCWD, "/etc/after", O_RDONLY) = 3',
    ]
    parsed = parse_trace(lines)
    assert parsed.execs == ["/usr/bin/env"]
    after = next(a for a in parsed.accesses if a.path == "/etc/after")
    assert (after.program, after.cmdline) == ("/usr/bin/env", ("env", "tool"))
    misses = [a for a in parsed.accesses if a.path.endswith("/tool")]
    assert [(a.ok, str(a.meaning)) for a in misses] == [(False, "exec"), (False, "exec")]
