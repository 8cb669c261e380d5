"""The profile file as a bounded YAML document: read it, compose it, report problems.

A profile is trusted more than an image, but not blindly: it may come from a repository
many people write to. Its size is checked before a byte is parsed (budget
`profile_bytes`, which only `--budget` can raise, since the profile's own `budgets:` is
read after the parse it would have to bound), and nesting depth and alias expansion are
bounded while composing, so nothing a value says can make the loader recurse or loop.
Validation then walks the YAML node tree (tracer.profile.sections), not plain Python
objects, because only nodes remember their line.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tracer.budgets import BudgetExceeded, human
from tracer.errors import BadInput
from tracer.operatorfiles import read_regular

MAX_DEPTH = 64  # a profile nests about 5 levels; 50,000 `[` must not reach the recursion limit
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add when expanded (billion laughs)
MAX_PROBLEMS = 100  # problems printed; a generated file can have a million


class ProfileErrors(BadInput):
    """All problems found in one profile, one `file:line: field: message` per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        super().__init__("invalid profile:\n  " + "\n  ".join(shown)
                         + (f"\n  ... and {more} more problems" if more else ""))



class _Refused(yaml.MarkedYAMLError):
    """The document is well-formed YAML that the loader refuses to compose (too deep,
    aliases expanding too far); reported as `file:line: message`, not as a syntax error."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader with a nesting limit and an alias expansion limit.

    The composer recurses once per nesting level, so 50,000 `[` ended in RecursionError
    (exit 70). Aliases are composed as shared nodes, cheap for PyYAML but expanded by
    every walk over the tree, so nine aliases to nine aliases ... (a "billion laughs")
    cost the validator exponential time. Both are cut here, at the offending line.
    The C loader is not used: its composer recurses in C.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, expanded
        self._alias_nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Refused(None, None, "an alias refers to a node that contains it "
                               "(a recursive structure is not a profile)", mark)
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _Refused(None, None, f"aliases expand the document by more than "
                               f"{MAX_ALIAS_NODES:,} nodes; write the values out instead", mark)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels",
                               self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(n)] for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        self._sizes[id(node)] = size
        return node



def compose(text: str, filename: str) -> yaml.Node | None:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    except _Refused as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise ProfileErrors([f"{filename}:{line}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileErrors([f"{filename}:{line}: not valid YAML: {problem}"]) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps far below the limit
        raise ProfileErrors([f"{filename}:1: nested too deeply"]) from None
    finally:
        loader.dispose()


def read_profile_text(path: Path, limit: int) -> str:
    """The file's text, refused before reading more than `limit` bytes (profile_bytes).

    A 50 MB profile cost 416 s and 7.6 GB to validate; the refusal comes from the size
    alone. A FIFO, device or directory is refused at once, saying what it is (a stray
    FIFO named x.yaml used to block `tracer batch` forever): tracer.operatorfiles.
    """
    try:
        data = read_regular(path, "profile file", limit=limit, budget="profile_bytes")
    except BudgetExceeded:
        raise BadInput(f"{path}: the profile is larger than the profile_bytes budget of "
                       f"{human(limit)}; if this file is trusted, raise it with --budget "
                       "profile_bytes=N (a profile cannot raise it itself)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInput(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None

