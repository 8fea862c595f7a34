"""The shape the code keeps: short functions, flows/ independent of service/, and a flow
body that reads as its diagram. Read with ``ast``, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 70
MAX_FLOW_BODY_LINES = 50

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _modules(*packages: str) -> Iterator[tuple[Path, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.Module) -> Iterator[Function]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _length(function: Function) -> int:
    """Lines from ``def`` to the last line of the body; decorators are not counted."""
    assert function.end_lineno is not None
    return function.end_lineno - function.lineno + 1


@pytest.mark.parametrize("package", ["flows", "service"])
def test_no_function_is_longer_than_70_lines(package: str) -> None:
    too_long = [f"{path.relative_to(ROOT)}:{f.lineno} {f.name} ({_length(f)} lines)"
                for path, tree in _modules(package) for f in _functions(tree)
                if _length(f) > MAX_FUNCTION_LINES]
    assert not too_long, "functions over 70 lines: " + "; ".join(too_long)


def test_flows_never_imports_service() -> None:
    imports = []
    for path, tree in _modules("flows"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            imports += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                        if name == "service" or name.startswith("service.")]
    assert not imports, "flows/ imports service/: " + "; ".join(imports)


def test_the_flow_body_is_at_most_50_lines() -> None:
    tree = ast.parse((ROOT / "flows" / "retrain.py").read_text(encoding="utf-8"))
    flows = [f for f in tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             and f.name == "retrain"]
    assert len(flows) == 1, "flows/retrain.py defines no function `retrain`"
    assert _length(flows[0]) <= MAX_FLOW_BODY_LINES
