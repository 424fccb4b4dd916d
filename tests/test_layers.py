"""Layers point one way: symbols, data, eval, train and the top package's commands import downwards only, and no
two modules import each other, directly or around a circle. Every import counts, the ones inside functions too."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The published layout: the top-level folders are the sub-packages (setup.py).
FOLDERS = {"symbols": "vargface.symbols", "data": "vargface.data", "train": "vargface.train",
           "eval": "vargface.eval", "vargface": "vargface"}
# Lowest first; a layer may import its own and any lower layer. "base" is the top package's modules that import
# no sub-package (errors, atomic, options, ...): every layer uses them.
ORDER = ["base", "symbols", "data", "eval", "train", "vargface"]


def modules():
    """module name -> source file, for every module of the project."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imports(path, known):
    """The project's modules ``path`` imports (a `from package import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph():
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def layers(graph):
    """module -> layer: its sub-package, or for the top package's modules "vargface" when they reach a sub-package
    (directly or through another such module) and "base" when they do not."""
    found = {m: m.split(".")[1] for m in graph if len(m.split(".")) > 1 and m.split(".")[1] in FOLDERS}
    top = {m for m in graph if m not in found}
    above = set()
    while True:
        grown = {m for m in top if any(t in found or t in above for t in graph[m])}
        if grown == above:
            break
        above = grown
    return {**found, **{m: "vargface" if m in above else "base" for m in top}}


def cycle(graph):
    """One cycle of ``graph`` (a list of nodes, first repeated last), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_walk_sees_the_project():
    graph = import_graph()
    assert len(graph) >= 50
    assert "vargface.eval.runner" in graph["vargface.train.trainer"]  # a function-level import is seen
    assert "vargface.train.schema" in graph["vargface.train.config"]


def test_no_module_of_the_subpackages_imports_itself_around_a_circle():
    """(train/cli.py and train/distill_cli.py, say; the top package's own modules are checked as layers below.)"""
    graph = import_graph()
    inner = {m: {t for t in targets if len(t.split(".")) > 2} for m, targets in graph.items() if len(m.split(".")) > 2}
    assert cycle(inner) is None, " -> ".join(cycle(inner))
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


def test_layers_point_one_way():
    graph = import_graph()
    of = layers(graph)
    assert of["vargface.errors"] == "base" and of["vargface.pipeline"] == of["vargface.__main__"] == "vargface"
    upward = [f"{module} ({of[module]}) imports {target} ({of[target]})" for module, targets in graph.items()
              for target in targets if ORDER.index(of[target]) > ORDER.index(of[module])]
    assert not upward, upward
    packages = {}
    for module, targets in graph.items():
        packages.setdefault(of[module], set()).update(of[t] for t in targets if of[t] != of[module])
    assert cycle(packages) is None
    # the one inference module both training and evaluation import
    assert "vargface.eval.runner" in graph["vargface.train.trainer"] | graph["vargface.train.teacher"]
    assert "vargface.eval.runner" in graph["vargface.eval.embedder"]
