"""`tracer init IMAGE`: a starting profile written from what the image already says.

Every profile used to start from a blank file although the image config names the
entrypoint, user, working directory, exposed ports and healthcheck. This module reads
them (and the image's package database, for companion programs of the entrypoint) and
writes a profile that validates as written: for a service with an exposed port and a
healthcheck it passes `tracer minimize` as is. What only a person can know (which
requests production makes, which data trees to keep) is left as `# TODO:` comments.

The image is hostile input and its strings end up in a YAML file a person will run: every
value from it is written as a double-quoted YAML scalar with every non-printable
character escaped, so a newline in an Env value or a program name cannot add a key.
"""

from __future__ import annotations

import posixpath
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tracer.budgets import DEFAULT as DEFAULT_BUDGETS
from tracer.errors import BadInput
from tracer.image.config import ImageConfig
from tracer.image.reference import ImageRef, RefOptions, default_output, parse_reference
from tracer.progress import Progress
from tracer.rootfs import RootFS, SymlinkLoop, normalize
from tracer.units.apk import read_apk
from tracer.units.dpkg import read_dpkg
from tracer.units.reader import DbReader

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELLS = ("sh", "bash", "dash", "ash", "busybox")
MAX_CANDIDATES = 40  # listed programs; a package with hundreds is not a hint any more
# Environment that decides which files the application reads, and so which are kept.
_ENV_THAT_MATTERS = re.compile(r"^(LANG|LANGUAGE|LC_[A-Z]+|TZ)$")
_DOC_EXCLUDES = ("/usr/share/doc/**", "/usr/share/man/**", "/usr/share/info/**",
                 "/usr/share/lintian/**", "/var/lib/apt/**", "/var/cache/apt/**",
                 "/var/cache/apk/**")


@dataclass(frozen=True)
class Companions:
    """Programs on PATH shipped by the same packages as the entrypoint's program."""

    program: str | None = None  # the entrypoint's program, as found in the image
    packages: list[str] = field(default_factory=list)  # its owning packages
    programs: list[str] = field(default_factory=list)  # candidates for keep.binaries
    note: str = ""  # why there are none, when there are none


# -- reading the image --------------------------------------------------------------------

def init_profile(image: str, progress: Progress | None = None,
                 options: RefOptions | None = None) -> str:
    """The starting profile for `image` as YAML text (reads and indexes the image; on a
    big image read through `docker save` that takes a while, so it is said on stderr).
    `options`: --tls-verify, --cert-dir and --platform for a registry image."""
    from tracer.image.transports import read_image
    from tracer.workdir import workdir

    progress = progress or Progress(quiet=True)
    ref = parse_reference(image).with_options(options or RefOptions())
    with workdir("tracer-init-") as work:
        progress.phase(f"reading {ref}")
        flat, how = read_image(ref, work, DEFAULT_BUDGETS, progress)
        progress.done(f"{len(flat.entries):,} paths; read by {how}")
        config = ImageConfig.from_image_json(flat.config, str(ref))
        root = flat.rootfs()
        companions = find_companions(root, config)
        return render_profile(ref, config, companions, present=root.is_dir)


def write_new(path: Path, text: str) -> None:
    """Write `text` to a new file; an existing one is never overwritten (exit 2)."""
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise BadInput(f"{path} exists; tracer init never overwrites a file (remove it or "
                       "name another)") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot write: {exc.strerror or exc}") from None


def _path_dirs(config: ImageConfig) -> list[str]:
    value = config.env.get("PATH") or DEFAULT_PATH
    return [d for d in value.split(":") if d.startswith("/")]


def _which(root: RootFS, name: str, dirs: list[str]) -> str | None:
    if "/" in name:
        return name if name.startswith("/") and root.is_file(name) else None
    for d in dirs:
        candidate = posixpath.join(d, name)
        if root.is_file(candidate):
            return candidate
    return None


