"""What a report says about its recall: each rate with its Wilson interval, pooled over depths as independent
prompts, and McNemar's test of two models on the same prompts, in report.json, report.md and the figure; computed on
hand-made entries whose counts are known."""

from __future__ import annotations

import json

import pytest
import torch

from hybridize.evaluation.compare import ALL, paired, paired_rows, pooled, recall_rows, report_pairs
from hybridize.evaluation.report import write_report
from hybridize.evaluation.runner import CPU_SAMPLES, GPU_PROMPTS_PER_CELL, EvalConfig, default_samples
from hybridize.metrics.stats import mcnemar_p, wilson_interval

# per (model, length, depth): one "1"/"0" per prompt, the same prompts for every model
CORRECT = {
    "teacher": {(256, 0.0): "1111111111", (256, 1.0): "1111111110", (512, 0.0): "1111100000", (512, 1.0): "1100000000"},
    "halo": {(256, 0.0): "1111111100", (256, 1.0): "1111100000", (512, 0.0): "1111111111", (512, 1.0): "1111111100"},
    "linear": {(256, 0.0): "0000000000", (256, 1.0): "1000000000", (512, 0.0): "0000000000", (512, 1.0): "0000000000"},
}
META = {"models": [{"name": "teacher", "role": "teacher", "path": "t", "attention_layers": 4},
                   {"name": "halo", "role": "student", "path": "h", "attention_layers": 1},
                   {"name": "linear", "role": "student", "path": "l", "attention_layers": 0}],
        "trained_context": 256, "command": "hybridize eval ...", "samples": 10}


def _entries(correct=CORRECT, task="passkey"):
    out = []
    for model, cells in correct.items():
        role = "teacher" if model == "teacher" else "student"
        for (length, depth), c in cells.items():
            k = c.count("1")
            lo, hi = wilson_interval(k, len(c))
            base = {"model": model, "role": role, "suite": "passkey", "task": task, "length": length, "depth": depth,
                    "samples": len(c), "n": len(c), "beyond_trained_context": length > 256}
            out.append({**base, "metric": "exact_match", "value": k / len(c), "successes": k, "ci_low": lo,
                        "ci_high": hi, "correct": c, "prompts": f"fp-{length}-{depth}"})
            out.append({**base, "metric": "ruler_match", "value": k / len(c)})
    return out


def _discordant(a, b, cells):
    xa = "".join(CORRECT[a][c] for c in cells)
    xb = "".join(CORRECT[b][c] for c in cells)
    return (sum(x == "1" and y == "0" for x, y in zip(xa, xb)), sum(x == "0" and y == "1" for x, y in zip(xa, xb)))


def test_pooled_rates_add_the_prompts_of_every_depth():
    e = _entries()
    r = pooled(e, "halo", "passkey", 512)
    assert (r["n"], r["successes"]) == (20, 18) and r["recall"] == 0.9
    assert (r["ci_low"], r["ci_high"]) == wilson_interval(18, 20)
    assert pooled(e, "halo", "passkey")["n"] == 40 and pooled(e, "halo", "passkey", depth=1.0)["n"] == 20
    assert pooled(e, "halo", "niah_single_1") is None
    # an entry without counts (older report.json files) is counted from its rate and n
    old = [{k: v for k, v in x.items() if k != "successes"} for x in e]
    assert pooled(old, "halo", "passkey", 512) == r


def test_paired_counts_the_same_prompts_and_tests_them():
    e = _entries()
    r = paired(e, "halo", "teacher", "passkey", 512)
    only_a, only_b = _discordant("halo", "teacher", [(512, 0.0), (512, 1.0)])
    assert (r["n"], r["only_a"], r["only_b"]) == (20, only_a, only_b) == (20, 11, 0)
    assert r["p"] == mcnemar_p(11, 0) < 0.001 and r["both"] + r["neither"] + only_a + only_b == 20
    assert paired(e, "halo", "teacher", "passkey", 256, 1.0)["only_b"] == 4
    assert paired(e, "halo", "teacher", "passkey")["n"] == 40
    moved = [dict(x, prompts="other") if x["model"] == "halo" and x["length"] == 256 else x for x in e]
    with pytest.raises(ValueError, match="scored on different prompts"):
        paired(moved, "halo", "teacher", "passkey")
    bare = [{k: v for k, v in x.items() if k != "correct"} for x in e]
    assert paired(bare, "halo", "teacher", "passkey") is None  # no per-prompt results: nothing to pair


def test_a_report_tests_students_against_the_teacher_and_hybrids_against_all_linear():
    assert report_pairs(META["models"]) == [("halo", "teacher"), ("linear", "teacher"), ("halo", "linear")]
    two = [*META["models"], {"name": "uniform", "role": "student", "path": "u", "attention_layers": 1}]
    assert report_pairs(two) == [("halo", "teacher"), ("linear", "teacher"), ("uniform", "teacher"), ("halo", "linear"),
                                 ("uniform", "linear"), ("halo", "uniform")]  # two hybrids: also against each other
    rows = paired_rows(_entries(), report_pairs(META["models"]))
    keys = [(r["a"], r["b"], r["length"], r["depth"]) for r in rows]
    assert keys[:7] == [("halo", "teacher", 256, 0.0), ("halo", "teacher", 256, 1.0), ("halo", "teacher", 512, 0.0),
                        ("halo", "teacher", 512, 1.0), ("halo", "teacher", 256, ALL), ("halo", "teacher", 512, ALL),
                        ("halo", "teacher", ALL, ALL)]
    assert len(rows) == 3 * 7
    assert [r["model"] for r in recall_rows(_entries(), ["teacher", "halo"])] == ["teacher"] * 2 + ["halo"] * 2


