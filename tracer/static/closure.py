"""The resolver's answer: every file the given roots need, each with why, and what is not there.

Plain data, shared by the resolver, the loader rules that report into it, and the
renderings in output.py. Adding a reason, a missing name or an error is O(1), so a root
with thousands of names costs linear time here whatever it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Need:
    """Why one in-image path is kept: its kind and the chain of requesters leading to it.

    `cpu`: the loader maps it on some CPUs only (a glibc-hwcaps, legacy hwcap or
    `$PLATFORM` variant, what is used instead of one, or what such a file needs). The image
    may run on any CPU of its architecture, so these are kept all the same."""

    path: str
    kind: str  # "root" | "interp" | "needed" | "symlink" | "shebang"
    chain: tuple[str, ...]
    cpu: bool = False


def first_needs(needs: list[Need], count: int = 3) -> list[Need]:
    """The `count` reasons a keep-list shows for one path: shortest chain first, then by
    name. Which requester the resolver met first depends on the order programs ran in (two
    engines, two runs under load), and the keep-list must not: it is diffed run to run."""
    return sorted(needs, key=lambda n: (len(n.chain), n.chain))[:count]


@dataclass
class Missing:
    """A name the loader would not find; the program would fail to start."""

    name: str
    needed_by: tuple[str, ...]


@dataclass
class Closure:
    """Everything the given roots need, with reasons, plus what could not be found."""

    files: dict[str, list[Need]] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _seen: set[Need] = field(default_factory=set, repr=False, compare=False)
    _missed: set[tuple[str, tuple[str, ...]]] = field(default_factory=set, repr=False,
                                                      compare=False)
    _erred: set[str] = field(default_factory=set, repr=False, compare=False)

    def cpu_only(self, path: str) -> bool:
        """Whether `path` is kept only because the loader maps it on some CPUs."""
        return all(n.cpu for n in self.files.get(path, ()))

    def add(self, need: Need) -> None:
        if need not in self._seen:
            self._seen.add(need)
            self.files.setdefault(need.path, []).append(need)

    def error(self, message: str) -> None:
        if message not in self._erred:
            self._erred.add(message)
            self.errors.append(message)

    def miss(self, name: str, needed_by: tuple[str, ...]) -> None:
        if (name, needed_by) not in self._missed:
            self._missed.add((name, needed_by))
            self.missing.append(Missing(name, needed_by))
