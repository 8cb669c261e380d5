"""Human and machine renderings of a Closure, for `tracer ldd`.

Text is for a person debugging "file not found" in a minimized image: each kept path with
the chain that needs it, then what is missing and what could not be parsed. JSON carries
the same facts for scripts, with stable ordering so outputs can be diffed.
"""

from __future__ import annotations

from tracer.static.closure import Closure, Need


def _chain(need: Need) -> str:
    return " -> ".join(need.chain)


def format_text(closure: Closure) -> str:
    """One line per kept path (first reason shown, others counted, "on some CPUs" when
    every reason holds on some CPUs only), then missing, errors."""
    lines: list[str] = []
    for path in sorted(closure.files):
        needs = closure.files[path]
        first = needs[0]
        more = f" (+{len(needs) - 1} more)" if len(needs) > 1 else ""
        cpu = "  (on some CPUs)" if closure.cpu_only(path) else ""
        lines.append(f"{path}  [{first.kind}]  {_chain(first)}{more}{cpu}")
    if closure.missing:
        lines.append("")
        lines.append(f"unresolved ({len(closure.missing)}):")
        for m in closure.missing:
            by = " -> ".join(m.needed_by) if m.needed_by else "(requested)"
            lines.append(f"  {m.name}  not found, needed by {by}")
    if closure.errors:
        lines.append("")
        lines.append(f"errors ({len(closure.errors)}):")
        lines.extend(f"  {e}" for e in closure.errors)
    return "\n".join(lines) + "\n"


def to_json(closure: Closure) -> dict:
    """A JSON-serializable dict: files (path, reasons), missing, errors. A reason's
    `cpu` is true when it holds on some CPUs only (closure.Need)."""
    return {
        "files": [
            {
                "path": path,
                "reasons": [{"kind": n.kind, "chain": list(n.chain), "cpu": n.cpu}
                            for n in closure.files[path]],
            }
            for path in sorted(closure.files)
        ],
        "missing": [{"name": m.name, "needed_by": list(m.needed_by)} for m in closure.missing],
        "errors": list(closure.errors),
    }
