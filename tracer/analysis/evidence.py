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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracer.analysis.keeplist import KeepList, KeepListBuilder, Reason
from tracer.analysis.packages import package_files
from tracer.analysis.recording import PathUse, Recording, timestamp
from tracer.budgets import DEFAULT, Budgets
from tracer.explain.runfiles import write_path_index
from tracer.rootfs import RootFS, SymlinkLoop
from tracer.static import Closure, which
from tracer.static.closure import first_needs
from tracer.static.script import DEFAULT_PATH
from tracer.trace.result import Access, Meaning, SmokeResult

if TYPE_CHECKING:
    from tracer.image.prepare import Prepared
    from tracer.profile.model import Profile

__all__ = ["RUNTIME_DIRS", "EvidenceFile", "add_recordings", "build_keeplist",
           "collect_evidence", "needed_path", "recorded_roots", "who", "write_path_index"]

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


# -- production evidence: recordings made by `tracer record` -------------------------------

EVIDENCE = "evidence"  # the keep-list's reason kind for a path a recording saw
_PYC_TAG = ".pyc"


@dataclass
class EvidenceFile:
    """What one recording added: for the report, the console and `tracer why`."""

    file: str
    host: str
    span: tuple[str, str]
    containers: list[str]
    paths: int  # paths the recording names
    kept: int = 0  # of them, paths of this image (kept unless an exclude rule says no)
    not_in_image: list[str] = field(default_factory=list)  # listed, and ignored

    def to_json(self) -> dict:
        return {"file": self.file, "host": self.host, "span": list(self.span),
                "containers": self.containers, "paths": self.paths, "kept": self.kept,
                "not_in_image": self.not_in_image}


def _programs(use: PathUse) -> str:
    """`/usr/bin/app`, `/usr/bin/a and /bin/sh (and 3 more)`, `an unidentified process`."""
    names = [p for p in use.programs if p]
    if not names:
        return UNIDENTIFIED
    more = max(len(names) - 2, 0) + use.more
    if more:
        return " and ".join(names[:2]) + f" (and {more} more)"
    return " and ".join(names + ([UNIDENTIFIED] if "" in use.programs else []))


def recorded_reason(rec: Recording, use: PathUse, how: str = "") -> Reason:
    """`seen in production: PROGRAM, recorded DATE from CONTAINER on HOST (FILE)`; `how`
    goes after the program (`read X.pyc, whose source Python checks first`)."""
    source = f" ({rec.source.name})" if rec.source is not None else ""
    return Reason(EVIDENCE, f"seen in production: {_programs(use)}{how}, recorded "
                  f"{rec.date} from {rec.where()}{source}")


def python_source(path: str) -> str | None:
    """`DIR/NAME.py` for a recorded `DIR/__pycache__/NAME.TAG.pyc`: Python uses a cached
    module only after it stat()s the source beside it (to compare times), and a stat
    makes no fanotify event, so the recording shows the .pyc alone."""
    directory, name = posixpath.split(path)
    if not name.endswith(_PYC_TAG) or posixpath.basename(directory) != "__pycache__":
        return None
    module = name[:-len(_PYC_TAG)].split(".", 1)[0]
    return posixpath.join(posixpath.dirname(directory), module + ".py")


def add_recordings(builder: KeepListBuilder, recordings: Sequence[Recording],
                   root: RootFS) -> list[EvidenceFile]:
    """Every path of every recording that the image has, kept with its reason (its
    symlinks and parents follow in `build()`, exclude applies as to traced paths); what
    the image lacks (files the app made at run time, another version's files) is listed
    per recording and otherwise ignored."""
    out = []
    for rec in recordings:
        summary = EvidenceFile(
            file=str(rec.source) if rec.source is not None else "", host=rec.host,
            span=(timestamp(rec.start), timestamp(rec.end)),
            containers=sorted(c.name or c.id for c in rec.containers), paths=len(rec.paths))
        for path in sorted(rec.paths):
            if path == "/":
                continue
            if not exists_in(root, path):
                summary.not_in_image.append(path)
                continue
            use = rec.paths[path]
            builder.add(path, recorded_reason(rec, use))
            summary.kept += 1
            source = python_source(path)
            if source is not None and exists_in(root, source):
                how = f" read {posixpath.basename(path)}, whose source Python checks first"
                builder.add(source, recorded_reason(rec, use, how))
        out.append(summary)
    return out


def recorded_roots(recordings: Sequence[Recording], root: RootFS) -> list[str]:
    """Recorded programs and shared objects for the ELF closure: fanotify names files
    with their links resolved (`libsqlite3.so.0.8.6`), and the closure keeps the names
    the loader looks for (`libsqlite3.so.0`), and whatever a recorded program needs."""
    from tracer.static.elf import ELF_MAGIC

    out: dict[str, None] = {}
    for rec in recordings:
        for path, use in rec.paths.items():
            name = posixpath.basename(path)
            if path in out or not ("exec" in use.kinds or ".so" in name):
                continue
            try:
                if not root.is_file(path):
                    continue
                with root.open(path) as f:
                    if f.read(len(ELF_MAGIC)) == ELF_MAGIC:
                        out[path] = None
            except (OSError, SymlinkLoop):
                continue
    return list(out)


def build_keeplist(profile: Profile, prepared: Prepared, trace: SmokeResult,
                   closure: Closure, binaries: Mapping[str, str] | None = None,
                   budgets: Budgets = DEFAULT) -> KeepList:
    """Merge every kind of evidence into the keep-list, with a reason for each path (see
    `collect_evidence`)."""
    return collect_evidence(profile, prepared, trace, closure, binaries, budgets).build()


def collect_evidence(profile: Profile, prepared: Prepared, trace: SmokeResult,
                     closure: Closure, binaries: Mapping[str, str] | None = None,
                     budgets: Budgets = DEFAULT,
                     recordings: Sequence[Recording] = (),
                     evidence_files: list[EvidenceFile] | None = None) -> KeepListBuilder:
    """Every kind of evidence added to a keep-list builder, with a reason for each path;
    the caller builds it, or first widens it to whole packages (package granularity).

    `binaries` maps the closure roots that came from the profile's keep.binaries (after
    glob expansion) to the rule that named them; their reason is `keep.binaries: RULE`.
    Default: each keep.binaries entry names itself. `budgets` bound the package
    database keep.packages reads (package_db_bytes). `recordings` (keep.evidence) add
    what production used; what each added is appended to `evidence_files`.
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
    # a recorded program or library as a root of the closure: its evidence says why
    recorded = {path for rec in recordings for path in rec.paths}
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
            if need.kind == "root" and start in recorded and start not in ran:
                continue
            elf.append(need)
        for need in first_needs(elf):
            builder.add(path, Reason("elf", " -> ".join(need.chain) or need.kind))
    for access in trace.accesses:
        needed = needed_path(access, root)
        if needed is not None and needed[0] != "/":
            builder.add(needed[0], traced_reason(access, needed[1]))
    added = add_recordings(builder, recordings, root)
    if evidence_files is not None:
        evidence_files.extend(added)
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
