"""Every ```python block of docs/*.md runs: the blocks of a page in order, in one namespace, in a fresh working
directory, on the CPU. A page whose examples stop working fails here."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_docs_pages_exist_and_each_has_an_example():
    names = {p.name for p in PAGES}
    assert {"README.md", "design.md", "mixers.md"} <= names, names
    for page in PAGES:
        if page.name != "README.md":
            assert BLOCK.search(page.read_text()), f"{page.name} has no python example"


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())], ids=lambda p: p.stem)
def test_docs_examples_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRIDIZE_CACHE", str(tmp_path / "cache"))
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for n, block in enumerate(BLOCK.findall(page.read_text())):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"{page.name} block {n + 1}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, python block {n + 1} failed: {err!r}\n{block}") from err


def test_the_readme_quickstart_loads_and_generates(tmp_path, monkeypatch):
    """The README's Python quickstart, run against a tiny hybrid saved where it expects a conversion's output."""
    from importlib import resources

    from transformers import AutoTokenizer

    from hybridize import HybridForCausalLM
    from conftest import tiny_config

    teacher = resources.files("hybridize") / "assets" / "teacher-tiny"
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    monkeypatch.chdir(tmp_path)
    model = HybridForCausalLM(tiny_config("mixed", vocab_size=len(tokenizer)))
    model.save_pretrained("out/qwen3-hybrid")
    tokenizer.save_pretrained("out/qwen3-hybrid")
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) == 1, "the README has one python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue().startswith("The capital of France is"), out.getvalue()
