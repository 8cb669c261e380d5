"""Package granularity: every kept file pulls in the whole unit it belongs to.

A smoke test covers the main path; production then uses the same program a little
differently (another codec, time zone, stdlib module, subcommand). The files it needs
then are, far more often than not, in the same package as a file the smoke test used:
`encodings/iso8859_15.py` next to `encodings/utf_8.py`, `zoneinfo/America/New_York` next
to `zoneinfo/Europe/Berlin`. So for every unit that owns a kept file the rest of the unit
is added, minus what no program reads at run time (the built-in default excludes below).

Built-in default excludes (only for what a unit adds; a file the evidence keeps stays):

- `/usr/share/doc/**`, `/usr/share/man/**`, `/usr/share/info/**`, `/usr/share/lintian/**`,
  `/usr/share/doc-base/**`: documentation and packaging metadata;
- `/usr/share/locale/<lang>/**` for every language not in use. A language is in use
  when a file under `/usr/share/locale/<dir>/` is kept at file level (a program opened a
  message catalog there) or when LANGUAGE (each entry), LC_ALL, LC_MESSAGES or LANG of
  the run's environment names it; the language of `de_AT.UTF-8@euro` is `de` and keeps
  every `de*` directory. C and POSIX name none. Compiled locales (`/usr/lib/locale`)
  are never excluded: C.UTF-8 lives there.

The profile's `exclude` still applies after this (the caller's keep-list builder does it).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis.keeplist import compile_globs, first_match
from tracer.rootfs import SymlinkLoop
from tracer.units.index import UnitIndex
from tracer.units.l10n import LANGUAGE_VARS, LOCALE_DIR, language_of, languages_in_use

__all__ = ["DEFAULT_EXCLUDES", "LANGUAGE_VARS", "LOCALE_DIR", "LOCALE_RULE", "Expansion",
           "PulledUnit", "add_units", "describe", "expand", "language_of", "languages_in_use",
           "reason_parts"]
from tracer.units.model import PRIORITY, Unit

DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/usr/share/doc/**",
    "/usr/share/man/**",
    "/usr/share/info/**",
    "/usr/share/lintian/**",
    "/usr/share/doc-base/**",
)
LOCALE_RULE = "/usr/share/locale/<lang>/** for languages not in use"

# Which reason of a kept path is the best explanation of why its unit is pulled in.
REASON_RANK = {"traced": 0, "evidence": 1, "elf": 1, "keep.binaries": 2, "keep.paths": 3,
               "config": 4, "keep.packages": 5, "symlink": 6, "hardlink": 7, "package": 8,
               "deps": 8, "alternatives": 8, "l10n": 8, "parent": 9}
VERBS = {"open": "opened", "openat": "opened", "openat2": "opened", "creat": "opened",
         "fanotify:open": "opened", "execve": "executed", "execveat": "executed",
         "fanotify:exec": "executed", "uselib": "loaded", "readlink": "read as a link",
         "readlinkat": "read as a link"}


def reason_parts(reason: Any) -> tuple[str, str]:
    """(kind, detail) of a keep-list Reason or of its text `kind: detail`."""
    kind, detail = getattr(reason, "kind", None), getattr(reason, "detail", None)
    if isinstance(kind, str) and isinstance(detail, str):
        return kind, detail
    text = str(reason)
    head, sep, tail = text.partition(": ")
    if sep and head in REASON_RANK:
        return head, tail
    return "", text


def _rank(reason: tuple[str, str]) -> tuple[int, int]:
    """Order of reasons: by kind, and among traced ones what opened or ran the file first."""
    kind, detail = reason
    used = kind == "traced" and VERBS.get(detail.split(" ", 1)[0], "") in ("opened", "executed")
    return REASON_RANK.get(kind, 10), 0 if used or kind != "traced" else 1


def describe(path: str, kind: str, detail: str) -> str:
    """`/x/utf_8.py was opened by python3 in smoke[0]`: a reason as a sentence about `path`."""
    if kind == "traced":
        m = re.match(r"^(\S+) by (.*)$", detail)
        if m:
            verb = VERBS.get(m.group(1))
            if verb is None:
                verb = "looked up" if "stat" in m.group(1) or "access" in m.group(1) else \
                    f"used ({m.group(1)})"
            who = m.group(2)
            if who.startswith("? in "):  # the recorder could not name the program
                return f"{path} was {verb} {who[2:]}"
            return f"{path} was {verb} by {who}"
        return f"{path} was used ({detail})"
    if kind == "elf":
        return f"{path} is needed by {detail}"
    if kind == "evidence":  # `seen in production: PROGRAM, recorded DATE from ... (FILE)`
        return f"{path} was {detail}"
    if kind in ("keep.paths", "keep.binaries", "keep.packages"):
        return f"{path} is kept by {kind} {detail!r}"
    if kind in ("config", "symlink", "hardlink", "parent"):
        return f"{path} is kept ({kind}: {detail})"
    return f"{path} is kept ({detail})" if detail else f"{path} is kept"


@dataclass
class PulledUnit:
    """One unit the expansion pulled in, what triggered it and what it adds."""

    unit: Unit
    trigger: str  # the kept path that pulled it in (deps: the kept unit the chain starts at)
    reason: str  # the keep-list reason text of every path it adds
    added: list[str] = field(default_factory=list)  # paths added (not kept before)
    chain: tuple[str, ...] = ()  # deps: unit names from a kept unit to this one

    def to_json(self) -> dict[str, Any]:
        out = {"unit": self.unit.label, "kind": self.unit.kind, "name": self.unit.name,
               "version": self.unit.version, "source": self.unit.source,
               "trigger": self.trigger, "reason": self.reason, "added_paths": len(self.added)}
        if self.chain:
            out["chain"] = list(self.chain)
        return out


@dataclass
class Expansion:
    """What package granularity adds to a file-level keep-list."""

    pulled: list[PulledUnit] = field(default_factory=list)  # system packages first, by key
    added: dict[str, str] = field(default_factory=dict)  # path -> reason (first unit wins)
    default_excluded: dict[str, str] = field(default_factory=dict)  # path -> built-in rule
    # links a unit lists that lead to what the profile excludes: path -> that exclude rule
    excluded_links: dict[str, str] = field(default_factory=dict)
    languages: list[str] = field(default_factory=list)  # languages in use (locale rule)
    rules: list[str] = field(default_factory=list)  # the built-in rules that applied

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for rule in self.default_excluded.values():
            rule = LOCALE_RULE if rule.startswith(LOCALE_DIR + "/") else rule
            counts[rule] = counts.get(rule, 0) + 1
        return {"default_excludes": self.rules, "languages_in_use": self.languages,
                "default_excluded_paths": dict(sorted(counts.items())),
                "links_to_excluded_paths": dict(sorted(self.excluded_links.items())),
                "units": [p.to_json() for p in self.pulled], "added_paths": len(self.added)}


def _is_dir(index: UnitIndex, path: str, *, follow: bool = False) -> bool | None:
    """True/False for a directory or not, None when the image lacks the path.

    `follow`: a symlink to a directory counts as one (merged /usr's `/lib`, which dozens
    of .list files name, must not pull in every package that lists it).
    """
    try:
        st = index.root.stat(path) if follow else index.root.lstat(path)
    except SymlinkLoop:
        return None
    return None if st is None else stat.S_ISDIR(st.st_mode)


def expand(index: UnitIndex, kept: Mapping[str, Sequence[Any]], *,
           env: Mapping[str, str] | None = None,
           excludes: Sequence[str] = DEFAULT_EXCLUDES,
           link_excluded: Callable[[str], str | None] | None = None) -> Expansion:
    """The paths package granularity adds to `kept` (path -> reasons), with their reasons.

    `kept` maps the file-level keep-list's paths to their reasons (keep-list Reason
    objects or their `kind: detail` texts). Every kept path that is not a directory
    pulls in every unit that owns it (directories are shared by many units and are kept
    as parents anyway): its system package and, where a language layout claims it too,
    that unit. A distribution may split one stdlib package directory across packages
    (what interpreter start-up needs in a -minimal package, the rest elsewhere); the
    stdlib directory unit still keeps all of encodings/ together.
    A unit's reason names the best reason of its best trigger (traced before elf before
    keep.* before config, opened or executed before looked up, then the first path); a
    path two pulled units own carries the reason of the system package. `env` is the
    run's environment, for the languages in use. Paths already kept are not added again,
    so nothing here removes a file the evidence keeps. `link_excluded(path)` names the
    profile's exclude rule a symlink a unit lists leads to (None: it does not): such a link
    is not added, since keeping it would keep what the profile excludes (a kept link keeps
    its target) or leave it dangling.
    """
    out = Expansion()
    languages = languages_in_use(kept, env or {})
    out.languages = sorted(languages)
    globs = compile_globs(excludes)
    out.rules = [*excludes, LOCALE_RULE]

    best: dict[str, tuple[tuple[int, int, str], str]] = {}  # key -> ((rank, path), because)
    for path, reasons in kept.items():
        if _is_dir(index, path) is not False or _is_dir(index, path, follow=True):
            continue
        units = index.units_of(path)
        if not units:
            continue
        parts = [reason_parts(r) for r in reasons] or [("", "")]
        kind, detail = min(parts, key=lambda part: (*_rank(part), part))  # ties: by text
        rank = (*_rank((kind, detail)), path)
        for unit in units:
            if unit.key not in best or rank < best[unit.key][0]:
                best[unit.key] = (rank, describe(path, kind, detail))

    order = sorted(best, key=lambda k: (PRIORITY.get(index.units[k].kind, 9), k))
    pulls = []
    for key in order:
        unit = index.units[key]
        (_, _, trigger), because = best[key]
        pulls.append(PulledUnit(unit, trigger, f"{unit.label}, because {because}"))
    add_units(out, index, pulls, kept, languages=languages, globs=globs,
              link_excluded=link_excluded)
    return out


def add_units(out: Expansion, index: UnitIndex, pulls: Iterable[PulledUnit],
              kept: Mapping[str, Any], *, languages: set[str],
              globs: list[tuple[str, re.Pattern[str]]],
              link_excluded: Callable[[str], str | None] | None = None) -> None:
    """Add the paths of each pulled unit to `out` (and the unit to `out.pulled`), in order.

    What `kept` holds or an earlier unit added is not added again; `globs` (the built-in
    default excludes) and the locale rule for languages not in `languages` leave paths
    out, and so does `link_excluded` (see `expand`). Shared by package granularity (units
    of kept files) and deps granularity (units their declared dependencies pull in).
    """
    locale_prefix = LOCALE_DIR + "/"
    for pulled in pulls:
        for path in pulled.unit.paths:
            if path in kept or path in out.added or path in out.default_excluded \
                    or path in out.excluded_links:
                continue
            is_dir = _is_dir(index, path)
            if is_dir is None:
                continue  # listed, but gone from the image (a later layer removed it)
            rule = first_match(path, globs)
            if rule is None and path.startswith(locale_prefix):
                rest = path[len(locale_prefix):]
                lang_dir = rest.split("/", 1)[0]
                lang = language_of(lang_dir)
                if lang and lang not in languages and ("/" in rest or is_dir):
                    rule = f"{LOCALE_DIR}/{lang_dir}/**"
            if rule is not None:
                out.default_excluded[path] = rule
                continue
            if link_excluded is not None and (rule := link_excluded(path)) is not None:
                out.excluded_links[path] = rule
                continue
            out.added[path] = pulled.reason
            pulled.added.append(path)
        out.pulled.append(pulled)