def _entry_programs(config: ImageConfig) -> list[str]:
    """The programs the container's command names: its first word and, behind a shell
    `-c` or an entrypoint script, the first word of what it runs."""
    argv = config.command(None, None)
    out: list[str] = []
    if argv:
        out.append(argv[0])
        if posixpath.basename(argv[0]) in SHELLS and len(argv) > 2 and argv[1] == "-c":
            words = argv[2].split()
            if words and words[0] == "exec":
                words = words[1:]
            if words:
                out.append(words[0])
    if config.entrypoint and config.cmd:
        out.append(config.cmd[0])  # docker-entrypoint.sh nginx ...: nginx is the program
    return out


def _canonical(root: RootFS, path: str) -> str:
    """`path` with its directory resolved in the image (merged /usr: /bin/x == /usr/bin/x)."""
    try:
        parent = root.resolve(posixpath.dirname(path) or "/").path
    except SymlinkLoop:
        return path
    return posixpath.join(parent, posixpath.basename(path))


def _names_of(root: RootFS, path: str) -> set[str]:
    """Every canonical name the file `path` goes by: itself and each link of its own
    chain (`/usr/bin/python3` -> `python3.11`), not the directory links on the way."""
    names = {_canonical(root, path)}
    current = path
    for _ in range(40):  # the kernel's limit on links followed
        st = root.lstat(current)
        if st is None or not stat.S_ISLNK(st.st_mode):
            break
        target = root.readlink(current)
        current = normalize(target if target.startswith("/") else
                            posixpath.join(posixpath.dirname(_canonical(root, current)), target))
        names.add(_canonical(root, current))
    return names


def _package_db(root: RootFS) -> dict[str, list[str]]:
    """Installed package -> its paths, through the same bounded readers as keep.packages
    and package granularity (dpkg status and diversions honoured; apk when no dpkg)."""
    reader = DbReader(root, DEFAULT_BUDGETS)
    units = read_dpkg(reader) or read_apk(reader)
    out: dict[str, list[str]] = {}
    for unit in units:
        name = f"{unit.name}:{unit.arch}" if unit.arch else unit.name
        out.setdefault(name, []).extend(unit.paths)
    return out


def _is_program(root: RootFS, path: str) -> bool:
    st = root.stat(path)
    return st is not None and stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def find_companions(root: RootFS, config: ImageConfig) -> Companions:
    """Programs on PATH from the packages that ship the entrypoint's program."""
    dirs = _path_dirs(config)
    programs = [p for name in _entry_programs(config) if (p := _which(root, name, dirs))]
    if not programs:
        return Companions(note="the image's command names no program found in the image")
    db = _package_db(root)
    if not db:
        return Companions(program=programs[0],
                          note="the image has no dpkg or apk package database")
    wanted: set[str] = set()
    for program in programs:
        wanted |= _names_of(root, program)
    bases = {posixpath.basename(n) for n in wanted}
    owners = sorted(pkg for pkg, paths in db.items()
                    if any(posixpath.basename(p) in bases and _canonical(root, p) in wanted
                           for p in paths))
    if not owners:
        return Companions(program=programs[0], note=f"{programs[0]} is not from a package")
    path_dirs = {_canonical(root, d + "/x").rsplit("/", 1)[0] for d in dirs}
    found: list[str] = []
    for pkg in owners:
        for p in db[pkg]:
            if (_canonical(root, p).rsplit("/", 1)[0] in path_dirs and p not in found
                    and not (_names_of(root, p) & wanted) and _is_program(root, p)):
                found.append(p)
    return Companions(program=programs[0], packages=owners, programs=sorted(found),
                      note="" if found else "its packages ship no other program on PATH")


# -- writing the profile ------------------------------------------------------------------

# Printable for YAML and no line break: NEL, LS, PS break lines in YAML 1.1, and a BOM
# is taken as an encoding mark.
_PRINTABLE = re.compile(r"[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
                        r"\U00010000-\U0010ffff]")


def quote(value: str) -> str:
    """A YAML double-quoted scalar that reads back as exactly `value` (anything escaped
    that YAML would not take as is, so image data cannot break out of the string)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif _PRINTABLE.fullmatch(ch):
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _flow(values: Iterable[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def profile_name(ref: ImageRef) -> str:
    """A valid profile name from the image's name (or file name)."""
    base = (ref.name or "").rsplit("/", 1)[-1] or Path(ref.path or "").name
    base = Path(base).stem if ref.transport == "docker-archive" and not ref.name else base
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).lstrip("._-")
    return name[:64] or "app"


