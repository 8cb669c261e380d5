"""Lines to add to a profile, placed where they belong in the operator's own file.

A suggestion is only useful if it can be pasted as it is: `keep:` printed again under a
profile that already has `keep:` is a duplicate key, and `- "/x"` appended at the end of a
file whose last section is `exclude:` lands in the wrong list. So a suggestion is planned
against the profile's text: new items go at the end of the list that is already there
(with its indentation: block lists get `- ` lines, flow lists `[...]` get `, "/x"` before
their `]`), a missing key goes into its existing section, a missing section goes at the
top level. Each edit says where it goes (after which line, or which lines it changes),
and `apply` makes exactly that change, so a test can check that the result still loads.

Every value is written as a double-quoted YAML string: a file name or a regex can hold
any character, and quoting it is the one form that always reads back as the same string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

INDENT = 2  # of a section or list this module creates
SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}  # as JSON and YAML both write them


def yaml_str(text: str) -> str:
    """`text` as a double-quoted YAML scalar that reads back as exactly `text`.

    Printable characters stay as they are (UTF-8 profiles); everything else is escaped,
    including the lone surrogates that stand for the bytes of a non-UTF-8 file name.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[ch])
        elif (ch.isprintable() or ch == " ") and not 0xD800 <= code <= 0xDFFF:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def flow(value: Any) -> str:
    """A value as one line of flow YAML: strings quoted, lists `[...]`, mappings `{...}`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return yaml_str(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Iterable):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as YAML")


def block_item(value: Any, column: int) -> list[str]:
    """One item of a block list whose `-` is at `column`; a mapping takes one line per key
    (the first on the dash line), every value in flow style."""
    pad = " " * column
    if not isinstance(value, Mapping):
        return [f"{pad}- {flow(value)}"]
    lines = []
    for i, (key, val) in enumerate(value.items()):
        lead = f"{pad}- " if i == 0 else " " * (column + 2)
        lines.append(f"{lead}{key}: {flow(val)}")
    return lines


# -- the profile's YAML, with exact positions --------------------------------------------

@dataclass
class _Node:
    """A YAML node with its own marks (an alias keeps where the alias is written, not
    where its anchor is, which a composed node tree would not tell)."""

    kind: str  # "map" | "seq" | "scalar"
    flow: bool
    start: Any  # yaml.Mark
    end: Any
    items: list[Any] = field(default_factory=list)  # seq: _Node; map: (key, _Node, _Node)
    value: str | None = None  # scalar
    anchor: str | None = None  # `&name` on this node
    alias: str | None = None  # this node is `*name`


def _tree(text: str) -> _Node | None:
    """The document's node tree from the parser's events; None for an empty document."""
    stack: list[_Node] = []
    pending_key: list[_Node | None] = []
    root: _Node | None = None

    def attach(node: _Node) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        parent = stack[-1]
        if parent.kind == "seq":
            parent.items.append(node)
        elif pending_key[-1] is None:
            pending_key[-1] = node
        else:
            key = pending_key[-1]
            parent.items.append((key.value if key.kind == "scalar" else None, key, node))
            pending_key[-1] = None

    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.ScalarEvent):
            attach(_Node("scalar", False, ev.start_mark, ev.end_mark, value=ev.value))
        elif isinstance(ev, yaml.AliasEvent):
            attach(_Node("scalar", False, ev.start_mark, ev.end_mark, value=None,
                         alias=ev.anchor))
        elif isinstance(ev, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            kind = "seq" if isinstance(ev, yaml.SequenceStartEvent) else "map"
            node = _Node(kind, bool(ev.flow_style), ev.start_mark, ev.end_mark,
                         anchor=ev.anchor)
            attach(node)
            stack.append(node)
            pending_key.append(None)
        elif isinstance(ev, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            node = stack.pop()
            pending_key.pop()
            node.end = ev.end_mark
    return root


def _get(node: _Node | None, key: str) -> _Node | None:
    if node is None or node.kind != "map":
        return None
    return next((value for k, _, value in node.items if k == key), None)


def _last_line(node: _Node) -> int:
    """0-based line of the last character that belongs to `node` (a block collection ends
    where the next token starts, which may be lines and comments later: its last child
    says where its content really ends)."""
    if node.kind == "scalar" or node.flow:
        end = node.end
        return end.line if end.column > 0 else max(end.line - 1, node.start.line)
    last = node.items[-1]
    return _last_line(last[2] if node.kind == "map" else last)


def _line_start(text: str, line: int) -> int:
    """Offset of the start of 0-based `line` (len(text) past the last line)."""
    pos = 0
    for _ in range(line):
        nl = text.find("\n", pos)
        if nl < 0:
            return len(text)
        pos = nl + 1
    return pos


def _key_column(node: _Node) -> int:
    """Column of a block mapping's keys, or of a block list's dashes."""
    return node.start.column


# -- edits --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edit:
    """Replace text[start:end] of the profile with `text` (start == end: an insertion)."""

    start: int
    end: int
    text: str
    what: str  # "smoke", "keep.paths", ... : for people
    column: int = 0  # of the first inserted line: deeper ones go first at a shared place
    creates: bool = False  # a new key (after the items of a list ending at the same place)


@dataclass(frozen=True)
class Placed:
    """An edit as an operator makes it by hand: after which line, or which lines change."""

    what: str
    after_line: int | None  # insert the lines after this 1-based line (0: at the top)
    lines: tuple[int, int] | None  # 1-based, inclusive: these lines become `text`
    text: str  # exactly what goes into the file

    def header(self, filename: str) -> str:
        if self.after_line is not None:
            at = "at the top of" if self.after_line == 0 else f"after line {self.after_line} of"
            return f"insert {at} {filename} ({self.what}):"
        assert self.lines is not None
        first, last = self.lines
        span = f"line {first}" if first == last else f"lines {first}-{last}"
        return f"replace {span} of {filename} ({self.what}) with:"

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "after_line": self.after_line,
                "replace_lines": list(self.lines) if self.lines else None, "text": self.text}


def _between_has_comma(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] (between a flow collection's last item and its closing
    bracket: blanks, comments, maybe a comma) already holds the separating comma."""
    body = re.sub(r"(^|\s)#[^\n]*", " ", text[start:end])
    return "," in body


