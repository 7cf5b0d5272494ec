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
