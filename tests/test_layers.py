"""The architecture, enforced: every module of the package is parsed (module-level and
function-level imports alike) and the import graph is checked against the layers of
``docs/ARCHITECTURE.md``. No import cycle, even a deferred one; imports point down; the
torch-free layers never import torch or the workstation; no private name crosses a package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgetl

PACKAGE = Path(edgetl.__file__).resolve().parent

# Layer of each top-level part, lowest first. A module may import its own layer and below.
LAYERS = {
    "edgetl.errors": 0,
    "edgetl.core": 1,
    "edgetl.modalities": 2,
    "edgetl.tasks": 3,
    "edgetl.runtimes": 4,
    "edgetl.device": 5,
    "edgetl.benchmarking": 6,
    "edgetl.workstation": 7,
    "edgetl.commands": 8,
    "edgetl.cli": 9,
    "edgetl": 10,  # the package's __init__: lazy names only
}
TORCH_FREE = ("edgetl.errors", "edgetl.core", "edgetl.modalities", "edgetl.tasks", "edgetl.runtimes",
              "edgetl.device")
HEAVY = ("torch", "torchvision", "timm", "transformers", "nncf", "sentence_transformers")
# The one place outside the workstation that may load torch: the benchmark worker's PyTorch
# row (it runs in a fresh process of its own, chosen by the user with --runtimes torch).
ALLOWED = {("edgetl.benchmarking.worker", "torch"), ("edgetl.benchmarking.worker", "edgetl.workstation.run")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (source, alias.name, node.lineno))
    return out


def _part(module: str) -> str:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS and docs/ARCHITECTURE.md")


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def test_every_module_has_a_layer():
    for module in MODULES:
        _part(module)


def test_no_import_cycles():
    graph = _edges()
    # a submodule importing its own package's __init__ (which imports it back) is a cycle too
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_down():
    bad = []
    for module in MODULES:
        here = _part(module)
        for target, _, line in _imports(module):
            if not target.startswith("edgetl") or (module, target) in ALLOWED:
                continue
            there = _part(target)
            if LAYERS[there] > LAYERS[here]:
                bad.append(f"{module}:{line} imports {target} ({there} is above {here})")
    assert not bad, "\n".join(bad)


def test_torch_free_layers_never_import_heavy_packages():
    bad = []
    for module in MODULES:
        for target, _, line in _imports(module):
            top = target.split(".")[0]
            if top in HEAVY and (module, top) not in ALLOWED and _part(module) in TORCH_FREE + ("edgetl.benchmarking",):
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_commands_but_the_cli():
    bad = [f"{m}:{line} imports {t}" for m in MODULES if _part(m) not in ("edgetl.commands", "edgetl.cli")
           for t, _, line in _imports(m) if t.startswith("edgetl") and _part(t) == "edgetl.commands"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_packages(module):
    """``from edgetl.a.b import _x`` is fine inside package ``edgetl.a``; elsewhere it reaches
    into another package's internals (make the name public or move the code)."""
    here = module.rsplit(".", 1)[0] if MODULES[module].name != "__init__.py" else module
    bad = []
    for target, name, line in _imports(module):
        if not target.startswith("edgetl"):
            continue
        owner = target if MODULES.get(target, Path()).name == "__init__.py" else target.rsplit(".", 1)[0]
        leaf = name or target.rsplit(".", 1)[-1]
        if leaf.startswith("_") and not leaf.startswith("__") and owner != here and not here.startswith(owner + "."):
            bad.append(f"line {line}: {target} {name}".strip())
    assert not bad, f"{module} imports private names of other packages: " + "; ".join(bad)


def test_no_package_name_is_shadowed_by_its_submodule():
    """``import edgetl.x.y`` sets attribute ``y`` on package ``x``: a function or class of
    the same name in ``x/__init__.py`` would silently become the module."""
    bad = []
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        subs = {p.stem for p in path.parent.glob("*.py") if p.stem != "__init__"}
        subs |= {p.name for p in path.parent.iterdir() if (p / "__init__.py").is_file()}
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        bad += [f"{module}.{name}" for name in sorted(names & subs)]
    assert not bad, f"package names shadowed by submodules: {bad}"
