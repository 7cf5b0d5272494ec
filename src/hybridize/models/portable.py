"""Portable checkpoints: the model's code written beside its weights, with `auto_map` in config.json, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

loads and runs it where hybridize is not installed (torch, transformers and einops are enough; fla's kernels are used
on CUDA when fla is installed, the PyTorch references otherwise, as in hybridize itself).

transformers' remote-code loader (`transformers.dynamic_module_utils`) takes the modules named in `auto_map` from the
checkpoint folder and, recursively, every file a module names in a `from .name import ...` line (a regex over the
source), all from that one flat folder: it does not follow packages (`from ..mixers.base import`) nor
`from . import name`. So the code is assembled at save time from this package's own source:

* the modules are found by walking the imports (at module level and inside functions) of `hybridize.models.modeling`
  and `hybridize.models.configuration` through the hybridize package: a new mixer ships with no list to update;
* each becomes one flat file: `hybridize/mixers/base.py` -> `mixers_base.py`, a package's `__init__.py` ->
  `mixers.py`, and the two entry modules take the names the convention expects, `modeling_hybridize.py` and
  `configuration_hybridize.py`; its imports of hybridize modules are rewritten to those names
  (`from . import kernels` -> `from . import mixers_kernels as kernels`), and nothing imports `hybridize`;
* `modeling_hybridize.py` ends with a block that never runs and names every file in the form the loader reads, so
  that modules imported only as objects are copied too;
* imports of packages outside torch, transformers, einops and the standard library (fla, Triton) are put in a
  `try:` block that re-raises: nothing changes at run time (they are imported only where they are used, on CUDA), but
  transformers' `check_imports`, which every file fetched from the Hub goes through and which skips `try` blocks,
  would otherwise refuse to load the model where they are not installed.

The model's `save_pretrained` calls `write_code`. Run from such a flat copy (the model loaded with
trust_remote_code), `write_code` copies that copy's own files instead.
"""

from __future__ import annotations

import ast
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "hybridize"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../hybridize (this file is hybridize/models/portable.py)
ENTRY_MODULES = {"hybridize.models.modeling": "modeling_hybridize",
                 "hybridize.models.configuration": "configuration_hybridize"}
AUTO_MAP = {"AutoConfig": "configuration_hybridize.HybridConfig",
            "AutoModel": "modeling_hybridize.HybridModel",
            "AutoModelForCausalLM": "modeling_hybridize.HybridForCausalLM"}
# What the shipped code may import without a `try` around it: the checkpoint's requirements.
REQUIRED = frozenset({"torch", "transformers", "einops"})
HEADER = "# hybridize portable code"


@dataclass
class _Module:
    name: str  # dotted: hybridize.mixers.base
    path: Path
    is_package: bool


def _find(name: str) -> _Module | None:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if len(parts) > 1 and base.with_suffix(".py").is_file():
        return _Module(name, base.with_suffix(".py"), False)
    if (base / "__init__.py").is_file():
        return _Module(name, base / "__init__.py", True)
    return None


def flat_name(name: str) -> str:
    """The file name (without .py) of module `name` in the checkpoint folder."""
    if name in ENTRY_MODULES:
        return ENTRY_MODULES[name]
    if name == PACKAGE:
        raise ValueError("the portable code cannot include the hybridize package root (it registers the model type "
                         "with transformers' Auto classes); import from its modules instead")
    return "_".join(name.split(".")[1:])


def _resolve(module: _Module, node: ast.ImportFrom | ast.Import) -> list[tuple[ast.alias, str, bool]]:
    """For each imported name of a hybridize import: (alias, the hybridize module it comes from or is, whether the
    name is that module itself). [] for an import of anything else."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                if alias.asname is None or _find(alias.name) is None:
                    raise ValueError(f"{module.path}:{node.lineno}: `import {alias.name}` cannot be flattened; write "
                                     "`from .x import y` or `import a.b as c`")
                out.append((alias, alias.name, True))
        return out
    if node.level:
        parts = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        target = ".".join(parts + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == PACKAGE:
        target = node.module
    else:
        return []
    out = []
    for alias in node.names:
        if alias.name == "*":
            raise ValueError(f"{module.path}:{node.lineno}: `import *` from a hybridize module cannot be flattened")
        sub = f"{target}.{alias.name}"
        if _find(sub) is not None:
            out.append((alias, sub, True))
        elif _find(target) is not None:
            out.append((alias, target, False))
        else:
            raise ValueError(f"{module.path}:{node.lineno}: cannot find module {target}")
    return out


def _imports(module: _Module) -> list[tuple[ast.stmt, list[tuple[ast.alias, str, bool]], bool]]:
    """Every import statement of a module (functions included): (node, its hybridize names, whether it sits in a
    `try` block)."""
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    out = []

    def visit(node: ast.AST, in_try: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, _resolve(module, child), in_try))
            visit(child, in_try or isinstance(child, ast.Try))

    visit(tree, False)
    return out


def modules(roots: tuple[str, ...] = tuple(ENTRY_MODULES)) -> dict[str, _Module]:
    """The hybridize modules the model needs: `roots` and everything they import, directly or not, at any level."""
    found: dict[str, _Module] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        module = _find(name)
        if module is None:
            raise ValueError(f"module {name} not found under {PACKAGE_DIR}")
        found[name] = module
        flat_name(name)  # refuses the package root
        todo.extend(target for _, names, _ in _imports(module) for _, target, _ in names)
    return dict(sorted(found.items()))


def _optional(node: ast.stmt) -> bool:
    """An import of a package the checkpoint does not require (fla, triton)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return False
        tops = [node.module.split(".")[0]]
    else:
        tops = [alias.name.split(".")[0] for alias in node.names]
    return any(t not in REQUIRED and t not in sys.stdlib_module_names and t != PACKAGE for t in tops)


