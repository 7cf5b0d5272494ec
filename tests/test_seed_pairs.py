"""benchmarks/seed_pairs.py: two settings over seeds from one eval report, paired within each seed on the same prompts
and windows; models the report lacks are named in one line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import seed_pairs  # noqa: E402


def _report(path: Path, correct: dict[str, str], nll: dict[str, list[float]]) -> Path:
    models = [{"name": m, "role": "teacher" if m == "teacher" else "student"} for m in correct]
    results = []
    for model, bits in correct.items():
        results.append({"model": model, "task": "passkey", "length": 256, "depth": 0.5, "metric": "exact_match",
                        "samples": len(bits), "successes": bits.count("1"), "correct": bits, "prompts": "f00d"})
        mean = sum(nll[model]) / len(nll[model])
        results.append({"model": model, "task": "perplexity", "metric": "perplexity", "length": 256,
                        "value": math.exp(mean), "nll": mean, "window_nll": nll[model], "windows": "w1"})
    meta = {"models": models, "command": "hybridize eval ...", "git_commit": "abc", "device": "cpu", "seed": 0,
            "prompts_per_cell": 40}
    path.write_text(json.dumps({"meta": meta, "results": results}))
    return path


def test_pairs_each_seed_and_averages(tmp_path, capsys):
    correct = {"teacher": "1" * 40, "x-s0": "1" * 30 + "0" * 10, "y-s0": "0" * 40,
               "x-s1": "1" * 20 + "0" * 20, "y-s1": "1" * 20 + "0" * 20}
    nll = {m: [2.0 + 0.01 * i for i in range(12)] for m in correct}
    nll["x-s0"] = [v - 0.5 for v in nll["y-s0"]]  # x better on every window in seed 0
    report = _report(tmp_path / "report.json", correct, nll)
    out = tmp_path / "seeds.json"
    assert seed_pairs.main([str(report), "--a", "x", "--b", "y", "--seeds", "0,1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    (row,) = rec["recall"]
    assert (row["task"], row["length"], row["teacher"]) == ("passkey", 256, 1.0)
    assert row["x_mean"] == (0.75 + 0.5) / 2 and row["y_mean"] == 0.25
    s0, s1 = row["seeds"]
    assert s0["p_a_vs_b"] < 1e-8 and s1["p_a_vs_b"] == 1.0  # seed 1: the same prompts right
    assert s0["p_b_vs_teacher"] < 1e-8 and s1["p_a_vs_teacher"] < 1e-5
    (ppl,) = rec["perplexity"]
    assert ppl["seeds"][0]["p_a_vs_b"] < 0.01 and ppl["seeds"][1]["p_a_vs_b"] == 1.0
    assert rec["eval"]["git_commit"] == "abc" and rec["summary"]["command"]


def test_names_the_models_the_report_lacks(tmp_path, capsys):
    correct = {"teacher": "1" * 4, "x-s0": "1" * 4, "y-s0": "0" * 4}
    report = _report(tmp_path / "report.json", correct, {m: [1.0] * 3 for m in correct})
    out = tmp_path / "seeds.json"
    assert seed_pairs.main([str(report), "--a", "x", "--b", "y", "--seeds", "0,1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "x-s1, y-s1" in err and "lacks" in err and not out.exists()
    assert seed_pairs.main([str(report), "--a", "x", "--b", "y", "--seeds", "0,one", "--out", str(out)]) == 2
    assert "--seeds must be integers" in capsys.readouterr().err


def test_a_report_without_the_teacher_is_one_line(tmp_path, capsys):
    correct = {"x-s0": "1" * 4, "y-s0": "0" * 4}
    report = _report(tmp_path / "report.json", correct, {m: [1.0] * 3 for m in correct})
    out = tmp_path / "seeds.json"
    assert seed_pairs.main([str(report), "--a", "x", "--b", "y", "--seeds", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "scored no teacher" in err and len(err.strip().splitlines()) == 1 and not out.exists()
