"""The shape the code keeps: short functions, flows/ independent of service/, and a flow
body that reads as its diagram. Read with ``ast``, nothing is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_the_layering_contracts_hold() -> None:
    """pyproject.toml's import-linter contracts: service over flows over core, and the
    layers inside each package."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_no_import_cycle_among_modules() -> None:
    """No module imports itself through others, imports inside functions included (grimp,
    import-linter's graph, sees every import statement)."""
    import grimp

    graph = grimp.build_graph("core", "flows", "service", include_external_packages=False)
    modules = sorted(graph.modules)
    cycles = [component for component in _strongly_connected(modules, graph.find_modules_directly_imported_by)
              if len(component) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def _strongly_connected(nodes: list[str], edges) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit to hit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_no_package_holds_more_than_12_modules() -> None:
    crowded = [f"{folder.relative_to(ROOT)} ({count})" for folder in
               [ROOT / "core", *(ROOT / "flows").rglob("*/"), ROOT / "flows", *(ROOT / "service").rglob("*/"), ROOT / "service"]
               if folder.is_dir() and (folder / "__init__.py").exists()
               for count in [len([p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")])]
               if count > 12]
    assert not crowded, "packages over 12 modules: " + ", ".join(crowded)
