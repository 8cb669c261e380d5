"""tracer.image has no import cycle, not even one hidden behind an import inside a function.

A function-level import used to let source.py, transports.py, archive.py, layout.py,
flatten.py, daemon.py and overlay.py import each other in a circle; it worked only in the
order the callers happened to import them. Now the package's modules import each other at
module level, in one direction: the graph of those imports (read from the source with
`ast`, `if TYPE_CHECKING:` blocks left out) has no cycle, no module of the package imports
anything inside a function, and each imports on its own in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tracer" / "image"
# the one door to the docker SDK imports it when a client is made (startup cost)
LAZY_THIRD_PARTY = {"tracer.engine": {"docker", "requests", "urllib3"}}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module, name: str) -> set[str]:
    """The tracer modules `name` imports when it is executed: top-level statements and the
    blocks of top-level if/try/with, never function bodies or TYPE_CHECKING blocks."""
    found: set[str] = set()
    package = name if module_path(name) and module_path(name).name == "__init__.py" \
        else name.rpartition(".")[0]  # type: ignore[union-attr]

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if module_path(sub) else base)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return {m for m in found if m == "tracer" or m.startswith("tracer.")}


def nested_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports inside function bodies: (line, imported module)."""
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def import_graph(start: list[str]) -> dict[str, set[str]]:
    """Module-level imports of `start` and of every tracer module they reach."""
    graph: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        path = module_path(name)
        if path is None:
            graph[name] = set()
            continue
        deps = module_level_imports(ast.parse(path.read_text(), str(path)), name)
        deps.discard("tracer")  # the top package only holds __version__
        deps.discard(name)
        graph[name] = deps
        todo.extend(deps)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := dfs(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


IMAGE_MODULES = sorted(module_name(p) for p in PACKAGE.glob("*.py"))


def test_the_image_package_imports_in_one_direction() -> None:
    assert "tracer.image.flatten" in IMAGE_MODULES and len(IMAGE_MODULES) > 15
    graph = import_graph([*IMAGE_MODULES, "tracer.engine"])
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"
    # a module of the package never imports the package itself (its __init__ imports them)
    inward = {m for m in IMAGE_MODULES if m != "tracer.image" and "tracer.image" in graph[m]}
    assert inward == set()


def test_no_module_of_the_image_package_imports_inside_a_function() -> None:
    found = {}
    for path in [*PACKAGE.glob("*.py"), ROOT / "tracer" / "engine.py"]:
        name = module_name(path)
        allowed = LAZY_THIRD_PARTY.get(name, set())
        bad = [(line, mod) for line, mod in nested_imports(ast.parse(path.read_text()))
               if mod.split(".")[0] not in allowed]
        if bad:
            found[name] = bad
    assert found == {}


def test_the_checks_see_a_hidden_cycle() -> None:
    """The walker itself: an import inside a function is found, a TYPE_CHECKING one is
    not an edge, and a cycle through two modules is reported."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from tracer.image.model import FlatImage\n"
                     "from tracer.image import documents as doc\n"
                     "def f():\n    from tracer.image.flatten import flatten\n")
    assert module_level_imports(tree, "tracer.image.x") == {"tracer.image.documents"}
    assert nested_imports(tree) == [(6, "tracer.image.flatten")]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_each_module_imports_on_its_own_and_the_sdk_stays_unloaded() -> None:
    """Every module first in a fresh interpreter (an order a cycle would break), and
    importing the whole package does not load the docker SDK (commands that need no
    engine do not pay for it)."""
    script = (
        "import importlib, sys\n"
        f"for name in {[*IMAGE_MODULES, 'tracer.engine']!r}:\n"
        "    for m in [m for m in sys.modules if m == 'tracer' or m.startswith('tracer.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "import tracer.image\n"
        "assert 'docker' not in sys.modules, 'tracer.image loaded the docker SDK'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