def _block_tree(tree: Mapping[str, Any], column: int) -> list[str]:
    """Nested new keys in block style; lists as `- ` items one level deeper."""
    lines = []
    for key, value in tree.items():
        lines.append(" " * column + f"{key}:")
        if isinstance(value, Mapping):
            lines += _block_tree(value, column + INDENT)
        else:
            lines += [ln for item in value for ln in block_item(item, column + INDENT)]
    return lines


class _Planner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.root = _tree(text) if text.strip() else None
        self.edits: list[Edit] = []

    def _insert_lines(self, after: int, lines: list[str], what: str, creates: bool) -> None:
        pos = _line_start(self.text, after + 1)
        prefix = "\n" if pos == len(self.text) and self.text and \
            not self.text.endswith("\n") else ""
        column = len(lines[0]) - len(lines[0].lstrip(" "))
        self.edits.append(Edit(pos, pos, prefix + "".join(f"{x}\n" for x in lines), what,
                               column, creates))

    def _flow_append(self, node: _Node, pieces: list[str], what: str) -> None:
        """Add `pieces` (already flow text) before the closing bracket of a flow node."""
        close = node.end.index - 1  # the `]` or `}`
        if not node.items:
            sep = ""
        else:
            last = node.items[-1][2] if node.kind == "map" else node.items[-1]
            sep = "" if _between_has_comma(self.text, last.end.index, close) else ", "
        self.edits.append(Edit(close, close, sep + ", ".join(pieces), what))

    def locate(self, path: tuple[str, ...]) -> tuple[_Node | None, int, _Node | None]:
        """(deepest existing mapping on the way, how many keys of `path` lead to it, the
        list at `path` if it exists)."""
        holder, depth = self.root, 0
        while depth < len(path) - 1:
            child = _get(holder, path[depth])
            if child is None:
                break
            if child.kind != "map":
                raise ValueError(f"{'.'.join(path)}: the profile has no mapping at "
                                 f"{path[depth]}")
            holder, depth = child, depth + 1
        if holder is not None and holder.kind != "map":
            raise ValueError("the profile is not a mapping")
        node = _get(holder, path[depth]) if depth == len(path) - 1 else None
        if node is not None and node.alias is None and node.kind != "seq":
            raise ValueError(f"{'.'.join(path)}: the profile has no list there")
        if node is not None and node.anchor is not None and \
                re.search(rf"\*{re.escape(node.anchor)}(?![\w-])", self.text[node.end.index:]):
            raise ValueError(f"{'.'.join(path)}: the list is the anchor &{node.anchor}, which "
                             "other keys use: items added to it would be added there too")
        return holder, depth, node

    def spell_out(self, node: _Node, path: tuple[str, ...], items: list[Any],
                  what: str) -> None:
        """Replace the alias `*name` at `path` with its list written out, plus `items`
        (appending to the anchor would change every other use of it)."""
        data: Any = yaml.safe_load(self.text)
        for key in path:
            data = data.get(key) if isinstance(data, dict) else None
        if not isinstance(data, list):
            raise ValueError(f"{'.'.join(path)}: the profile has no list there")
        new = [i for i in items if i not in data]
        self.edits.append(Edit(node.start.index, node.end.index, flow([*data, *new]), what))

    def extend(self, node: _Node, items: list[Any], what: str) -> None:
        """Append items to an existing list."""
        if node.flow:
            self._flow_append(node, [flow(i) for i in items], what)
            return
        column = _key_column(node)
        self._insert_lines(_last_line(node), [ln for i in items for ln in block_item(i, column)],
                           what, creates=False)

    def create(self, holder: _Node | None, tree: Mapping[str, Any], what: str) -> None:
        """Add new keys (with their nested sections and lists) to a mapping, or to an
        empty profile."""
        if holder is not None and holder.flow:
            self._flow_append(holder, [f"{k}: {flow(v)}" for k, v in tree.items()], what)
            return
        column = _key_column(holder) if holder is not None else 0
        after = _last_line(holder) if holder is not None and holder.items else \
            len(self.text.splitlines()) - 1
        self._insert_lines(after, _block_tree(tree, column), what, creates=True)

    def merged(self) -> list[Edit]:
        """Insertions at one place become one edit: the items of a list that ends there
        first (deepest first), then new keys, so each lands in its own mapping."""
        groups: dict[tuple[int, int], list[Edit]] = {}
        for e in self.edits:
            groups.setdefault((e.start, e.end), []).append(e)
        out = []
        for (start, end), edits in groups.items():
            if len(edits) == 1:
                out.append(edits[0])
                continue
            edits.sort(key=lambda e: (-e.column, e.creates))
            head = edits[0].text[:1] if edits[0].text.startswith("\n") else ""
            text = head + "".join(e.text[len(head):] if e.text.startswith("\n") else e.text
                                  for e in edits)
            out.append(Edit(start, end, text, ", ".join(e.what for e in edits),
                            edits[0].column, edits[0].creates))
        return out


