"""The house's rules, checked on the whole tree (the package, training scripts, benchmarks, tests):

* imports go downward only: inside the package by stage (`STAGES`: the model at the bottom, the command line
  on top; rooms of one stage do not import each other), and across the tree by part (`PARTS`): the package
  imports no training script, benchmark or test; training scripts no benchmark or test; benchmarks no test;
* no import circle anywhere, between modules of any part;
* no module of the package imports a private name of another;
* the bundled pair imports only torch, transformers and each other.

Every import counts, module-level or inside a function. The checker reads sources only (`layout_violations`), so
the tests below also plant an upward import and a circle and see them caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = "deepseek_v4_ov"
STAGES = ("model", "checkpoint", "toys", "compress", "convert", "export", "runtime", "eval", "")
"""The package's stages, bottom up; "" is the top: `cli`, `demo`, `__main__`. The package's `__init__` (its
version, importing nothing) is below them all."""
PARTS = {PACKAGE: 0, "training": 1, "benchmarks": 2, "tests": 3}
"""The tree's parts, bottom up. Modules of `training`, `benchmarks` and `tests` import each other by plain name
(their folder is on sys.path): `benchmarks/upstream/x.py` is `x`."""
BUNDLED = ("configuration_deepseek_v4", "modeling_deepseek_v4")


def tree_sources(root: Path) -> dict[str, str]:
    """{relative path: source} of every .py file of the tree's parts."""
    return {p.relative_to(root).as_posix(): p.read_text()
            for part in PARTS for p in sorted((root / part).rglob("*.py"))}


def module_name(path: str) -> str:
    parts = path[:-3].split("/")
    if parts[0] != PACKAGE:
        return parts[-1]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> int:
    if module == PACKAGE:
        return -1
    room = module.split(".")[1] if module.count(".") >= 1 and module.split(".")[1] in STAGES else ""
    return STAGES.index(room)


def imported(module: str, is_init: bool, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module name, names taken from it, line) for every import in `tree`."""
    package = module if is_init else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.append((base, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


def import_graph(sources: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, int]], list[str]]:
    """(module -> path, module -> {imported module of the tree: line}, problems: private-name imports in the
    package and files sharing a module name)."""
    paths: dict[str, str] = {}
    problems = []
    for path in sources:
        other = paths.setdefault(module_name(path), path)
        if other != path:  # one plain name on sys.path for two files: the graph would see only one
            problems.append(f"{path}: module name {module_name(path)!r} is also {other}'s")
    graph: dict[str, dict[str, int]] = {m: {} for m in paths}
    for module, path in paths.items():
        tree = ast.parse(sources[path], path)
        for base, names, line in imported(module, path.endswith("__init__.py"), tree):
            targets = [t for t in [f"{base}.{n}" for n in names] + [base] if t in paths and t != module]
            if targets:
                graph[module].setdefault(targets[0], line)
            if path.startswith(PACKAGE + "/") and base.startswith(PACKAGE) and base != module:
                problems += [f"{path}:{line}: from {base} import {n}" for n in names if n.startswith("_")]
    return paths, graph, problems


def layout_violations(sources: dict[str, str]) -> list[str]:
    """Every upward import, circle and private-name import of the tree `sources` ({path: source})."""
    paths, graph, bad = import_graph(sources)
    part = {m: PARTS[p.split("/")[0]] for m, p in paths.items()}
    for module, targets in graph.items():
        for target, line in targets.items():
            where = f"{paths[module]}:{line}: imports {target}"
            if part[target] > part[module]:
                bad.append(f"{where} (a higher part of the tree)")
            elif part[module] == part[target] == 0:
                low, high = stage(target), stage(module)
                same_room = target.split(".")[:2] == module.split(".")[:2]
                if low > high or (low == high and not same_room and STAGES[low]):
                    bad.append(f"{where} (stage {STAGES[low] or 'top'} over {STAGES[high] or 'top'})")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                bad.append("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return bad


def test_the_tree_keeps_the_rules():
    assert layout_violations(tree_sources(ROOT)) == []


def test_planted_upward_import_is_caught():
    """An upward import inside the package, one from the package into a benchmark and one from a training
    script into a test are each reported with file and line."""
    sources = tree_sources(ROOT)
    sources["deepseek_v4_ov/model/planted.py"] = "import os\nfrom deepseek_v4_ov.export.pipeline import export\n"
    sources["deepseek_v4_ov/checkpoint/planted.py"] = "def f():\n    import layer_types\n"
    sources["training/planted.py"] = "from conftest import ROOT\n"
    sources["deepseek_v4_ov/compress/planted.py"] = "from deepseek_v4_ov.toys import writer\n"  # allowed: downward
    assert sorted(layout_violations(sources)) == [
        "deepseek_v4_ov/checkpoint/planted.py:2: imports layer_types (a higher part of the tree)",
        "deepseek_v4_ov/model/planted.py:2: imports deepseek_v4_ov.export.pipeline (stage export over model)",
        "training/planted.py:1: imports conftest (a higher part of the tree)",
    ]


def test_planted_sideways_import_and_circles_are_caught():
    sources = tree_sources(ROOT)
    sources["deepseek_v4_ov/toys/planted.py"] = "from deepseek_v4_ov.compress.policy import target_of\n"
    sources["benchmarks/planted_a.py"] = "import planted_b\n"
    sources["benchmarks/planted_b.py"] = "def f():\n    from planted_a import g\n"
    sources["deepseek_v4_ov/eval/planted.py"] = "from deepseek_v4_ov.eval.metrics import compare_logits\n"
    sources["deepseek_v4_ov/eval/metrics.py"] += "\nfrom deepseek_v4_ov.eval import planted\n"
    bad = layout_violations(sources)
    assert "deepseek_v4_ov/toys/planted.py:1: imports deepseek_v4_ov.compress.policy (stage compress over toys)" in bad
    assert "import circle: planted_a -> planted_b -> planted_a" in bad
    assert ("import circle: deepseek_v4_ov.eval.metrics -> deepseek_v4_ov.eval.planted -> "
            "deepseek_v4_ov.eval.metrics") in bad
    assert len(bad) == 3, bad


def test_planted_private_import_is_caught():
    sources = tree_sources(ROOT)
    sources["deepseek_v4_ov/eval/planted.py"] = "from deepseek_v4_ov.compress.weights import _row_split\n"
    assert layout_violations(sources) == [
        "deepseek_v4_ov/eval/planted.py:1: from deepseek_v4_ov.compress.weights import _row_split"]


def test_two_files_of_one_module_name_are_caught():
    """Scripts and tests import each other by plain name: a second `quality.py` would hide one of them."""
    sources = tree_sources(ROOT)
    sources["tests/quality.py"] = "import os\n"
    assert layout_violations(sources) == ["tests/quality.py: module name 'quality' is also benchmarks/quality.py's"]


def test_bundled_pair_is_self_contained():
    for stem in BUNDLED:
        tree = ast.parse((ROOT / PACKAGE / "model" / f"{stem}.py").read_text())
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add("." if node.level else node.module.split(".")[0])
        assert roots <= {"__future__", "math", "dataclasses", "typing", "warnings", "torch", "transformers", "."}, roots
