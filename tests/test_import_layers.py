"""Imports run one way: foundation ← backbone ← data ← engine/methods ← protocols ← runs ← top
(launcher, CLIs, demo, bench, app, notebooks, the analysis that reads runs). Checked on the source:
every import statement of the package, including those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workbench"

# (layer, module prefixes); a module belongs to the layer of its longest matching prefix
LAYERS = [
    ("foundation", ("workbench", "workbench.paths", "workbench.fileio", "workbench.analysis.metrics",
                    "workbench.analysis.stats", "workbench.protocols.runspec", "workbench.protocols.settings")),
    ("backbone", ("workbench.backbone",)),
    ("data", ("workbench.data", "workbench.models")),
    ("engine/methods", ("workbench.engine", "workbench.methods")),
    ("protocols", ("workbench.protocols",)),
    ("runs", ("workbench.runs",)),
    ("top", ("workbench.analysis", "workbench.launcher", "workbench.run_cli", "workbench.notebooks_cli",
             "workbench.demo", "workbench.cli", "workbench.__main__", "workbench.bench", "workbench.bench_cli", "workbench.benchmarks",
             "workbench.sweeps")),
]
RANK = {prefix: i for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes}


def layer_of(module: str) -> int:
    best = max((p for p in RANK if module == p or module.startswith(p + ".")), key=len)
    return RANK[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, n if _is_module(n) else target) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, t) for line, t in found if t == "workbench" or t.startswith("workbench.")]


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (REPO / rel).with_suffix(".py").exists() or (REPO / rel / "__init__.py").exists()


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        for line, target in imports_of(path):
            if layer_of(target) > layer_of(mod):
                upward.append(f"{path.relative_to(REPO)}:{line} ({LAYERS[layer_of(mod)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_layer_table_knows_every_module():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # every module falls under some prefix (at least "workbench")


def test_no_import_cycles_between_modules():
    graph = {module_name(p): {t for _, t in imports_of(p)} for p in PACKAGE.rglob("*.py")}
    packages = {m for m in graph if (REPO / Path(*m.split(".")) / "__init__.py").exists()}
    cycles = []
    for a, targets in graph.items():
        for b in targets:
            # a package importing its own submodules (re-exports) is not a cycle
            if b in graph and a in graph[b] and a != b and a not in packages and b not in packages:
                cycles.append(tuple(sorted((a, b))))
    assert not cycles, f"modules importing each other: {sorted(set(cycles))}"