def plan(text: str, additions: Mapping[tuple[str, ...], list[Any]]) -> list[Edit]:
    """The edits that add each list of items to the profile `text` at its key path
    (("smoke",), ("keep", "binaries"), ...); items already in that list are skipped."""
    planner = _Planner(text)
    created: dict[int, tuple[_Node | None, dict[str, Any], list[str]]] = {}
    for path, items in additions.items():
        holder, depth, node = planner.locate(path)
        existing = {i.value for i in node.items if i.kind == "scalar"} if node else set()
        todo = [i for i in items if not (isinstance(i, str) and i in existing)]
        if not todo:
            continue
        if node is not None and node.alias is not None:
            planner.spell_out(node, path, todo, ".".join(path))
            continue
        if node is not None:
            planner.extend(node, todo, ".".join(path))
            continue
        _, tree, names = created.setdefault(id(holder), (holder, {}, []))
        for key in path[depth:-1]:
            tree = tree.setdefault(key, {})
        tree[path[-1]] = todo
        names.append(".".join(path))
    for holder, tree, names in created.values():
        planner.create(holder, tree, ", ".join(names))
    return planner.merged()


def apply(text: str, edits: Iterable[Edit]) -> str:
    """The profile text with every edit made (they never overlap)."""
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[:e.start] + e.text + text[e.end:]
    return text


def placed(text: str, edits: Iterable[Edit]) -> list[Placed]:
    """How an operator makes `edits` by hand, bottom of the file first (so the line numbers
    given stay right while they work): lines to insert after a line, or lines that change
    (all changes on the same lines shown at once) and what they become."""
    out: list[Placed] = []
    changes: list[tuple[int, int, list[Edit]]] = []  # (first line start, last line end, edits)
    for e in edits:
        if e.start == e.end and e.text.endswith("\n"):
            if e.start == len(text) and text and not text.endswith("\n"):
                out.append(Placed(e.what, text.count("\n") + 1, None, e.text[1:]))
                continue
            if e.start == 0 or text[e.start - 1] == "\n":
                out.append(Placed(e.what, text.count("\n", 0, e.start), None, e.text))
                continue
        a = text.rfind("\n", 0, e.start) + 1
        b = text.find("\n", e.end)
        b = len(text) if b < 0 else b
        for i, (ca, cb, group) in enumerate(changes):
            if a <= cb and ca <= b:
                changes[i] = (min(a, ca), max(b, cb), [*group, e])
                break
        else:
            changes.append((a, b, [e]))
    for a, b, group in changes:
        shifted = [Edit(e.start - a, e.end - a, e.text, e.what) for e in group]
        out.append(Placed(", ".join(e.what for e in group), None,
                          (text.count("\n", 0, a) + 1, text.count("\n", 0, b) + 1),
                          apply(text[a:b], shifted) + "\n"))
    # bottom first; at one line, the replacement of that line before the insertion after it
    return sorted(out, key=lambda p: (-(p.after_line if p.after_line is not None
                                        else p.lines[0] if p.lines else 0),
                                      p.after_line is not None))
