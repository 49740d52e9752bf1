"""The floors of job/ import downward only, with no cycle, and an import inside a function defers a heavy library.

Read from the source with ast (every import: at the top, inside functions, under TYPE_CHECKING), so the rule holds
for code that never runs in the tests too.

    cli                          one thin module per command: composes the floors below
    analysis | launch | perf     read results / submit tasks / measure: none imports another of these three
    pair                         the one-pair path, the only TensorFlow user
    results                      the contract, the run folder's paths, the validity check, leases, status
    base (job/*.py)              protocol, folds, files, mnist, slurm, settings, errors, console, output, provenance
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parent.parent / "job"
# A floor may import the floors below it. analysis reads results only (never pair: no TensorFlow near collect);
# launch knows nothing of training; perf drives training through pair's public functions.
MAY_IMPORT = {
    "base": set(),
    "results": {"base"},
    "pair": {"base", "results"},
    "analysis": {"base", "results"},
    "launch": {"base", "results"},
    "perf": {"base", "results", "pair"},
    "cli": {"base", "results", "pair", "analysis", "launch", "perf"},
    "entry": {"cli"},  # job/__main__.py
}
# Libraries worth deferring: each costs more than 0.1 s to import (or loads TensorFlow). numpy, rich and the
# standard library are imported at the top.
HEAVY = {
    "tensorflow",
    "keras",
    "tensorboard",
    "matplotlib",
    "mlflow",
    "sqlalchemy",
    "submitit",
    "scipy",
    "h5py",
    "jsonschema",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(JOB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> str:
    parts = module.split(".")
    if module == "job.__main__":
        return "entry"
    if len(parts) >= 2 and (JOB / parts[1]).is_dir():
        return parts[1]
    return "base"


MODULES = {module_name(path): path for path in sorted(JOB.rglob("*.py"))}


def imports(module: str, source: str | None = None) -> list[tuple[ast.Import | ast.ImportFrom, str, bool]]:
    """(node, imported module, inside a function) for every import statement of `module`."""
    return _imports(module, source if source is not None else MODULES[module].read_text())


@functools.cache
def _imports(module: str, source: str) -> list[tuple[ast.Import | ast.ImportFrom, str, bool]]:
    path = MODULES.get(module)
    tree = ast.parse(source)
    package = module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, id(node) in in_function) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            for alias in node.names:  # `from job import folds` imports the module job.folds
                target = f"{base}.{alias.name}"
                found.append((node, target if target in MODULES else base, id(node) in in_function))
    return found


def job_edges(module: str, source: str | None = None) -> set[str]:
    return {target for _, target, _ in imports(module, source) if target in MODULES and target != module}


def upward(module: str, source: str | None = None) -> list[str]:
    """The imports of `module` that its floor may not make."""
    mine = floor(module)
    return sorted(
        f"{module} -> {target}"
        for target in job_edges(module, source)
        if floor(target) != mine and floor(target) not in MAY_IMPORT[mine]
    )


def test_every_floor_imports_only_the_floors_below_it() -> None:
    assert [line for module in MODULES for line in upward(module)] == []


def test_the_check_refuses_an_upward_import() -> None:
    # results importing pair, analysis importing pair, launch importing analysis: each one line, refused.
    source = MODULES["job.results.store"].read_text() + "\nfrom job.pair import checkpoint\n"
    assert upward("job.results.store", source) == ["job.results.store -> job.pair.checkpoint"]
    source = MODULES["job.analysis.collect"].read_text() + "\ndef f():\n    from job.pair import data\n"
    assert upward("job.analysis.collect", source) == ["job.analysis.collect -> job.pair.data"]
    source = MODULES["job.launch.submission"].read_text() + "\nfrom job.analysis import collect\n"
    assert upward("job.launch.submission", source) == ["job.launch.submission -> job.analysis.collect"]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_cycle_among_modules_or_floors() -> None:
    modules = {module: job_edges(module) for module in MODULES}
    assert cycles(modules) == []
    floors: dict[str, set[str]] = {}
    for module, targets in modules.items():
        floors.setdefault(floor(module), set()).update(floor(t) for t in targets if floor(t) != floor(module))
    assert cycles(floors) == []
    # The check finds a cycle when there is one.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@functools.cache
def top_level_closure(module: str) -> set[str]:
    """The top-level packages `module` loads at import time: its module-level imports, followed through job/."""
    seen, todo, packages = set(), [module], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for _, target, in_function in imports(current):
            if in_function:
                continue
            if target in MODULES:
                todo.append(target)
            else:
                packages.add(target.split(".")[0])
    return packages


def deferred_imports() -> Iterator[tuple[str, int, str, str]]:
    """(module, line, imported, the line's text) of every import inside a function."""
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node, target, in_function in imports(module):
            if in_function:
                yield module, node.lineno, target, lines[node.lineno - 1]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_an_import_inside_a_function_defers_a_heavy_library(module: str) -> None:
    """Directly (`import keras`), or a module of ours that loads one at its top, named on the line
    (`# deferred: matplotlib`): never a dodge around a cycle."""
    for where, line, target, text in deferred_imports():
        if where != module or target.split(".")[0] in HEAVY:
            continue
        assert target in MODULES, f"{where}:{line}: {target} is neither heavy nor ours: import it at the top"
        named = text.partition("# deferred:")[2].split(",")[0].split()[:1]
        assert named and named[0] in HEAVY, f"{where}:{line}: say which heavy library it defers (# deferred: ...)"
        assert named[0] in top_level_closure(target), f"{where}:{line}: {target} does not load {named[0]}"


def test_nothing_below_pair_and_nothing_of_analysis_loads_tensorflow_at_import() -> None:
    for module in MODULES:
        if floor(module) in {"base", "results", "analysis", "launch"}:
            assert not {"tensorflow", "keras", "tensorboard"} & top_level_closure(module), module
