"""Trace as root, run the app as the profile's user.

Under ptrace the kernel grants a setuid/setgid or file-capability executable its
privilege only if the TRACER holds CAP_SYS_PTRACE. strace started as the profile's
non-root user has none, so `sudo` and friends fail traced and pass untraced. So strace
runs as root in the container (which gets CAP_SYS_PTRACE and nothing else), and the app
is started with exactly the identity Docker would have given it:

- `-u NAME` (strace's own switch: getpwnam + initgroups inside the container) when the
  user is a name or a uid that names a passwd entry, no group is given, and the image's
  name service is plain files (strace 6.1 takes names only; a non-files NSS module would
  be loaded from the image into the host's strace);
- otherwise the host's `setpriv`, carried in the bundle, with the numeric uid, gid and
  supplementary groups resolved from the image's /etc/passwd and /etc/group the way the
  engine's runtime does (an explicit group replaces the supplementary groups; a uid
  without a passwd entry gets gid 0);
- a user the image cannot resolve keeps today's behaviour (the container runs as that
  user), so the traced run fails exactly as the untraced one does.

One more thing cancels the privilege: strace's `--seccomp-bpf` (cheap tracing: stops only
at the traced calls) sets no_new_privs on the tracee, and the kernel then ignores setuid
bits and file capabilities. So a non-root app is traced without that filter (every
syscall stops: slower) unless the caller knows the image has no privileged programs
(`RunAs.seccomp`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROOT_FORMS = {"", "root", "0", "0:0", "root:root", "root:0", "0:root"}


@dataclass(frozen=True)
class Identity:
    """Resolved numeric identity (what the runtime would set)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class RunAs:
    """How a traced process gets the profile's user while strace stays root."""

    container_user: str | None  # the engine's `user` for the container / exec
    strace_user: str | None = None  # strace -u NAME
    setpriv: list[str] = field(default_factory=list)  # setpriv arguments, before `--`
    note: str | None = None  # said in the result when privilege cannot be kept
    seccomp: bool = True  # strace's seccomp filter (it sets no_new_privs: no setuid gains)

    @property
    def drops(self) -> bool:
        """True when strace runs as root and the app is switched to the user."""
        return bool(self.strace_user or self.setpriv)


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int


def numeric(text: str) -> bool:
    """An id as the runtime and libc read one: ASCII digits of a 32-bit number.
    `str.isdigit()` and `int()` also take `²` or `١`, which an image may use as a user
    name, and `int()` refuses a number of thousands of digits (ValueError)."""
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 1 << 32


def parse_passwd(text: str) -> list[_User]:
    """The entries of an /etc/passwd (malformed lines are skipped, as libc does)."""
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not parts[0] or parts[0].startswith(("+", "-")):
            continue
        if numeric(parts[2]) and numeric(parts[3]):
            out.append(_User(parts[0], int(parts[2]), int(parts[3])))
    return out


def parse_group(text: str) -> list[tuple[str, int, list[str]]]:
    """(name, gid, members) of an /etc/group."""
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not parts[0] or parts[0].startswith(("+", "-")):
            continue
        if numeric(parts[2]):
            out.append((parts[0], int(parts[2]), [m for m in parts[3].split(",") if m]))
    return out


def files_only(nsswitch: str | None) -> bool:
    """True when passwd and group are looked up in files alone (glibc's built-in module)."""
    if nsswitch is None:
        return True  # no nsswitch.conf: glibc's default for these databases is files
    for line in nsswitch.splitlines():
        key, _, rest = line.split("#", 1)[0].partition(":")
        if key.strip() in ("passwd", "group"):
            sources = [w for w in rest.split() if not w.startswith("[")]
            if any(s != "files" for s in sources):
                return False
    return True


def resolve(user: str, passwd: str | None, group: str | None) -> tuple[Identity, str | None] | None:
    """The runtime's identity for `user` (and the passwd name it matched), None if the
    image cannot resolve it (the runtime would refuse to start the container)."""
    users = parse_passwd(passwd or "")
    groups = parse_group(group or "")
    name_part, _, group_part = user.partition(":")
    if numeric(name_part):
        entry = next((u for u in users if u.uid == int(name_part)), None)
        uid = int(name_part)
    else:
        entry = next((u for u in users if u.name == name_part), None)
        if entry is None:
            return None
        uid = entry.uid
    if group_part:
        if numeric(group_part):
            gid = int(group_part)
        else:
            found = next((g for g in groups if g[0] == group_part), None)
            if found is None:
                return None
            gid = found[1]
        return Identity(uid, gid), entry.name if entry else None
    gid = entry.gid if entry else 0
    supplementary = tuple(sorted({g[1] for g in groups if entry and entry.name in g[2]}))
    return Identity(uid, gid, supplementary), entry.name if entry else None


def plan(user: str | None, *, passwd: str | None, group: str | None, nsswitch: str | None,
         setpriv: bool, privileged_programs: bool = True) -> RunAs:
    """How to run `user` (the profile's, else the image's) under a root strace.

    `privileged_programs`: the image may hold setuid/setgid or file-capability programs
    (the safe default); then a non-root app is traced without strace's seccomp filter."""
    if user is None or user in ROOT_FORMS:
        return RunAs(container_user=user)
    resolved = resolve(user, passwd, group)
    if resolved is None:
        return RunAs(container_user=user)  # fails traced exactly as untraced
    ident, name = resolved
    seccomp = not privileged_programs
    if name and ":" not in user and files_only(nsswitch):
        return RunAs(container_user="0", strace_user=name, seccomp=seccomp)
    if setpriv:
        groups = (f"--groups={','.join(map(str, ident.groups))}" if ident.groups
                  else "--clear-groups")
        return RunAs(container_user="0", seccomp=seccomp,
                     setpriv=[f"--reuid={ident.uid}", f"--regid={ident.gid}", groups])
    return RunAs(container_user=user,
                 note=f"strace runs as user {user!r} (setpriv is not installed on this host): "
                      "setuid and file-capability programs lose their privilege when traced")