def test_report_json_md_and_figure_carry_intervals_and_p(tmp_path):
    written = write_report(tmp_path, _entries(), dict(META))
    assert {p.name for p in written} == {"report.json", "report.md", "recall_vs_length.png", "heatmap_passkey.png"}
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {(r["model"], r["length"]): r for r in report["recall"]}
    assert (rows["halo", 512]["n"], rows["halo", 512]["successes"]) == (20, 18)
    assert (rows["halo", 512]["ci_low"], rows["halo", 512]["ci_high"]) == pytest.approx(wilson_interval(18, 20))
    assert rows["halo", 512]["beyond_trained_context"] and not rows["halo", 256]["beyond_trained_context"]
    over = next(r for r in report["paired"]
                if (r["a"], r["b"], r["length"], r["depth"]) == ("halo", "linear", ALL, ALL))
    assert over["p"] == mcnemar_p(*_discordant("halo", "linear", list(CORRECT["halo"])))
    md = (tmp_path / "report.md").read_text()
    lo, hi = wilson_interval(18, 20)
    halo = f"90% [{100 * lo:.0f}, {100 * hi:.0f}] n=20"
    assert f"| passkey | 512† | 35% [18, 57] n=20 | {halo} | 0% [0, 16] n=20 |" in md
    assert "## Paired comparisons" in md and "| passkey | 512† | halo | teacher | 20 | 7 | 11 | 0 | 0.00098 |" in md
    assert "95% Wilson" in md
    png = (tmp_path / "recall_vs_length.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_default_prompts_per_cell_decide_on_a_gpu_and_stay_small_on_the_cpu():
    for depths in (1, 3, 5, 7):
        per_depth = default_samples(torch.device("cuda"), depths)
        assert per_depth * depths >= GPU_PROMPTS_PER_CELL >= 200 and (per_depth - 1) * depths < GPU_PROMPTS_PER_CELL
    assert default_samples(torch.device("cpu"), 3) == CPU_SAMPLES
    for kw, field in ((dict(windows=0), "windows must be >= 1"), (dict(teacher_sha256="abcdef12"), "teacher_sha256 "
                      "needs a teacher"), (dict(names=["a", "a"]), "names must give each")):
        with pytest.raises(ValueError, match=field):
            EvalConfig(models=["m"], out="o", **kw)


def test_perplexities_pair_over_the_same_windows_only():
    from hybridize.evaluation.compare import paired_perplexity

    def entry(model, nlls, windows="w1"):
        mean = sum(nlls) / len(nlls)
        return {"model": model, "metric": "perplexity", "length": 512, "value": 2.718281828 ** mean, "nll": mean,
                "window_nll": nlls, "windows": windows}

    a = entry("a", [2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
    b = entry("b", [2.1, 2.2, 2.3, 2.4, 2.5, 2.6])
    r = paired_perplexity([a, b], "a", "b", 512)
    assert r["n"] == 6 and r["p"] == pytest.approx(2 / 64) and r["ppl_a"] < r["ppl_b"]
    assert paired_perplexity([a, b], "a", "b", 1024) is None  # no such bucket
    assert paired_perplexity([a, {k: v for k, v in b.items() if k != "window_nll"}], "a", "b", 512) is None
    with pytest.raises(ValueError, match="different perplexity windows"):
        paired_perplexity([a, entry("b", [2.0] * 6, windows="w2")], "a", "b", 512)


def test_report_pairs_perplexity_on_the_same_windows(tmp_path):
    """Two models' per-window NLLs on the same windows: each pair's bucket perplexities and the paired sign-flip p in
    report.json (`paired_perplexity`) and report.md; windows that differ are refused."""
    import math

    from hybridize.evaluation.compare import paired_perplexity_rows
    from hybridize.metrics.stats import paired_permutation_p

    nll = {"teacher": [2.0, 2.1, 1.9, 2.2, 2.0, 2.05], "halo": [2.3, 2.4, 2.2, 2.5, 2.3, 2.35],
           "linear": [2.9, 3.0, 2.8, 3.1, 2.9, 2.95]}
    ppl = [{"model": m, "role": "teacher" if m == "teacher" else "student", "suite": "perplexity", "task": "perplexity",
            "metric": "perplexity", "length_from": 0, "length": 256, "depth": None, "value": math.exp(sum(v) / 6),
            "nll": sum(v) / 6, "window_nll": v, "windows": "fp-w", "beyond_trained_context": False}
           for m, v in nll.items()]
    entries = _entries() + ppl
    rows = paired_perplexity_rows(entries, report_pairs(META["models"]))
    assert [(r["a"], r["b"], r["length"], r["n"]) for r in rows] == [("halo", "teacher", 256, 6),
                                                                     ("linear", "teacher", 256, 6),
                                                                     ("halo", "linear", 256, 6)]
    assert rows[2]["p"] == paired_permutation_p(nll["halo"], nll["linear"])
    assert rows[2]["ppl_a"] == pytest.approx(math.exp(sum(nll["halo"]) / 6))
    write_report(tmp_path, entries, dict(META))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["paired_perplexity"] == rows
    md = (tmp_path / "report.md").read_text()
    assert "## Paired perplexity" in md and f"| 256 | halo | linear | 6 | {rows[2]['ppl_a']:.2f} |" in md
    moved = [dict(e, windows="other") if e.get("model") == "halo" and e["metric"] == "perplexity" else e
             for e in entries]
    with pytest.raises(ValueError, match="different perplexity windows"):
        paired_perplexity_rows(moved, [("halo", "teacher")])