def _alias(name: str, asname: str | None) -> str:
    return name if asname is None or asname == name else f"{name} as {asname}"


def _rewritten(names: list[tuple[ast.alias, str, bool]]) -> list[str]:
    """Flat-layout statements for one hybridize import."""
    lines, attributes = [], {}
    for alias, target, is_module in names:
        if is_module:
            bound = alias.asname or alias.name.split(".")[-1]
            lines.append(f"from . import {_alias(flat_name(target), bound)}")
        else:
            attributes.setdefault(target, []).append(_alias(alias.name, alias.asname))
    return [f"from .{flat_name(t)} import {', '.join(a)}" for t, a in attributes.items()] + lines


def flatten(module: _Module) -> str:
    """The source of `module` for the flat checkpoint folder."""
    lines = module.path.read_text().splitlines()
    edits, optional = [], []  # optional: (first line, last line, indent, body) of each `try` block to write
    for node, names, in_try in sorted(_imports(module), key=lambda item: item[0].lineno):
        if names:
            new = _rewritten(names)
        elif _optional(node) and not in_try:
            new = None
        else:
            continue
        first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
        indent, rest = first[:node.col_offset], last[node.end_col_offset:]
        if indent.strip() or (rest.strip() and not rest.strip().startswith("#")):
            raise ValueError(f"{module.path}:{node.lineno}: an import must stand on lines of its own to be flattened")
        if new is None:  # optional package: into a `try` block (see the module docstring)
            body = [("    " + line if line.strip() else line) for line in lines[node.lineno - 1:node.end_lineno]]
            if optional and optional[-1][1] == node.lineno - 1 and optional[-1][2] == indent:
                start, _, _, previous = optional.pop()  # the import right above: one block for both
                body = previous + body
            else:
                start = node.lineno
            optional.append((start, node.end_lineno, indent, body))
        else:
            block = [indent + s for s in new]
            block[-1] += rest
            edits.append((node.lineno, node.end_lineno, block))
    for start, end, indent, body in optional:
        edits.append((start, end, [f"{indent}try:  # optional; in `try` so that transformers' check_imports does "
                                   "not require it", *body, f"{indent}except ImportError:", f"{indent}    raise"]))
    for start, end, block in sorted(edits, reverse=True):
        lines[start - 1:end] = block
    relative = module.path.relative_to(PACKAGE_DIR.parent).as_posix()
    header = (f"{HEADER}: written from {relative} of hybridize {_version()} when the model was saved, for\n"
              "# AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True) without hybridize installed.\n")
    return header + "\n".join(lines) + "\n"


def _manifest(files: list[str]) -> str:
    lines = ["", "",
             "# Never run: the files of this checkpoint's code, named in the one form transformers' remote-code loader",
             "# reads (`from .name import`), so that it copies modules imported only as objects too.",
             "if False:"]
    lines += [f"    from .{f} import *" for f in files]
    return "\n".join(lines) + "\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "(not installed)"


def sources() -> dict[str, str]:
    """{file name: source} of the portable code, assembled from the installed package's own modules."""
    found = modules()
    files = {flat_name(name) + ".py": flatten(module) for name, module in found.items()}
    if len(files) != len(found):
        raise ValueError(f"two modules flatten to one file name: {sorted(found)}")
    entry = ENTRY_MODULES["hybridize.models.modeling"] + ".py"
    files[entry] += _manifest(sorted(f[:-3] for f in files if f != entry))
    return files


def write_code(folder: str | Path) -> list[str]:
    """Write the portable code into `folder` (a saved checkpoint); returns the file names. From a flat copy (the model
    loaded with trust_remote_code) its own files are copied."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if __name__.split(".")[0] != PACKAGE:
        here = Path(__file__).resolve().parent
        names = sorted(p.name for p in here.glob("*.py") if p.read_text().startswith(HEADER))
        for name in names:
            if (here / name).resolve() != (folder / name).resolve():
                shutil.copyfile(here / name, folder / name)
        return names
    files = sources()
    for name, text in files.items():
        (folder / name).write_text(text)
    return sorted(files)


__all__ = ["AUTO_MAP", "REQUIRED", "flat_name", "flatten", "modules", "sources", "write_code"]