def _tcp_ports(config: ImageConfig) -> list[int]:
    ports = []
    for spec in config.exposed_ports:
        number, _, proto = spec.partition("/")
        if (proto or "tcp") == "tcp" and number.isascii() and number.isdigit() \
                and len(number) <= 5 and 1 <= int(number) <= 65535:
            ports.append(int(number))
    return sorted(set(ports))


def healthcheck_argv(test: list[str]) -> list[str] | None:
    """Docker's HEALTHCHECK test as argv: CMD as is, CMD-SHELL through /bin/sh -c."""
    if len(test) >= 2 and test[0] == "CMD":
        return list(test[1:])
    if len(test) == 2 and test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    return None


def render_profile(ref: ImageRef, config: ImageConfig, companions: Companions,
                   present: Callable[[str], bool] | None = None) -> str:
    """The profile text; it validates as written (tests parse it). `present(dir)` says
    whether the image has a directory: exclude rules for directories it lacks (apk's
    cache in a Debian image) are left out, as they would only raise questions."""
    ports = _tcp_ports(config)
    service = bool(ports) or bool(config.exposed_ports)
    health = healthcheck_argv(config.healthcheck) if service else None
    out: list[str] = []
    add = out.append
    add("# Starting profile written by `tracer init` from the image's config. Reference:")
    add("# docs/profile.md in tracer's repository (`tracer schema` gives editors the schema).")
    add("# Check every TODO, then: tracer validate FILE && tracer minimize FILE")
    add("version: 1")
    add(f"name: {quote(profile_name(ref))}")
    add(f"image: {quote(str(ref))}")
    add(f"# output: {quote(str(default_output(ref)))}   # the default")
    add("")
    add("run:")
    _render_command(add, config)
    if config.user:
        add(f"  user: {quote(config.user)}")
    if config.workdir.startswith("/"):
        add(f"  workdir: {quote(config.workdir)}")
    _render_env(add, config)
    if service:
        _render_service(add, ports)
    else:
        add("  network: none")
        add("  mode: job              # the image exposes no port: a program that runs to an end")
        add("  exit: 0")
        add("  # TODO: give stdout: a regex its output must match. An exit code alone cannot")
        add("  # tell \"did the work\" from \"printed usage and gave up\".")
        add("  # stdin: \"...\"          # stdin is empty and closed unless given")
    add("  # tmpfs: [/tmp, /run]   # writable scratch dirs, if the app writes pid files there")
    add("")
    _render_smoke(add, config, ports, health, service, companions.program)
    add("")
    _render_keep(add, config, companions)
    add("")
    excludes = [g for g in _DOC_EXCLUDES if present is None or present(g.removesuffix("/**"))]
    if excludes:
        add("exclude:   # documentation and package-manager data the application never reads")
        for glob in excludes:
            add(f"  - {quote(glob)}")
    else:
        add("exclude: []   # e.g. documentation the application never reads")
    return "\n".join(out) + "\n"


Emit = Callable[[str], None]  # appends one line of the profile


def _render_command(add: Emit, config: ImageConfig) -> None:
    add("  # What runs, from the image (Docker's rule: entrypoint + cmd). Delete these lines")
    add("  # to follow the image when it changes.")
    if config.entrypoint:
        add(f"  entrypoint: {_flow(config.entrypoint)}")
        add(f"  cmd: {_flow(config.cmd)}")
    elif config.cmd:
        add(f"  cmd: {_flow(config.cmd)}")
    else:
        add("  # TODO: the image has neither Entrypoint nor Cmd: give run.entrypoint")


