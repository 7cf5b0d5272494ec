"""hybridize's imports go one way: read from the source with `ast` (nothing is imported), function-level imports
included, no module reaches itself through others and each package imports only from the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hybridize"

# Lowest first. A module may import from its own package and from packages of lower layers; packages that share a
# layer are peers and import nothing of each other. "hybridize" is the package root: it registers the model type
# with transformers' Auto classes, so whatever imports `hybridize` itself sits above models.
LAYERS = [
    ("provenance", "distributed", "assets", "recipes", "names"),  # utilities and data files
    ("data",),  # text sources, packing, synthetic tasks
    ("mixers",),
    ("models",),
    ("hybridize",),
    ("convert",),  # teacher loading, attention -> mixer weight transfer
    ("metrics",),  # token NLL, perplexity windows, recall cells and their scoring
    ("distill",),  # losses, recipes, the training loop, curves, the model card
    ("selection",),  # the selectors and their registry; they train with distill's loop
    ("pipeline",),  # the conversion: align, select, distill, finetune, export
    ("pretrain",),  # training any model from scratch (layer mixes, presets, the teachers' recipes), on distill's loop
    ("teacher",),  # training a teacher from scratch: the Transformer preset of pretrain
    ("evaluation",),  # `hybridize eval`: runner, report, lm-eval adapter
    ("sweep",),  # grids of pretrain runs, each scored with metrics' perplexity and recall
    ("bench",),
    ("demo",),
    ("cli",),
    ("__main__",),
]
LAYER = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the source tree (a package is its __init__.py)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("hybridize",) + path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(name: str, path: Path) -> set[str]:
    """The modules of ours that importing `name` runs, at module level or in any function: the imported module, and
    the __init__ of each package on its way that is not one of `name`'s own (Python has begun those already)."""
    is_package = path.name == "__init__.py"
    own = set(_ancestors(name))
    targets = set()

    def add(module: str, explicit: bool = True) -> None:
        for outer in _ancestors(module) + [module]:
            if outer in MODULES and outer != name and (outer not in own or (explicit and outer == module)):
                targets.add(outer)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            attributes = False
            for alias in node.names:
                if f"{module}.{alias.name}" in MODULES:
                    add(f"{module}.{alias.name}")
                else:
                    attributes = True
            add(module, explicit=attributes)  # `from . import sub` runs the package only if it is not ours already
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hybridize"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module that imports itself (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

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
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _loop(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest import loop through the component's first module, to show where a cycle runs."""
    start, inside = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & inside):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return component


def test_the_parser_sees_module_and_function_level_imports():
    assert "hybridize.data.packing" in GRAPH["hybridize.data.loader"]  # module level
    assert "hybridize.demo" in GRAPH["hybridize.cli"]  # inside _demo()
    assert "hybridize.data" in GRAPH["hybridize.selection.kl_guided"]  # the package's __init__ runs first
    assert "hybridize.bench" not in GRAPH["hybridize.bench.inference"]  # `from . import roofline`: its own package


def test_no_import_cycle_among_modules():
    cycles = _cycles(GRAPH)
    detail = "\n".join(f"{', '.join(c)}\n  e.g. {' -> '.join(_loop(GRAPH, c))}" for c in cycles)
    assert not cycles, f"import cycles among hybridize's modules:\n{detail}"


def test_no_import_cycle_among_packages():
    graph = {p: set() for p in map(_package, MODULES)}
    for m, targets in GRAPH.items():
        graph[_package(m)] |= {_package(t) for t in targets} - {_package(m)}
    cycles = _cycles(graph)
    detail = "\n".join(' -> '.join(_loop(graph, c)) for c in cycles)
    assert not cycles, f"import cycles among hybridize's packages:\n{detail}"


def test_every_package_has_a_layer():
    packages = {_package(m) for m in MODULES}
    assert packages == set(LAYER), (f"packages without a layer: {sorted(packages - set(LAYER))}; layers naming no "
                                    f"package: {sorted(set(LAYER) - packages)}")


def test_packages_import_only_their_own_modules_and_lower_layers():
    bad = sorted((m, t) for m, targets in GRAPH.items() for t in targets
                 if _package(t) != _package(m) and LAYER.get(_package(t), -1) >= LAYER.get(_package(m), -1))
    detail = "\n".join(f"{m} imports {t} ({_package(t)} is not below {_package(m)})" for m, t in bad)
    assert not bad, f"imports against the layering (lowest first: {[list(layer) for layer in LAYERS]}):\n{detail}"
