"""Imports point one way: types <- {engine, chat, modelfiles} <- services <- protocol/routes <- main <- cluster <- cli.

Walks the imports of every module in app/ (and config/) with ast, at every depth (lazy imports inside
functions count: they still make one layer depend on another), and fails on an upward import or a
loop, naming the files.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each module's layer, by its longest listed prefix. A module may import its own group or any group
# of a lower rank; groups of the same rank are strangers to each other.
LAYERS = {
    "app.types": 0,
    "app.errors": 0,
    "app.cpu": 0,
    "app.llama_build": 0,
    "app.logging_setup": 0,
    "config": 0,
    "app.engine": 1,
    "app.chat": 1,
    "app.modelfiles": 1,
    "app.metrics": 1,
    "app.services": 2,
    "app.pipeline": 3,  # drives llama.cpp and the backends' loaders; no FastAPI
    "app.protocol": 3,
    "app.routes": 4,
    "app.limits": 4,
    "app.cors": 4,
    "app.telemetry": 4,
    "app.bench": 4,
    "app.main": 5,
    "app.cluster": 6,  # the app on Ray: replicas of app.main's app behind a gateway
    "app.cli": 7,
    "app.__main__": 8,
}
# Leaves that import nothing of the app at all.
LEAVES = {"app.types", "app.errors", "app.cpu", "app.llama_build", "app.logging_setup", "config.settings"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(module: str) -> str:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module}: not in LAYERS; say where it belongs"
    return max(matches, key=len)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The app modules `path` imports (`from app.x import y` counts as app.x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, tuple[Path, set[str]]]:
    paths = [*ROOT.joinpath("app").rglob("*.py"), *ROOT.joinpath("config").rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    # `from app import metrics` names the module; a package's own __init__ is not a dependency.
    tops = {"app", "config"}  # the empty top-level packages
    return {
        name: (path, imports(path, set(modules)) - {name, *tops}) for name, path in modules.items() if name not in tops
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = group(module)
        for target in sorted(targets):
            theirs = group(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(
                    f"{module} ({mine}, layer {LAYERS[mine]}) imports {target} ({theirs}, layer {LAYERS[theirs]})"
                )
    return wrong


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    loops, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                loops.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return loops


def real_graph() -> dict[str, set[str]]:
    return {module: targets for module, (_, targets) in import_graph().items()}


def test_no_module_imports_a_higher_layer_or_a_neighbour():
    wrong = upward_imports(real_graph())
    assert not wrong, "imports against the layers (module paths are app/...):\n" + "\n".join(wrong)


def test_the_leaves_import_nothing_of_the_app():
    graph = real_graph()
    wrong = {leaf: sorted(graph[leaf]) for leaf in LEAVES if graph[leaf]}
    assert not wrong, wrong


def test_no_import_loops():
    loops = import_loops(real_graph())
    assert not loops, "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)


def test_the_checks_find_what_they_must():
    """On a made-up graph: an upward import, a neighbour's import and a loop are all found; the real
    walk sees plain and `from app import x` imports."""
    made_up = {
        "app.engine.batch": {"app.services.backend"},  # upward
        "app.chat.format": {"app.engine.detokenize"},  # a neighbour of the same rank
        "app.services.a": {"app.services.b"},
        "app.services.b": {"app.services.a"},  # a loop inside one group
    }
    assert upward_imports(made_up) == [
        "app.chat.format (app.chat, layer 1) imports app.engine.detokenize (app.engine, layer 1)",
        "app.engine.batch (app.engine, layer 1) imports app.services.backend (app.services, layer 2)",
    ]
    assert import_loops(made_up) == [["app.services.a", "app.services.b", "app.services.a"]]
    graph = real_graph()
    assert "app.services.backend" in graph["app.services.chat"]  # `from app.services.backend import ...`
    assert "app.metrics" in graph["app.services.backend"]  # `from app import metrics`
