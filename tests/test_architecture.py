"""The package's shape, read from its source with ast (nothing is imported): no import circle, and the method
(core/) depends on neither the scoring engines nor the stages built on it.

Every `import rtsent...` and `from rtsent... import` counts, at module level and inside functions alike: a lazy
import only postpones the circle to run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtsent"
STAGES = ("rtsent.prepare", "rtsent.train", "rtsent.evaluate", "rtsent.predict", "rtsent.export", "rtsent.seqcls",
          "rtsent.push", "rtsent.report", "rtsent.cli", "rtsent.serve")


def modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's __init__)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each rtsent module -> the rtsent modules it imports anywhere in its source (relative imports resolved)."""
    mods = modules(package)

    def owner(name: str) -> str:  # the module a dotted name lives in ("rtsent.core.modeling.load_model" -> its module)
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, (path, is_init) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "rtsent"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_init else name.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                if base.split(".")[0] != "rtsent":
                    continue
                targets = [owner(f"{base}.{alias.name}") for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t and t != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40 and graph["rtsent.export"]  # the scan read the package
    found = circles(graph)
    assert not found, "import circles (each module imports the next, in some order): " + "; ".join(
        f"{c}: " + ", ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)


def test_the_scan_sees_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    graph = import_graph()
    assert "rtsent.artifacts.onnx_graph" in graph["rtsent.train"]  # train imports it inside a function only


def test_core_imports_neither_engines_nor_stages():
    graph = import_graph()
    core = {name: deps for name, deps in graph.items() if name.startswith("rtsent.core")}
    assert len(core) >= 6
    forbidden = ("rtsent.engines", *STAGES)
    bad = {name: sorted(d for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden))
           for name, deps in core.items()}
    assert not {name: deps for name, deps in bad.items() if deps}
