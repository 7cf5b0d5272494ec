"""benchmarks/quality_compare.py: two quality grids' rows paired prompt by prompt (McNemar), refused when the teacher
or the prompts differ, bad sides named in one line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import quality_compare as qc  # noqa: E402


def _state(folder: Path, fusion: str, selector: str, correct: dict[int, str], teacher="ab" * 32,
           prompts="f00d", nll: list[float] | None = None, windows="w1") -> Path:
    units = {}
    for seed, bits in correct.items():
        units[f"lightning/{selector}/seed{seed}"] = {
            "mixer": "lightning", "selector": selector, "seed": seed, "layers": [1], "groups": None,
            "entries": [{"task": "passkey", "length": 1024, "depth": 0.5, "samples": len(bits),
                         "successes": bits.count("1"), "correct": bits, "prompts": prompts}]}
        if nll is not None:
            mean = sum(nll) / len(nll)
            units[f"lightning/{selector}/seed{seed}"]["perplexity"] = [
                {"length": 1024, "length_from": 0, "samples": len(nll), "value": math.exp(mean), "nll": mean,
                 "ci_low": math.exp(min(nll)), "ci_high": math.exp(max(nll)), "window_nll": nll, "windows": windows}]
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({
        "settings": {"fusion": fusion}, "teacher": {"weights_sha256": teacher, "trained_context": 1024},
        "units": units}))
    return folder


def test_pairs_the_common_seeds_prompt_by_prompt(tmp_path, capsys):
    a = _state(tmp_path / "a", "intra", "uniform", {0: "1" * 30 + "0" * 10, 1: "1" * 20 + "0" * 20})
    b = _state(tmp_path / "b", "inter", "halo", {0: "0" * 40, 1: "1" * 20 + "0" * 20, 2: "1" * 40})
    out = tmp_path / "rows.json"
    assert qc.main([f"{a}:lightning/uniform", f"{b}:lightning/halo", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["seed"] for r in rows] == [0, 1]  # seed 2 is only in b
    first, second = rows
    assert (first["n"], first["only_a"], first["only_b"], first["length"]) == (40, 30, 0, 1.0)
    assert first["p"] < 1e-8 and first["a"]["recall"] == 0.75 and first["a"]["fusion"] == "intra"
    assert (second["only_a"], second["only_b"], second["p"]) == (0, 0, 1.0)
    text = capsys.readouterr().out
    assert "A better in 1, B better in 0, no significant difference (p >= 0.05) in 1" in text
    assert "| 0 | passkey | 1x | 40 | 75% [" in text


@pytest.mark.parametrize("case, message", [
    ("teacher", "teachers differ"), ("prompts", "different prompts"), ("row", "no conversion lightning/halo"),
    ("side", "expected STATE_DIR:MIXER/SELECTOR"), ("missing", "does not exist")])
def test_refuses_what_cannot_be_paired(tmp_path, capsys, case, message):
    a = _state(tmp_path / "a", "intra", "uniform", {0: "10" * 5})
    b = _state(tmp_path / "b", "inter", "uniform" if case == "row" else "halo", {0: "01" * 5},
               teacher="cd" * 32 if case == "teacher" else "ab" * 32,
               prompts="beef" if case == "prompts" else "f00d")
    side_b = {"side": f"{b}/lightning/halo", "missing": f"{tmp_path}/nowhere:lightning/halo"}.get(
        case, f"{b}:lightning/halo")
    out = tmp_path / "rows.json"
    assert qc.main([f"{a}:lightning/uniform", side_b, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_perplexities_pair_on_the_same_windows(tmp_path, capsys):
    nll = [2.0, 2.2, 2.1, 2.3, 2.05, 2.15]
    a = _state(tmp_path / "a", "intra", "uniform", {0: "1" * 10}, nll=[x - 0.1 for x in nll])
    b = _state(tmp_path / "b", "inter", "halo", {0: "1" * 10}, nll=nll)
    out = tmp_path / "rows.json"
    assert qc.main([f"{a}:lightning/uniform", f"{b}:lightning/halo", "--out", str(out)]) == 0
    recall, ppl = json.loads(out.read_text())["rows"]
    assert recall["task"] == "passkey" and ppl["task"] == "perplexity" and ppl["n"] == 6
    assert ppl["p"] == pytest.approx(2 / 64) and ppl["a"]["perplexity"] < ppl["b"]["perplexity"]
    assert "Of 1 buckets (seed x context): A lower in 1, B lower in 0" in capsys.readouterr().out
    c = _state(tmp_path / "c", "inter", "halo", {0: "1" * 10}, nll=nll, windows="w2")
    assert qc.main([f"{a}:lightning/uniform", f"{c}:lightning/halo"]) == 2
    assert "different perplexity windows" in capsys.readouterr().err
