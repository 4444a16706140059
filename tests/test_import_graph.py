"""The modules of batchml import one another without cycles (docs/architecture.md: arrows one
way).

The graph is read from the source with :mod:`ast`, not by importing: every ``import batchml.x``
/ ``from batchml.x import y`` / relative import inside ``batchml/`` is an edge from the importing
module to the imported one, of one of three kinds:

* module level (run at import time): these must form no cycle at all;
* under ``if TYPE_CHECKING:`` (seen only by the type checker) and
* inside functions (lazy: run on first call).

The last two cannot break an import, but a cycle through them still means two modules share
one noun; they are checked too, against a short list of known exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchml"

# cycles through TYPE_CHECKING or function-level imports tolerated for now, as sorted tuples of
# the modules on the cycle. gate <-> training: gate names training's dataclasses in annotations
# only (TYPE_CHECKING); training calls the gate at run time.
KNOWN_SOFT_CYCLES: set[tuple[str, ...]] = {("batchml.gate", "batchml.training")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _edges(modules: set[str]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, TYPE_CHECKING and function-level edges) between batchml modules."""
    top: dict[str, set[str]] = {m: set() for m in modules}
    lazy: dict[str, set[str]] = {m: set() for m in modules}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node

        def soft(node: ast.AST, parents: dict[ast.AST, ast.AST] = parents) -> bool:
            """Inside a function or an ``if TYPE_CHECKING:`` block."""
            while node in parents:
                node = parents[node]
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    return True
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    return True
            return False

        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                # "from . import x" / "from .pkg import mod": the submodule is the target
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                found = known(target) if target.startswith("batchml") else None
                if found and found != module:
                    (lazy if soft(node) else top)[module].add(found)
    return top, lazy


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _modules() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _drop_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # a package's __init__ importing its own submodules, and a submodule importing a sibling
    # through the package (``from . import x``), is how Python packages work, not a cycle
    return {m: {t for t in ts if not t.startswith(m + ".") and not m.startswith(t + ".")}
            for m, ts in graph.items()}


def test_the_graph_sees_known_imports() -> None:
    top, lazy = _edges(_modules())
    assert "batchml.errors" in top["batchml.estimators.base"]
    assert "batchml.estimators.tokenizer" in top["batchml.estimators.linear_text"]
    assert "batchml.estimators.tokenizer" in top["batchml.estimators.text_features"]
    assert any(lazy.values())  # lazy imports are found, and kept apart
    assert "batchml.training" in lazy["batchml.gate"]  # TYPE_CHECKING only
    assert "batchml.training" not in top["batchml.gate"]


def test_a_planted_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [("a", "b", "c")]


def test_module_level_imports_have_no_cycle() -> None:
    top, _ = _edges(_modules())
    assert _cycles(_drop_package_edges(top)) == []


def test_no_new_cycle_through_lazy_or_type_only_imports() -> None:
    top, lazy = _edges(_modules())
    both = {m: top[m] | lazy[m] for m in top}
    cycles = set(_cycles(_drop_package_edges(both)))
    assert cycles - KNOWN_SOFT_CYCLES == set(), (
        f"import cycles through function-level or TYPE_CHECKING imports: {sorted(cycles)}; "
        "move the shared piece into a module both import")


def test_linear_text_and_text_features_do_not_import_each_other() -> None:
    top, lazy = _edges(_modules())
    lt, tf = "batchml.estimators.linear_text", "batchml.estimators.text_features"
    assert tf not in top[lt] | lazy[lt]
    assert lt not in top[tf] | lazy[tf]
