"""benchmarks/compare_selectors.py as the GPU plan runs it: selectors converted by separate calls (--no-eval), then
one call that evaluates them together with the all-linear student, with each row's decode state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import load_script
from teachers import TEXTS, make_teacher


def _module():
    return load_script("benchmarks/compare_selectors.py")


def test_split_conversions_then_one_evaluation_with_the_all_linear_student(tmp_path):
    os.environ["HYBRIDIZE_CACHE"] = str(tmp_path / "cache")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"doc{i}.txt").write_text(" ".join(TEXTS[i % len(TEXTS)] for _ in range(12)))
    teacher = make_teacher("qwen3", tmp_path / "teacher")
    cs, out = _module(), tmp_path / "sel"
    args = dict(teacher=teacher, out=out, recipe_name="smoke", budget="0.25", lengths=[320], samples=1, device="cpu",
                overrides=[], data=[str(data)], eval_data=str(data))
    # two "GPUs": each converts its selectors, nothing is evaluated and no table is written
    assert cs.run(selectors=["uniform"], evaluate=False, **args) is None
    assert cs.run(selectors=["random"], evaluate=False, **args) is None
    assert (out / "uniform" / "config.json").is_file() and (out / "random" / "config.json").is_file()
    assert not (out / "selectors.json").exists()
    stage1 = json.loads((out / "stage1" / "stages" / "align" / "done.json").read_text())
    # the evaluating call reuses every finished stage (stage 1 is not trained again) and adds the all-linear row
    record = cs.run(selectors=["uniform", "random"], all_linear=True, **args)
    assert json.loads((out / "stage1" / "stages" / "align" / "done.json").read_text()) == stage1
    rows = {r["selector"]: r for r in record["rows"]}
    assert list(rows) == ["uniform", "random", cs.ALL_LINEAR]
    assert rows[cs.ALL_LINEAR]["layers"] == [] and len(rows["uniform"]["layers"]) == 1
    # decode state at 320 tokens: the all-linear student < one attention layer of four < the teacher's KV cache
    s = {name: r["state_bytes@320"] for name, r in rows.items()}
    teacher_kv = record["teacher_results"]["state_bytes@320"]
    assert s[cs.ALL_LINEAR] < s["uniform"] < teacher_kv, (s, teacher_kv)
    assert teacher_kv == 4 * 2 * 2 * 16 * 320 * 2  # layers x (K, V) x kv heads x head_dim x tokens x bf16 bytes
    assert record["eval_data"] == str(data)
    assert (out / "selectors.md").read_text().count("\n| ") == 4  # teacher + three rows
    report = json.loads((out / "report" / "report.json").read_text())
    assert {e["model"] for e in report["results"]} >= {"uniform", "random", cs.ALL_LINEAR}
    # every score with its interval and n, and McNemar's p against the teacher and the first selector (uniform)
    assert record["teacher_sha256"] == report["meta"]["models"][0]["weights_sha256"]
    lo, hi, n = rows["random"]["intervals"]["passkey@320"]
    assert n == 3 and lo <= rows["random"]["passkey@320"] <= hi and record["prompts_per_cell"] == 3
    assert set(rows["random"]["p_vs"]) == {"teacher", "uniform"} and set(rows["uniform"]["p_vs"]) == {"teacher"}
    assert 0 < rows["random"]["p_vs"]["uniform"]["passkey@320"] <= 1
    # --until distill: the hybrids stop after distill; in a folder that finetuned them, the distilled model is the
    # one exported (and evaluated), not the finetuned one
    import pytest
    import torch
    from safetensors.torch import load_file

    assert cs.run(selectors=["uniform"], until="distill", evaluate=False, **args) is None
    exported = load_file(out / "uniform" / "model.safetensors")
    for stage, same in (("distill", True), ("finetune", False)):
        saved = load_file(next((out / "uniform" / "stages" / stage / "model").glob("*.safetensors")))
        differ = [k for k in exported if not torch.equal(exported[k], saved[k].to(exported[k].dtype))]
        assert (not differ) == same, (stage, differ[:3])
    assert "| finetune | not in this model" in (out / "uniform" / "README.md").read_text()
    with pytest.raises(SystemExit, match="until must be one of distill, finetune, got 'align'"):
        cs.run(selectors=["uniform"], until="align", **args)
    out2 = tmp_path / "sel-distill"
    assert cs.run(selectors=["uniform"], evaluate=False, until="distill", **{**args, "out": out2}) is None
    assert (out2 / "uniform" / "stages" / "distill" / "done.json").is_file()
    assert not (out2 / "uniform" / "stages" / "finetune").exists() and (out2 / "uniform" / "config.json").is_file()


def test_recall_grid_panels_keep_each_teacher_with_its_runs(tmp_path):
    """benchmarks/recall_grid.py: runs of one mixer, budget and teacher share a panel (a later FlashMorph
    run joins its row), a run of another teacher gets its own panel with its own teacher bars, selectors are ordered
    teacher first, mismatched lengths in one panel are an error, and the CLI writes the plot or names a missing file."""
    import pytest

    mod = load_script("benchmarks/recall_grid.py")

    def rec(teacher_passkey, rows, mixer="gla", lengths=(8, 16)):
        return {"teacher": "/t", "budget": 0.25, "overrides": [f"mixer={mixer}"], "lengths": list(lengths),
                "teacher_results": {f"passkey@{n}": teacher_passkey for n in lengths},
                "rows": [{"selector": s, **{f"passkey@{n}": v for n in lengths}} for s, v in rows]}

    a = rec(1.0, [("halo", 0.5), ("uniform", 0.0)])
    b = rec(1.0, [("flashmorph", 0.25)])
    c = rec(0.5, [("uniform", 0.125)])  # another teacher (different results), same mixer and budget
    ps = mod.panels([a, b, c, rec(1.0, [("uniform", 0.0)], mixer="lightning")])
    assert [p["title"] for p in ps] == ["gla 25%", "gla 25%", "lightning 25%"]
    assert list(ps[0]["bars"]) == ["teacher", "uniform", "halo", "flashmorph"]
    assert ps[0]["bars"]["flashmorph"]["passkey"] == [0.25, 0.25]
    assert ps[1]["bars"]["teacher"]["passkey"] == [0.5, 0.5] and list(ps[1]["bars"]) == ["teacher", "uniform"]
    assert ps[0]["bars"]["halo"]["niah_single_2"] == [None, None]  # a task a run did not score: no bar
    with pytest.raises(ValueError, match="cannot share a panel"):
        mod.panels([a, rec(1.0, [("halo", 0.5)], lengths=(8, 32)) | {"teacher_results": a["teacher_results"]}])

    files = []
    for i, r in enumerate((a, b)):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(r))
    mod.main([*map(str, files), "--out", str(tmp_path / "grid.png")])
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no such selectors.json: .*missing.json"):
        mod.main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.png")])



def test_seeds_run_one_comparison_per_seed_and_report_mean_and_spread(tmp_path, monkeypatch):
    """--seeds 3: one comparison per conversion seed (its folder, `seed=k`), then each selector's mean, standard
    deviation, min and max over them in seeds.json / seeds.md. The comparisons are stand-ins here: the test above
    runs a real one."""
    import pytest

    cs, calls = _module(), []

    def fake(out, overrides, **kw):
        k = int(overrides[-1].removeprefix("seed="))
        calls.append((out.name, overrides, kw["teacher_sha256"]))
        rows = [{"selector": "uniform", "layers": [3], "passkey@8": 0.5, "selection_seconds": 0.0},
                {"selector": "halo", "layers": [k], "passkey@8": [0.25, 0.75, 0.5][k], "selection_seconds": 10.0 + k,
                 "perplexity_ratio@8": 1.0}]
        return {"seed": k, "teacher": "t", "teacher_sha256": "ab" * 32, "recipe": "smoke", "overrides": overrides,
                "budget": "0.25", "device": "cpu", "lengths": [8], "prompts_per_cell": 6, "rows": rows,
                "teacher_results": {"passkey@8": 1.0}}

    monkeypatch.setattr(cs, "run_one", fake)
    args = dict(teacher=Path("t"), out=tmp_path, recipe_name="smoke", budget="0.25", selectors=["uniform", "halo"],
                lengths=[8], samples=None, device="cpu", overrides=["mixer=gla"], teacher_sha256="abababab")
    for bad in (0, 1.5):
        with pytest.raises(SystemExit, match="seeds must be an integer >= 1"):
            cs.run(seeds=bad, **args)
    record = cs.run(seeds=3, **args)
    assert calls == [(f"seed{k}", ["mixer=gla", f"seed={k}"], "abababab") for k in range(3)]
    assert record == json.loads((tmp_path / "seeds.json").read_text()) and record["seeds"] == [0, 1, 2]
    halo = next(r for r in record["rows"] if r["selector"] == "halo")
    assert halo["passkey@8"] == {"mean": 0.5, "sd": 0.25, "min": 0.25, "max": 0.75, "values": [0.25, 0.75, 0.5]}
    assert halo["selection_seconds"]["mean"] == 11.0 and halo["layers"] == [[0], [1], [2]]
    uniform = next(r for r in record["rows"] if r["selector"] == "uniform")
    assert uniform["passkey@8"]["sd"] == 0.0 and uniform["perplexity_ratio@8"] is None
    assert record["teacher_results"]["passkey@8"]["mean"] == 1.0
    md = (tmp_path / "seeds.md").read_text()
    assert "| halo | 50% ± 25 [25-75] |" in md and "| teacher | 100% ± 0 [100-100] |" in md
    assert cs.run(seeds=3, evaluate=False, **args) is None
