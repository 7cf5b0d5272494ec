"""Portable checkpoints: a saved hybrid loads with `trust_remote_code=True` in a fresh virtual environment where
hybridize is not installed, and gives the logits and greedy tokens hybridize gives."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from hybridize import HybridForCausalLM
from hybridize.mixers import MIXERS
from hybridize.models import portable
from hybridize.names import LINEAR_MIXER_NAMES
from conftest import assert_close, tiny_config

PROMPT = [[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26], [2, 71, 82, 81, 82, 84, 59, 4, 52, 35, 36, 28]]
NEW_TOKENS = 8

# Run by the fresh environment's Python: `import hybridize` must fail, fla and Triton are blocked (a CPU user without
# them), every shipped file passes transformers' import check (what a download from the Hub runs on each file), and
# the model loads, runs, saves itself and loads again from that copy.
LOADER = r"""
import importlib.util, json, sys
from pathlib import Path

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fla", "triton"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Blocked())
assert importlib.util.find_spec("hybridize") is None, "hybridize is importable in the fresh environment"
try:
    import hybridize
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("import hybridize worked")

import torch
from transformers import AutoModelForCausalLM
from transformers.dynamic_module_utils import check_imports, get_relative_import_files

folder, again, prompt, new_tokens = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
for f in sorted(folder.glob("*.py")):
    check_imports(str(f))
copied = {Path(f).name for f in get_relative_import_files(str(folder / "modeling_hybridize.py"))}
assert copied == {f.name for f in folder.glob("*.py")} - {"modeling_hybridize.py"}, copied

torch.set_num_threads(1)
ids = torch.tensor(prompt)
results = {}
for name, path in (("first", folder), ("again", again)):
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    results[name] = {"logits": logits.tolist(), "tokens": tokens.tolist()}
    if name == "first":
        model.save_pretrained(again)
assert not [m for m in sys.modules if m.split(".")[0] in ("hybridize", "fla", "triton")]
print(json.dumps(results))
"""


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment that sees this one's packages (torch, transformers, einops, ...) except hybridize:
    its site-packages has a .pth naming a folder of links to each entry of ours but hybridize's and the .pth files
    (a folder named by a .pth is not a site folder: its own .pth files, hybridize's editable hook among them, are not
    read). No network, no install; about a second."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    links = tmp_path / "site"
    links.mkdir()
    for folder in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(folder).iterdir():
            name = entry.name.lower()
            if name.endswith(".pth") or name.startswith(("hybridize", "__editable__")) or (links / entry.name).exists():
                continue
            (links / entry.name).symlink_to(entry)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "packages-without-hybridize.pth").write_text(f"{links}\n")
    return python


# every mixer the package registers (a new one is in this model by itself), full and sliding attention, convs; and an
# intra-layer hybrid (heads split between attention and linear mixers, gate fusion)
@pytest.mark.parametrize("pattern", ["every_mixer", "intra_gate"])
def test_a_saved_hybrid_loads_with_trust_remote_code_where_hybridize_is_not_installed(pattern, tmp_path, monkeypatch):
    torch.manual_seed(0)
    if pattern == "every_mixer":
        pattern = [*LINEAR_MIXER_NAMES[:2], None, *LINEAR_MIXER_NAMES[2:], None]
    model = HybridForCausalLM(tiny_config(pattern)).eval()
    model.save_pretrained(tmp_path / "hybrid")
    config = json.loads((tmp_path / "hybrid" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hybridize.HybridForCausalLM"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ids = torch.tensor(PROMPT)
            logits = model(ids).logits
            tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    finally:
        torch.set_num_threads(n)

    python = _fresh_venv(tmp_path)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(python), "-I", "-c", LOADER, str(tmp_path / "hybrid"), str(tmp_path / "again"),
                          json.dumps(PROMPT), str(NEW_TOKENS)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("first", "again"):
        assert_close(torch.tensor(results[name]["logits"]), logits, f"logits without hybridize ({name})")
        assert results[name]["tokens"] == tokens.tolist(), name


def test_the_portable_code_is_every_module_the_model_imports_and_never_hybridize():
    shipped = portable.modules()
    # each mixer's module ships (a new mixer file is found through the imports, with no list to update)
    assert {cls.__module__ for cls in MIXERS.values()} <= set(shipped)
    assert "hybridize" not in shipped  # the package root registers with the Auto classes: never shipped
    for name, text in portable.sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert node.module.split(".")[0] != "hybridize", (name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and (node.module is None or "." not in node.module), (name, ast.unparse(node))
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "hybridize" for a in node.names), name


@pytest.mark.parametrize("source, message", [
    ("import hybridize\n", "cannot be flattened"),
    ("x = 1; from .base import RMSNorm\n", "must stand on lines of its own"),
])
def test_imports_that_cannot_be_flattened_are_refused(tmp_path, source, message):
    path = tmp_path / "odd.py"
    path.write_text(source)
    with pytest.raises(ValueError, match=message):
        portable.flatten(portable._Module("hybridize.mixers.odd", path, False))