def _render_env(add: Emit, config: ImageConfig) -> None:
    matters = {k: v for k, v in config.env.items() if _ENV_THAT_MATTERS.match(k)}
    others = [k for k in config.env if k not in matters and k != "PATH"]
    add("  # The image's Env applies as it is; run.env is merged over it. Locale and time zone")
    add("  # decide which locale and zoneinfo files are read, so kept.")
    if matters:
        add("  env:   # TODO: the values production uses")
        for key, value in matters.items():
            add(f"    {quote(key)}: {quote(value)}")
    else:
        add("  # env: {LANG: C.UTF-8, TZ: UTC}   # TODO: the locale and zone production uses")
    if others:
        shown = ", ".join(others[:12]) + (", ..." if len(others) > 12 else "")
        add(f"  # The image also sets: {_comment_text(shown)}")


def _render_service(add: Emit, ports: list[int]) -> None:
    add("  network: host          # so ready.tcp and the steps reach 127.0.0.1:PORT")
    add("  mode: service")
    if ports:
        add("  ready:")
        add(f"    tcp: {ports[0]:<5}           # the image exposes "
            + ", ".join(str(p) for p in ports) + "/tcp")
        add("    # log: \"...\"          # TODO: a line it prints once it serves (plugins loaded)")
        add("    timeout: 30s")
        if len(ports) > 1:
            add("  # TODO: with network: host the app binds the host's ports; other profiles run")
            add("  # at the same time must use others.")
    else:
        add("  ready:")
        add("    timeout: 30s")
        add("    # TODO: no TCP port is exposed; give log: a line it prints once it serves")


def _render_smoke(add: Emit, config: ImageConfig, ports: list[int],
                  health: list[str] | None, service: bool, program: str | None) -> None:
    add("# TODO: one step per thing production does: every URL or command that loads a")
    add("# module, plugin, codec, locale or helper program. A file no step touches may be lost.")
    steps: list[str] = []
    if health:
        steps.append("  # The image's HEALTHCHECK, run inside the container.")
        steps.append(f"  - exec: {_flow(health)}")
        steps.append("    exit: 0")
    elif healthcheck_argv(config.healthcheck) and not service:
        steps.append("  # The image's HEALTHCHECK needs a running service; a job has none.")
    elif config.healthcheck and config.healthcheck != ["NONE"]:
        steps.append("  # The image's HEALTHCHECK "
                     f"{_comment_text(' '.join(config.healthcheck[:1]))} cannot be a step.")
    if ports:
        steps.append(f"  # - http: {{url: \"http://127.0.0.1:{ports[0]}/\", status: 200, "
                     "body: \"...\"}")
        steps.append(f"  # - tcp: {{port: {ports[0]}, send: \"...\\r\\n\", expect: \"...\"}}")
    else:
        argv = _flow([program]) if program else '["PROGRAM", "ARG"]'
        steps.append(f"  # - command: {argv}   # a fresh container, "
                     "entrypoint replaced;")
        steps.append("  #   stdout: \"...\"   # add the arguments and input production gives it")
    add("smoke:" if health else "smoke: []")
    for line in steps:
        add(line)


def _render_keep(add: Emit, config: ImageConfig, comp: Companions) -> None:
    add("keep:")
    add("  granularity: file   # TODO: package keeps whole packages of what is used: bigger,")
    add("  #                    but production paths the smoke test missed still work;")
    add("  #                    deps also keeps what those packages depend on: safest")
    add("  # paths: [\"/etc/APP/**\"]   # TODO: configuration and content trees, all of them")
    for volume in config.volumes:
        add(f"  # The image declares VOLUME {_comment_text(volume)}: keep what the image ships "
            "there if the app needs it.")
    if comp.programs:
        owners = _comment_text(", ".join(comp.packages))
        add("  # Programs on PATH from the packages of the image's command, companion tools")
        add(f"  # production may run ({owners}).")
        add("  # TODO: uncomment those production runs (or add a smoke step that runs them).")
        add("  # binaries:")
        for p in comp.programs[:MAX_CANDIDATES]:
            add(f"  #   - {quote(p)}")
        if len(comp.programs) > MAX_CANDIDATES:
            add(f"  #   ... and {len(comp.programs) - MAX_CANDIDATES} more")
    else:
        add(f"  # binaries: []   # no candidates: {_comment_text(comp.note)}")


def _comment_text(text: str) -> str:
    """Image data inside a comment: one line, printable (quote()'s escapes, no quotes)."""
    return quote(text)[1:-1]

