"""The run path's architecture: imports go one way and its modules stay small.

Imports are read from the source (ast), anywhere in a module - inside functions too - plus
`importlib.import_module` with a literal name, so a lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "attnbench"
RUN_PATH = [
    "attnbench/runner.py",
    "attnbench/execute.py",
    "attnbench/isolation.py",
    "attnbench/predict.py",
    "attnbench/verify.py",
    "attnbench/metrics",
    "attnbench/workloads",
]
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (the most specific module each import statement names)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from attnbench import registry` imports the module attnbench.registry (the package's __init__
            # runs too, but imports nothing at import time); `from attnbench.x import y` imports attnbench.x
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                targets = [node.args[0].value]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_attnbench_modules():
    assert _cycles(_graph()) == []


def test_execution_never_imports_the_schedulers():
    """execute, metrics and workloads are called by runner, isolation and executors, never the reverse."""
    graph = _graph()
    callers = {"attnbench.runner", "attnbench.isolation"} | {m for m in graph if m.startswith("attnbench.executors")}
    starts = ["attnbench.execute"] + [m for m in graph if m.startswith(("attnbench.metrics", "attnbench.workloads"))]
    for start in starts:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        assert not seen & callers, f"{start} reaches {sorted(seen & callers)}"


def test_run_path_modules_are_small():
    paths = [p for entry in map(REPO.joinpath, RUN_PATH) for p in (entry.rglob("*.py") if entry.is_dir() else [entry])]
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in paths}
    assert len(sizes) >= 15 and not {p: n for p, n in sizes.items() if n > MAX_LINES}
