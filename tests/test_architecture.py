"""The layering docs/architecture.md draws, checked on the source: every import of a project module
(at the top of a file or inside a function) goes to the same layer or one below, and the import
graph has no cycle.  Also: planner/ shows its layers as sub-packages, with few loose modules."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("planner", "executor", "pretrain")

#: lowest first; a module may import its own layer and the layers before it (docs/architecture.md)
LAYERS = (
    ("planner.errors", "planner.spec"),
    ("planner.plan",),
    ("planner.model", "planner.network"),
    ("planner.backends",),
    ("planner.estimate",),
    ("planner.search",),
    ("planner.capacity", "planner.validate"),
    ("planner.report", "planner.capacity_report", "planner.compare_report", "planner.plots",
     "planner.api", "planner"),
    ("executor",),
    ("pretrain",),
)


def layer_of(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of docs/architecture.md"
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """Project modules a file imports (``from a.b import c`` counts a.b.c when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in PACKAGES and (module_path(t) is not None):
                out.add(t)
    return out


def module_path(name: str):
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            g.add_node(name)
            for target in project_imports(path):
                if target != name:
                    g.add_edge(name, target)
    return g


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, b in graph().edges if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, cycles[:5]


def test_the_checker_sees_imports():
    """The graph is not empty by accident: the CLI reaches the search and the executor."""
    g = graph()
    assert g.has_edge("pretrain.cli", "executor.run")
    assert g.has_edge("planner.search.engine", "planner.estimate.predict")
    assert layer_of("planner.backends.deepspeed.memory") < layer_of("planner.estimate.memory")


def test_planner_shows_its_layers_as_sub_packages():
    loose = [p.name for p in (ROOT / "planner").iterdir()
             if p.name != "__pycache__" and not (p / "__init__.py").is_file()]
    assert len(loose) <= 8, loose
    subpackages = {p.name for p in (ROOT / "planner").iterdir() if (p / "__init__.py").is_file()}
    assert {"spec", "plan", "model", "backends", "estimate", "search", "capacity",
            "validate"} <= subpackages


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_in_a_layer(package):
    for path in (ROOT / package).rglob("*.py"):
        layer_of(module_name(path))
