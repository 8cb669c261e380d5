"""From what a run showed to what the image must keep: each use of a path, by its meaning.

A program that reads or execs a file needs the file; one that stats it needs the entry;
one that lists a directory needs the directory. A program that creates a name (a lock
file in /tmp, its socket in /run/APP, a directory with mkdir), connects to a unix socket
or removes a name needs the directory that happens in, as the image has it (owner, mode,
sticky bit): a non-root service cannot bind /run/app/app.sock in a /run/app that the
runtime or the program had to make as root. This module is the one place that says which
image path a recorded use needs; the keep-list and the diagnosis both ask it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tracer.analysis.keeplist import KeepList, KeepListBuilder, Reason
from tracer.analysis.packages import package_files
from tracer.budgets import DEFAULT, Budgets
from tracer.explain.runfiles import write_path_index
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.static import Closure, which
from tracer.static.script import DEFAULT_PATH
from tracer.trace.result import Access, Meaning, SmokeResult

if TYPE_CHECKING:
    from tracer.image.prepare import Prepared
    from tracer.profile.model import Profile

__all__ = ["RUNTIME_DIRS", "build_keeplist", "collect_evidence", "needed_path", "who",
           "write_path_index"]

# Directories programs expect to exist and to be writable as the image made them (sticky
# 1777 /tmp): kept whenever the original image has them, symlinks as symlinks.
RUNTIME_DIRS = ("/tmp", "/var/tmp", "/run", "/var/run", "/run/lock", "/var/lock")
UNIDENTIFIED = "an unidentified process"
EEXIST = "EEXIST"


STARTER = "the run's start"  # the traced command's first exec (strace's child, or a shell)


def who(access: Access) -> str:
    """The program that made an access, or an honest word when the recorder did not know.
    A process strace saw exec before any program ran in it is how each run starts."""
    if access.program:
        return access.program
    if access.syscall in ("execve", "execveat"):
        return STARTER
    return UNIDENTIFIED


def parent_of(path: str) -> str:
    return posixpath.dirname(path) or "/"


def exists_in(root: RootFS, path: str) -> bool:
    """True when `path` names an entry of the image (its last component not followed)."""
    try:
        return root.resolve(path, follow_last=False).exists
    except SymlinkLoop:
        return False


def needed_path(access: Access, root: RootFS) -> tuple[str, bool] | None:
    """(path the image must have for this use, True when that is the directory it acted
    in), or None when the use needs nothing of the image.

    A failed use needs nothing, except a create that failed with EEXIST: the name was
    already there, and the program relied on it (`mkdir -p /var/lib/app` as a non-root
    user needs the image's /var/lib/app, owned by that user).
    """
    if not access.ok and not (access.meaning.in_parent and access.errno == EEXIST):
        return None
    if access.meaning.in_parent and not exists_in(root, access.path):
        return parent_of(access.path), True
    return access.path, False


def traced_reason(access: Access, in_parent: bool) -> Reason:
    """The keep-list's words for one use: `openat by PROG in STEP`, or for the directory a
    name was made in, `created in by PROG (SYSCALL) in STEP`."""
    if not in_parent:
        return Reason("traced", f"{access.syscall} by {who(access)} in {access.step}")
    verb = {Meaning.CREATE: "created in", Meaning.CONNECT: "a socket in it connected to",
            Meaning.REMOVE: "removed from"}[access.meaning]
    return Reason("traced", f"{verb} by {who(access)} ({access.syscall}) in {access.step}")


def _binary_roots(binaries: Mapping[str, str], root: RootFS, path_env: str) -> dict[str, str]:
    """keep.binaries roots by the path the resolver starts from (bare names looked up on
    the image's PATH, as the resolver does) -> the profile rule each came from."""
    out: dict[str, str] = {}
    for name, rule in binaries.items():
        found = which(root, name, path_env) if "/" not in name else name
        if found:
            out[found] = rule
    return out


def build_keeplist(profile: Profile, prepared: Prepared, trace: SmokeResult,
                   closure: Closure, binaries: Mapping[str, str] | None = None,
                   budgets: Budgets = DEFAULT) -> KeepList:
    """Merge every kind of evidence into the keep-list, with a reason for each path (see
    `collect_evidence`)."""
    return collect_evidence(profile, prepared, trace, closure, binaries, budgets).build()


def collect_evidence(profile: Profile, prepared: Prepared, trace: SmokeResult,
                     closure: Closure, binaries: Mapping[str, str] | None = None,
                     budgets: Budgets = DEFAULT) -> KeepListBuilder:
    """Every kind of evidence added to a keep-list builder, with a reason for each path;
    the caller builds it, or first widens it to whole packages (package granularity).

    `binaries` maps the closure roots that came from the profile's keep.binaries (after
    glob expansion) to the rule that named them; their reason is `keep.binaries: RULE`.
    Default: each keep.binaries entry names itself. `budgets` bound the package
    database keep.packages reads (package_db_bytes).
    """
    flat, root, cfg = prepared.flat, prepared.root, prepared.config
    env = cfg.environment(profile.run.env)
    path_env = env.get("PATH", DEFAULT_PATH)
    from_profile = _binary_roots(
        binaries if binaries is not None else {b: b for b in profile.keep.binaries},
        root, path_env)
    # roots that are also what runs (entrypoint, exec'd programs) keep their `elf` reason
    argv = cfg.command(profile.run.entrypoint, profile.run.cmd)
    ran = set(_binary_roots({r: r for r in [*argv[:1], *trace.execs]}, root, path_env))
    builder = KeepListBuilder(flat.entries, root, profile.keep.paths, profile.exclude,
                              hardlink_group=flat.hardlink_group)
    for path, needs in closure.files.items():
        elf = []
        for need in needs:
            start = need.chain[0] if need.chain else ""
            if need.kind == "root" and start in from_profile:
                builder.add(path, Reason("keep.binaries", from_profile[start]))
                if start not in ran:
                    continue
            elf.append(need)
        for need in elf[:3]:
            builder.add(path, Reason("elf", " -> ".join(need.chain) or need.kind))
    for access in trace.accesses:
        needed = needed_path(access, root)
        if needed is not None and needed[0] != "/":
            builder.add(needed[0], traced_reason(access, needed[1]))
    builder.add_keep_paths()
    for package, paths in package_files(root, profile.keep.packages, budgets).items():
        for path in paths:
            builder.add(path, Reason("keep.packages", package))
    for path in RUNTIME_DIRS:
        if exists_in(root, path):
            builder.add(path, Reason("runtime", "a standard runtime directory programs "
                                     "expect to exist"))
    # The runtime (not the traced process) resolves these before the app starts.
    for path in ("/etc/passwd", "/etc/group"):
        if path in flat.entries:
            builder.add(path, Reason("config", "user lookup by the container runtime"))
    workdir_path = profile.run.workdir or cfg.workdir
    if workdir_path:
        builder.add(workdir_path, Reason("config", "WorkingDir"))
    for volume in cfg.volumes:
        builder.add(volume, Reason("config", "Volume"))
    return builder
