"""The flows live in ``batchml.flows``; the top-level ``flows/`` package holds only deployment
entry points, and the library never imports it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """Every module a file of ``package`` imports (absolute names; relative imports resolved
    against the package), with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def test_library_never_imports_the_top_level_flows_package() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}"
                 for path in sorted((ROOT / "batchml").rglob("*.py"))
                 for line, name in _imported_modules(
                     path, ".".join(path.relative_to(ROOT).parts[:-1]))
                 if name == "flows" or name.startswith("flows.")]
    assert offenders == []


def test_the_scan_sees_imports_of_flows(tmp_path: Path) -> None:
    """The check above can fail: it finds both spellings of an import of ``flows``."""
    probe = tmp_path / "probe.py"
    probe.write_text("import flows.train\nfrom flows import bridge\nfrom . import train\n"
                     "from ..flows import predict\n")
    names = [name for _, name in _imported_modules(probe, "batchml.service")]
    assert names == ["flows.train", "flows", "batchml.service", "batchml.flows"]


def test_entry_points_re_export_the_library_flows() -> None:
    import flows.bridge
    import flows.pieces
    import flows.predict
    import flows.train
    from batchml.flows import bridge, pieces, predict, train

    assert flows.train.train_flow is train.train_flow
    assert flows.predict.predict_flow is predict.predict_flow
    assert flows.bridge.bridge_flow is bridge.bridge_flow
    assert flows.pieces.score_large_file_flow is pieces.score_large_file_flow
    for module in (flows.train, flows.predict, flows.bridge, flows.pieces):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        # thin: no function or class of their own
        assert not [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                       | ast.ClassDef)], module.__name__
