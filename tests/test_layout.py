"""Package layout rules (issue: one model, one pipeline): no module imports a private name of another
module of the package, and the package's import graph (every import, module-level or inside a function)
has no cycle. The bundled pair imports only torch, transformers and each other."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "deepseek_v4_ov"
BUNDLED = ("configuration_deepseek_v4", "modeling_deepseek_v4")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(name: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(imported package module, names taken from it) for every import of our package in `tree`."""
    package = name if name.endswith("__init__") else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "deepseek_v4_ov":
                found.append((base, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "deepseek_v4_ov"]
    return found


def test_no_private_name_imported_across_modules():
    bad = []
    for name, tree in _modules().items():
        for module, names in _imports(name, tree):
            bad += [f"{name}: from {module} import {n}" for n in names if n.startswith("_") and module != name]
    assert not bad, bad


def test_no_import_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for module, names in _imports(name, tree):
            for target in [f"{module}.{n}" for n in names] + [module]:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_bundled_pair_is_self_contained():
    for stem in BUNDLED:
        tree = ast.parse((PACKAGE / "model" / f"{stem}.py").read_text())
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add("." if node.level else node.module.split(".")[0])
        assert roots <= {"__future__", "math", "dataclasses", "typing", "warnings", "torch", "transformers", "."}, roots
