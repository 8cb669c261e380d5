"""The keep-list: which paths of the image survive, and why each one does.

Every source of evidence (ELF closure, traced run, keep.paths, keep.packages, the
image config) adds paths with a Reason; exclude then removes what the operator ruled
out (unless keep.paths names it too); finally the list is closed over symlink chains,
parent directories and hardlink groups so the written image is self-consistent. Every
path carries all its reasons, which is what `tracer why` and the diffable keep-list
file are made of. The image root `/` is always kept: every image has it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tracer.explain.runfiles import keeplist_line
from tracer.rootfs import RootFS, SymlinkLoop


@dataclass(frozen=True, order=True)
class Reason:
    """Why one path is kept: a category (counted in reports) and a human detail."""

    # elf | keep.binaries | traced | keep.paths | keep.packages | config | runtime | root
    # | symlink | parent | hardlink
    kind: str
    detail: str


ROOT_REASON = Reason("root", "the image root directory, present in every image")


def is_fanotify(reason: Reason) -> bool:
    return reason.kind == "traced" and reason.detail.startswith("fanotify:")


def _without_echoes(reasons: list[Reason]) -> list[Reason]:
    """fanotify's reasons only for a path nothing else keeps.

    Beside strace, fanotify mostly repeats what strace or ELF analysis already said, and
    less steadily: it names the process only if it is still alive when the event is read,
    and attributes the event to the step running when it is read. Echoed on every line,
    that made two runs of the same profile give keep-lists that differ line by line with
    the same paths. Where fanotify is a path's only reason (or the only recorder), it stays.
    """
    others = [r for r in reasons if not is_fanotify(r)]
    return others or reasons


class EntryLike(Protocol):
    kind: str
    linkname: str
    size: int


def compile_globs(patterns: Iterable[str]) -> list[tuple[str, re.Pattern[str]]]:
    """Translate profile globs: `*` within a name, `**` across directories.

    `/etc/nginx/**` also matches `/etc/nginx` itself: an operator who keeps a tree
    means the directory as well. Wildcards match every character a name may hold, a
    newline included.
    """
    out = []
    for original in patterns:
        pattern = original.rstrip("/") or "/"
        i, parts = 0, []
        while i < len(pattern):
            ch = pattern[i]
            if pattern.startswith("/**", i) and i + 3 == len(pattern):
                parts.append("(?:/.*)?")
                i += 3
                continue
            if pattern.startswith("**/", i):
                parts.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                parts.append(".*")
                i += 2
            elif ch == "*":
                parts.append("[^/]*")
                i += 1
            elif ch == "?":
                parts.append("[^/]")
                i += 1
            elif ch == "[" and "]" in pattern[i + 1:]:
                end = pattern.index("]", i + 1)
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                parts.append(f"[{body}]")
                i = end + 1
            else:
                parts.append(re.escape(ch))
                i += 1
        out.append((original, re.compile("".join(parts), re.S)))
    return out


def _literal_dir(pattern: str) -> str:
    """The directory part of a glob before its first wildcard (`/a/b/*.so` -> `/a/b`)."""
    cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
    head = pattern[:cut]
    if cut == len(pattern):
        return head.rstrip("/") or "/"
    return head.rsplit("/", 1)[0] or "/"


def globs_through_links(rules: Iterable[str], root: RootFS
                        ) -> tuple[list[tuple[str, re.Pattern[str]]], list[tuple[str, str]]]:
    """Compile profile globs so that each matches the paths it names in the image, also
    when its directory part goes through a link; return them and the (rule, link
    prefix) pairs where it did.

    Operators write the paths programs use (`/lib/x86_64-linux-gnu/gconv/**`), but under
    merged /usr the index holds `/usr/lib/...`: the literal directory part of each glob is
    resolved in the image and the glob matched at both places, under its own text. Without
    this an exclude rule written that way matched nothing, silently.
    """
    rules = list(rules)
    globs = compile_globs(rules)
    links: list[tuple[str, str]] = []
    for rule in rules:
        prefix = _literal_dir(rule)
        try:
            resolved = root.resolve(prefix, follow_last=True)
        except SymlinkLoop:
            continue
        if resolved.exists and resolved.path != prefix:
            moved = resolved.path.rstrip("/") + rule[len(prefix.rstrip("/")):]
            globs += [(rule, rx) for _, rx in compile_globs([moved])]
            links.append((rule, prefix))
    return globs, links


def first_match(path: str, globs: list[tuple[str, re.Pattern[str]]]) -> str | None:
    for text, rx in globs:
        if rx.fullmatch(path):
            return text
    return None


@dataclass(frozen=True)
class Excluded:
    """A path the evidence wanted but an exclude rule removed (what `why` reports)."""

    rule: str
    reasons: tuple[Reason, ...]


@dataclass
class KeepList:
    """path -> reasons for everything kept; path -> rule for everything excluded."""

    kept: dict[str, list[Reason]] = field(default_factory=dict)
    excluded: dict[str, Excluded] = field(default_factory=dict)
    missing: dict[str, list[Reason]] = field(default_factory=dict)  # wanted, not in image
    unmatched_keep_paths: list[str] = field(default_factory=list)  # rules matching nothing
    # kept paths an exclude rule matches: the closure needs them (the target of a kept
    # link, a member of a kept hardlink group, the directory of a kept file) -> that rule
    overridden: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of kept paths per reason kind (a path with two kinds counts in both)."""
        c: Counter[str] = Counter()
        for reasons in self.kept.values():
            for kind in {r.kind for r in reasons}:
                c[kind] += 1
        return dict(sorted(c.items()))

    def lines(self) -> list[str]:
        """One sorted line per path, `PATH<TAB>reason; reason`, stable for nightly diffs;
        names escaped (tracer.explain.runfiles) so that any name is exactly one line."""
        return sorted(keeplist_line(path, [f"{r.kind}: {r.detail}"
                                           for r in sorted(set(reasons))])
                      for path, reasons in self.kept.items())

    def excluded_json(self) -> dict[str, dict]:
        return {p: {"rule": e.rule, "reasons": [f"{r.kind}: {r.detail}" for r in e.reasons]}
                for p, e in sorted(self.excluded.items())}

    def overridden_json(self) -> dict[str, dict]:
        """Each kept path an exclude rule matches, with the rule and what keeps it."""
        return {p: {"rule": rule, "kept_because": [f"{r.kind}: {r.detail}"
                                                   for r in self.kept.get(p, ())]}
                for p, rule in sorted(self.overridden.items())}

    def write(self, path: Path) -> None:
        """Write the keep-list file atomically (never a half-written list to diff against)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(self.lines()) + "\n", encoding="utf-8")
        tmp.replace(path)


class KeepListBuilder:
    """Collects evidence, then `build()` applies exclude and the closures."""

    def __init__(self, entries: Mapping[str, EntryLike], root: RootFS,
                 keep_paths: Iterable[str] = (), exclude: Iterable[str] = (),
                 hardlink_group: Callable[[str], tuple[str, ...]] = lambda p: (p,)) -> None:
        self.entries = entries
        self.hardlink_group = hardlink_group
        self.root = root
        self.wanted: dict[str, list[Reason]] = {}
        self.missing: dict[str, list[Reason]] = {}
        self.keep_rules = list(keep_paths)
        self.keep_globs = compile_globs(self.keep_rules)
        self.unmatched_keep_paths: list[str] = []  # rules that matched nothing: likely typos
        self.exclude_globs, _ = globs_through_links(exclude, root)

    # -- evidence ------------------------------------------------------------------------
    def add(self, path: str, reason: Reason) -> None:
        """Keep `path` as the image names it: its symlinks on the way (what a kept link
        points to is added by the closure in `build`)."""
        try:
            partial = self.root.resolve(path, follow_last=False)
        except SymlinkLoop:
            self.missing.setdefault(path, []).append(reason)
            return
        if not partial.exists:
            self.missing.setdefault(path, []).append(reason)
            return
        for link in partial.links:
            self._want(link, Reason("symlink", f"on the way to {path}"))
        self._want(partial.path, reason)

    def _want(self, path: str, reason: Reason) -> None:
        reasons = self.wanted.setdefault(path, [])
        if reason not in reasons:
            reasons.append(reason)

    def add_keep_paths(self) -> None:
        """Every image path matching a keep.paths glob, also when the glob names a link
        (see `globs_through_links`). The link itself is kept too (with `add`), so the path
        as written keeps working."""
        if not self.keep_globs:
            return
        globs, links = globs_through_links(self.keep_rules, self.root)
        for rule, prefix in links:  # the link itself, so the path as written keeps working
            self.add(prefix, Reason("keep.paths", rule))
        matched: set[str] = set()
        for path in self.entries:
            rule = first_match(path, globs)
            if rule is not None:
                matched.add(rule)
                self._want(path, Reason("keep.paths", rule))
        self.unmatched_keep_paths = [rule for rule, _ in self.keep_globs if rule not in matched]

    # -- result --------------------------------------------------------------------------
    def exclude_rule(self, path: str) -> str | None:
        """The exclude rule `build()` removes `path` by; None when it stays (no rule
        matches, or a keep.paths glob names it too)."""
        if path == "/" or any(r.kind == "keep.paths" for r in self.wanted.get(path, ())):
            return None
        return first_match(path, self.exclude_globs)

    def build(self) -> KeepList:
        result = KeepList(missing=dict(self.missing),
                          unmatched_keep_paths=list(self.unmatched_keep_paths))
        kept: dict[str, list[Reason]] = {"/": [ROOT_REASON]}
        for path, reasons in self.wanted.items():
            if path == "/":
                continue  # kept whatever exclude says: no image is without it
            rule = self.exclude_rule(path)
            if rule is not None:
                result.excluded[path] = Excluded(rule, tuple(reasons))
                continue
            kept[path] = list(reasons)
        self._close(kept)
        for path, reasons in kept.items():
            kept[path] = _without_echoes(reasons)
        # The contract closes the keep-list after exclude: what a closure needs (the target
        # of a kept link, a member of a kept hardlink group, the directory of a kept file)
        # is kept although a rule matches it, since dropping it would break the kept path
        # silently. Each such path is reported with its rule (`overridden`), and excluded
        # lists only what the image really lacks.
        result.excluded = {p: e for p, e in result.excluded.items() if p not in kept}
        result.overridden = {p: rule for p in kept
                             if p != "/" and (rule := self.exclude_rule(p)) is not None}
        result.kept = kept
        return result

    def _close(self, kept: dict[str, list[Reason]]) -> None:
        """Symlink chains, hardlink groups, then parent directories (in that order).

        Walked in path order, not in the order evidence came (which varies with the order
        programs ran in): the one path a parent or hardlink reason names is then the same
        every run, and two keep-lists of the same image diff clean."""
        todo = sorted(kept, reverse=True)  # pop() takes the first path first
        grouped: set[str] = set()  # hardlink groups already added (by first member)
        while todo:
            path = todo.pop()
            entry = self.entries.get(path)
            if entry is None:
                continue
            extra: list[tuple[str, Reason]] = []
            if entry.kind == "symlink":
                try:
                    full = self.root.resolve(path, follow_last=True)
                except SymlinkLoop:
                    full = None
                if full is not None:
                    extra += [(hop, Reason("symlink", f"chain of {path}")) for hop in full.links]
                    if full.exists:
                        extra.append((full.path, Reason("symlink", f"target of {path}")))
            group = self.hardlink_group(path)
            if len(group) > 1 and group[0] not in grouped:  # each group once: N members
                grouped.add(group[0])  # pulled in N times made N * N reasons
                extra += [(member, Reason("hardlink", f"same inode as {path}"))
                          for member in group if member != path]
            for p, reason in extra:
                if p == "/" or p == path:
                    continue
                if p not in kept:
                    kept[p] = [reason]
                    todo.append(p)
                elif reason.kind == "symlink" and reason not in kept[p] and \
                        any(r.kind != "symlink" for r in kept[path]):
                    # already kept for its own sake: it still says which link, kept for
                    # its own sake too (not as a hop of a chain), needs it, so a target
                    # reads the same whatever kept it first
                    kept[p].append(reason)
        for path in sorted(kept):
            parent = path.rsplit("/", 1)[0] or "/"
            while parent != "/" and parent not in kept:
                kept[parent] = [Reason("parent", f"holds {path}")]
                parent = parent.rsplit("/", 1)[0] or "/"


def size_of(entries: Mapping[str, EntryLike], paths: Iterable[str]) -> int:
    """Bytes of regular-file content among `paths` (a hardlink adds nothing)."""
    return sum(e.size for p in paths if (e := entries.get(p)) is not None and e.kind == "file")
