"""benchmarks/quality_grid.py: the grid on a tiny teacher, stopped at its deadline and resumed by later calls from
its state folder alone, its summary rows (one per conversion, task and length, with intervals, the teacher's recall
and McNemar's p on the same prompts), and its refusals (bad arguments, another teacher, other settings)."""

from __future__ import annotations

import json
import signal

import pytest

from conftest import load_script
from hybridize.provenance import weights_sha256
from teachers import TEXTS, make_teacher

SMALL = ["align.tokens=1024", "distill.tokens=1024", "finetune.tokens=512"]


@pytest.fixture(scope="module")
def qg():
    return load_script("benchmarks/quality_grid.py")


def _grid_inputs(tmp_path, monkeypatch):
    """Six documents of conversion data in tmp_path/data and a tiny teacher; its own cache."""
    monkeypatch.setenv("HYBRIDIZE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    for i in range(6):
        (tmp_path / "data" / f"doc{i}.txt").write_text(" ".join(TEXTS[i % len(TEXTS)] for _ in range(12)))
    return make_teacher("qwen3", tmp_path / "teacher")


def _argv(teacher, tmp_path, *extra):
    argv = ["--teacher", str(teacher), "--state", str(tmp_path / "state"), "--work", str(tmp_path / "work"),
            "--mixers", "lightning", "--seeds", "1", "--recipe", "smoke", "--data", str(tmp_path / "data"),
            "--eval-data", str(tmp_path / "data"), "--tasks", "passkey", "--lengths", "1", "--depths", "0.5",
            "--samples", "2", "--windows", "2", "--device", "cpu"]
    for kv in SMALL:
        argv += ["--set", kv]
    return argv + list(extra)


def test_the_grid_stops_resumes_and_summarises(qg, tmp_path, monkeypatch, capsys):
    teacher = _grid_inputs(tmp_path, monkeypatch)
    state = tmp_path / "state"
    # a deadline too short for anything: the call stops at once, with the teacher and settings recorded
    assert qg.main(_argv(teacher, tmp_path, "--selectors", "uniform", "--deadline", "1")) == qg.STOPPED
    first = json.loads((state / "state.json").read_text())
    assert first["teacher"]["weights_sha256"] == weights_sha256(teacher) and first["units"] == {}
    assert first["settings"]["samples"] == 2 and json.loads((state / "summary.json").read_text()) == []
    # the next call evaluates the teacher and converts uniform; a later one adds random and reuses stage 1
    assert qg.main(_argv(teacher, tmp_path, "--selectors", "uniform")) == 0
    align = tmp_path / "work" / "lightning" / "seed0" / "stage1" / "stages" / "align" / "done.json"
    before = align.read_text()
    capsys.readouterr()
    assert qg.main(_argv(teacher, tmp_path, "--selectors", "uniform,random")) == 0
    out = capsys.readouterr().out
    assert align.read_text() == before and "--- lightning/random/seed0" in out and "--- lightning/uniform" not in out
    done = json.loads((state / "state.json").read_text())
    assert list(done["units"]) == ["lightning/uniform/seed0", "lightning/random/seed0"] and len(done["calls"]) == 3
    units = done["units"].values()
    assert len({u["stage1_sha256"] for u in units}) == 1  # one stage 1 for both selectors of the seed
    assert not list((tmp_path / "work").rglob("checkpoints"))  # freed once each conversion was recorded

    summary = json.loads((state / "summary.json").read_text())
    rows = [r for r in summary if r["task"] != "perplexity"]
    assert [(r["selector"], r["seed"], r["task"], r["length"], r["length_tokens"]) for r in rows] == \
        [("uniform", 0, "passkey", 1.0, 256), ("random", 0, "passkey", 1.0, 256)]
    # perplexity on the teacher's windows: one row per conversion and bucket, an interval, paired p's
    ppl = [r for r in summary if r["task"] == "perplexity"]
    assert [(r["selector"], r["length_tokens"], r["length_from"], r["n"]) for r in ppl] == \
        [("uniform", 256, 0, 2), ("random", 256, 0, 2)]
    for r in ppl:
        assert r["ci_low"] <= r["perplexity"] <= r["ci_high"] and r["perplexity"] > 1
        assert r["teacher_ci_low"] <= r["teacher_perplexity"] <= r["teacher_ci_high"]
        assert r["p_vs_teacher"] in (0.5, 1.0)  # 2 windows: the exact sign-flip test has 4 patterns
    assert "p_vs_uniform" in ppl[1] and "p_vs_uniform" not in ppl[0]
    required = {"teacher", "mixer", "budget", "selector", "seed", "task", "length", "n", "recall", "ci_low",
                "ci_high", "teacher_recall", "tokens", "select_gpu_s"}
    for r in rows:
        assert required <= set(r) and r["teacher"] == "teacher" and r["teacher_sha256"] == weights_sha256(teacher)
        assert r["n"] == r["teacher_n"] == 2 and r["ci_low"] <= r["recall"] <= r["ci_high"] and r["budget"] == 0.25
        assert 0 < r["p_vs_teacher"] <= 1 and r["tokens"] == 1024 + 1024 + 512
    assert "p_vs_uniform" in rows[1] and "p_vs_uniform" not in rows[0]
    md = (state / "summary.md").read_text()
    assert "| lightning | random |" in md and "passkey @ 1x" in md and "| teacher | |" in md
    # seed 0 (--stage-seeds' default): recall after each stage on the teacher's prompts; one aligned model per seed
    uniform, random_ = done["units"]["lightning/uniform/seed0"], done["units"]["lightning/random/seed0"]
    assert list(uniform["stages"]) == list(random_["stages"]) == ["aligned", "selected", "distilled"]
    assert uniform["stages"]["aligned"] == random_["stages"]["aligned"]
    assert not (tmp_path / "work" / "lightning" / "seed0" / "random" / "stage-eval" / "models" / "aligned").exists()
    every = ("teacher", "aligned", "selected", "distilled", "finetuned")
    rows_all = json.loads((state / "stages.json").read_text())
    stages = [r for r in rows_all if r["task"] != "perplexity"]
    assert [(r["selector"], r["stage"]) for r in stages] == [(sel, st) for sel in ("uniform", "random") for st in every]
    assert all(0 <= r["p_vs_teacher"] <= 1 for r in stages if r["stage"] != "teacher")
    assert all(("p_vs_previous" in r) == (r["stage"] not in ("teacher", "aligned")) for r in stages)
    assert all(r["n"] == 2 and r["ci_low"] <= r["recall"] <= r["ci_high"] for r in stages)
    assert "## Recall after each stage" in md and "| lightning/random/seed0 | selected |" in md
    # perplexity after each stage on the teacher's windows: the finetuned row is the conversion's own, aligned shared
    assert list(uniform["stage_perplexity"]) == ["aligned", "selected", "distilled"]
    assert uniform["stage_perplexity"]["aligned"] == random_["stage_perplexity"]["aligned"]
    ppl_rows = [r for r in rows_all if r["task"] == "perplexity"]
    buckets = [e["length"] for e in done["teacher"]["perplexity"]]
    assert [(r["selector"], r["length_tokens"], r["stage"]) for r in ppl_rows] == [
        (sel, b, st) for sel in ("uniform", "random") for b in buckets for st in every]
    fin = [r for r in ppl_rows if r["stage"] == "finetuned" and r["selector"] == "uniform"]
    assert [r["perplexity"] for r in fin] == [e["value"] for e in uniform["perplexity"]]
    assert all(r["ci_low"] <= r["perplexity"] <= r["ci_high"] and r["n"] == 2 for r in ppl_rows)
    assert all(("p_vs_previous" in r) == (r["stage"] not in ("teacher", "aligned")) for r in ppl_rows)
    assert "## Perplexity after each stage" in md and "| lightning/uniform/seed0 | distilled | " in md.split(
        "## Perplexity after each stage")[1]
    assert "Perplexity on 2 held-out windows" in md and "tokens 1-256 (1x)" in md
    # summary.json again from state.json alone
    (state / "summary.json").unlink()
    assert qg.main(["--state", str(state), "--summary-only"]) == 0
    assert json.loads((state / "summary.json").read_text()) == summary

    # a state from before perplexity (no `windows` setting, none for the teacher or the conversions): the next call
    # takes it, measures the teacher's perplexity alone, and converts nothing again
    old = json.loads((state / "state.json").read_text())
    del old["settings"]["windows"], old["teacher"]["perplexity"]
    for u in old["units"].values():
        del u["perplexity"]
    (state / "state.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert qg.main(_argv(teacher, tmp_path, "--selectors", "uniform,random")) == 0
    assert "--- lightning" not in capsys.readouterr().out
    again = json.loads((state / "state.json").read_text())
    assert again["settings"]["windows"] == 2 and len(again["teacher"]["perplexity"]) == 1
    assert [r for r in json.loads((state / "summary.json").read_text()) if r["task"] == "perplexity"] == []

    # the intra-layer grid of the same teacher: its own state and conversions, the teacher's same prompts
    intra = tmp_path / "state-intra"
    assert qg.main([*_argv(teacher, tmp_path, "--selectors", "uniform", "--fusion", "intra"), "--state", str(intra)]) == 0
    unit = json.loads((intra / "state.json").read_text())["units"]["lightning/uniform/seed0"]
    assert unit["groups"] == [[], [1], [], [1]] and unit["layers"] == []  # 25% of 4 layers x 2 KV-head groups
    row, ppl_row = json.loads((intra / "summary.json").read_text())
    assert row["fusion"] == "intra" and rows[0]["fusion"] == "inter" and row["n"] == rows[0]["n"]
    assert ppl_row["task"] == "perplexity" and ppl_row["teacher_perplexity"] == ppl[0]["teacher_perplexity"]

    # refusals, each one line before any work: another teacher, other settings
    other = make_teacher("qwen3", tmp_path / "other", seed=1)
    capsys.readouterr()
    for argv, message in ((_argv(other, tmp_path), "was made with"),
                          (_argv(teacher, tmp_path, "--teacher-sha256", "00000000"), "not the expected 00000000"),
                          (_argv(teacher, tmp_path, "--depths", "0.25"), "holds a grid of other settings")):
        assert qg.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("quality_grid: error: ") and message in err and err.count("\n") == 1, err


def _unit(mixer, selector, align, select, distill, finetune, evaluation, stage_eval=None):
    u = {"mixer": mixer, "selector": selector, "select_seconds": select, "eval_seconds": evaluation,
         "stage_seconds": {"align": align, "distill": distill, "finetune": finetune}}
    return u if stage_eval is None else {**u, "stage_eval_seconds": stage_eval}


def test_the_estimate_takes_each_part_from_what_was_measured(qg):
    d = qg.DEFAULT_SECONDS
    assert qg.estimate_seconds([], "gla", "halo", stage1_done=False, stage_table=False) == \
        d["stage1"] + d["select"]["halo"] + d["train"] + d["eval"] + d["overhead"]
    assert qg.estimate_seconds([], "gla", "halo", stage1_done=False, stage_table=False, halo_evaluations=4) == \
        d["stage1"] + 4 * d["select"]["halo"] + d["train"] + d["eval"] + d["overhead"]
    # GatedDeltaNet's uniform conversions measured (stage 1 with its kernels' first compile), Lightning's HALO too:
    # HALO on GatedDeltaNet takes GatedDeltaNet's stage 1, training and evaluation, and Lightning's selection scaled
    # by the two evaluations' ratio
    units = [_unit("gated_deltanet", "uniform", 194, 0, 109, 24, 109, stage_eval=60),
             _unit("gated_deltanet", "uniform", 194, 0, 109, 23, 108),
             _unit("lightning", "halo", 41, 18, 100, 21, 31)]
    halo = 18 * 109 / 31
    assert halo > d["select"]["halo"]
    fresh = qg.estimate_seconds(units, "gated_deltanet", "halo", stage1_done=False, stage_table=True)
    assert fresh == pytest.approx(194 + halo + 133 + 109 + 60 + d["overhead"])
    assert fresh > 518  # longer than the measured uniform conversion with its stage table, which it contains
    assert qg.estimate_seconds(units, "gated_deltanet", "halo", stage1_done=True, stage_table=False) == \
        pytest.approx(halo + 133 + 109 + d["overhead"])
    # selection at larger sizes than the recipe's (PUBLISHED=1): the default grows with them
    published = ["select.flashmorph_tokens=20000000", "select.halo_examples=1024", "select.halo_lm_sequences=2048"]
    assert qg.selection_scale("gpu-small", [], "flashmorph") == 1.0
    assert qg.selection_scale("gpu-small", published, "flashmorph") == pytest.approx(20_000_000 / 1_228_800)
    assert qg.selection_scale("gpu-small", published, "halo") == pytest.approx(32)
    assert qg.selection_scale("gpu-small", published, "uniform") == 1.0
    assert qg.estimate_seconds([], "gla", "flashmorph", stage1_done=True, stage_table=False, select_scale=16) == \
        16 * d["select"]["flashmorph"] + d["train"] + d["eval"] + d["overhead"]
    # a measured selection of the mixer itself wins over any scaling
    units.append(_unit("gated_deltanet", "halo", 35, 30, 105, 22, 100))
    assert qg.estimate_seconds(units, "gated_deltanet", "halo", stage1_done=True, stage_table=False) == \
        pytest.approx(30 + 133 + 109 + d["overhead"])


def test_a_conversion_longer_than_what_is_left_runs_its_stage1_alone(qg, tmp_path, monkeypatch, capsys):
    """Where a whole conversion does not fit what is left of the call (though it would fit a whole one) but its
    stage 1 does, the call runs stage 1 and stops; the next call on the machine converts without running it again."""
    teacher = _grid_inputs(tmp_path, monkeypatch)
    argv = _argv(teacher, tmp_path, "--selectors", "uniform")
    monkeypatch.setitem(qg.DEFAULT_SECONDS, "train", 10_000)
    monkeypatch.setattr(qg.Grid, "oversized", lambda self, need: False)
    assert qg.main([*argv, "--deadline", "3000"]) == qg.STOPPED
    out = capsys.readouterr().out
    assert "stopped before lightning/uniform/seed0" in out and "--- stage 1 of lightning/seed0 alone" in out
    align = tmp_path / "work" / "lightning" / "seed0" / "stage1" / "stages" / "align" / "done.json"
    assert align.is_file() and json.loads((tmp_path / "state" / "state.json").read_text())["units"] == {}
    before = align.read_text()
    monkeypatch.setitem(qg.DEFAULT_SECONDS, "train", 90)
    assert qg.main(argv) == 0
    assert align.read_text() == before
    assert list(json.loads((tmp_path / "state" / "state.json").read_text())["units"]) == ["lightning/uniform/seed0"]


def test_a_conversion_longer_than_any_call_starts_at_a_calls_start(qg, tmp_path, monkeypatch, capsys):
    """A conversion estimated longer than the whole call would never fit one: a call that has just begun starts it
    anyway, under a timer that stops it at the deadline (here it finishes first)."""
    teacher = _grid_inputs(tmp_path, monkeypatch)
    monkeypatch.setitem(qg.DEFAULT_SECONDS, "train", 10_000)
    assert qg.main([*_argv(teacher, tmp_path, "--selectors", "uniform"), "--deadline", "3000"]) == 0
    out = capsys.readouterr().out
    assert "--- lightning/uniform/seed0" in out and "longer than any call" in out
    assert list(json.loads((tmp_path / "state" / "state.json").read_text())["units"]) == ["lightning/uniform/seed0"]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_deadline_timer_asks_the_training_loop_to_stop(qg):
    """`stopped_at_deadline` sends this process a SIGTERM once the deadline (less its margin) passes, which a
    training loop inside takes as a stop at its step (`stop_on_signals`); the timer and handler go afterwards."""
    import time
    import types

    from hybridize.distill.loop import stop_on_signals

    grid = types.SimpleNamespace(left=lambda: 1.0)
    before = signal.getsignal(signal.SIGALRM)
    with stop_on_signals() as stop:
        with qg.Grid.stopped_at_deadline(grid, margin=0.5):
            until = time.monotonic() + 10
            while not stop and time.monotonic() < until:
                time.sleep(0.01)
    assert stop == [signal.SIGTERM]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) == before


def test_lanes_give_the_conversions_of_one_process(qg, tmp_path, monkeypatch, capsys):
    """--jobs 2: the two seeds' conversions in two lane processes, merged into the state as each lands; the same
    stage 1, layers and answers to the same prompts as the grid converted one after another in this process."""
    teacher = _grid_inputs(tmp_path, monkeypatch)
    one = ["--selectors", "uniform", "--seeds", "2", "--set", "align.tokens=512", "--set", "distill.tokens=512",
           "--set", "finetune.tokens=256"]
    assert qg.main([*_argv(teacher, tmp_path, *one), "--state", str(tmp_path / "seq"),
                    "--work", str(tmp_path / "work-seq")]) == 0
    capsys.readouterr()
    assert qg.main([*_argv(teacher, tmp_path, *one), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "--- lane lightning/seed0" in out and "--- lane lightning/seed1" in out and "grid complete" in out
    seq = json.loads((tmp_path / "seq" / "state.json").read_text())["units"]
    lanes = json.loads((tmp_path / "state" / "state.json").read_text())["units"]
    assert sorted(lanes) == sorted(seq) == ["lightning/uniform/seed0", "lightning/uniform/seed1"]
    for key in seq:
        assert lanes[key]["lanes"] == 2 and seq[key]["lanes"] == 1
        assert lanes[key]["stage1_sha256"] == seq[key]["stage1_sha256"], key
        assert lanes[key]["layers"] == seq[key]["layers"] and lanes[key]["entries"] == seq[key]["entries"], key
        assert lanes[key]["perplexity"] == seq[key]["perplexity"], key
    for seed in (0, 1):
        log = (tmp_path / "work" / "lanes" / f"lightning-seed{seed}" / "lane.log").read_text()
        assert f"--- lightning/uniform/seed{seed}" in log and f"seed{1 - seed}" not in log.split("grid complete")[0]
    rows = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert [(r["seed"], r["task"], r["n"], r["lanes"]) for r in rows] == \
        [(0, "passkey", 2, 2), (0, "perplexity", 2, 2), (1, "passkey", 2, 2), (1, "perplexity", 2, 2)]


@pytest.mark.parametrize("extra, field", [
    (["--mixers", "lightning,softmax"], "--mixers"), (["--selectors", "uniform,uniform"], "--selectors"),
    (["--tasks", "hellaswag"], "--tasks"), (["--seeds", "0"], "--seeds"), (["--lengths", "1,x"], "--lengths"),
    (["--depths", "1.5"], "--depths"), (["--samples", "0"], "--samples"), (["--deadline", "0"], "--deadline"),
    (["--set", "distill.lr=-1"], "distill.lr"), (["--fusion", "cross"], "--fusion"),
    (["--fusion", "intra", "--selectors", "uniform,kl_guided"], "--selectors"), (["--jobs", "0"], "--jobs"),
    (["--windows", "1"], "--windows"), (["--stage-seeds", "0,x"], "--stage-seeds"),
])
def test_bad_arguments_name_their_field(qg, tmp_path, capsys, extra, field):
    assert qg.main(_argv(tmp_path / "teacher", tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("quality_grid: error: ") and field in err and err.count("\n") == 1, err
    assert not (tmp_path / "state").exists()
