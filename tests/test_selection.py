"""Layer selectors: the registry, budgets, HALO's formula, the morphable model, every selector on tiny teachers, a
hand-built teacher whose only retrieving layer each learned selector must find, the recipe section, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hybridize  # noqa: F401
import retrieval_teacher
from conftest import assert_close
from hybridize.distill.recipe import builtin_recipes, save_recipe
from hybridize.pipeline import load_recipe, recipe_from_dict
from hybridize.pipeline.stages import Conversion, align
from hybridize.selection import (SELECTORS, SelectionContext, get_selector, resolve_budget, run_selection,
                                 swapped_model, top_k, uniform_layers)
from hybridize.data.synthetic import FillerTokens, generate, task_config
from hybridize.selection.flashmorph import MorphableModel, PasskeyBatches, answer_positions, teacher_states
from hybridize.selection.halo import halo_scores
from hybridize.selection.random_layers import random_layers
from teachers import TEXTS, make_teacher, make_tokenizer

LEARNED = ("halo", "kl_guided", "flashmorph")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HYBRIDIZE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Conversion:
    """A tiny Qwen3 teacher (4 layers) after stage 1 (smoke recipe), on a small local corpus."""
    base = tmp_path_factory.mktemp("select")
    os.environ["HYBRIDIZE_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    data = base / "data"
    data.mkdir()
    for i in range(6):
        (data / f"doc{i}.txt").write_text(" ".join(TEXTS[i % len(TEXTS)] for _ in range(12)))
    conv = Conversion(make_teacher("qwen3", base / "teacher"), base / "out", load_recipe("smoke"), data=str(data),
                      device="cpu")
    align(conv)
    return conv


def _context(conv: Conversion, run_dir: Path, aligned: bool = True) -> SelectionContext:
    teacher = conv.load_teacher()
    return SelectionContext(teacher=teacher.model, tokenizer=teacher.tokenizer, recipe=conv.recipe, run_dir=run_dir,
                            device="cpu", data=conv.data,
                            aligned_dir=conv.stage_dir("align") / "model" if aligned else None)


def test_halo_says_when_its_tie_break_chose():
    """The small teacher's run (results/gpu/selectors-small-retrieving/): 9 of 12 layers at the cap, 3 kept."""
    from hybridize.selection.halo import CAP, tie_note

    scores = [0.05, CAP, CAP, CAP, CAP, 0.0, 8.2, CAP, CAP, CAP, CAP, CAP]
    note = tie_note(scores, [1, 8, 10])
    assert note is not None and note.startswith("9 layers (1, 2, 3, 4, 7, 8, 9, 10, 11) score the cap (50) and 3")
    assert tie_note([0.0, 3.0, 2.0, CAP], [1, 3]) is None  # the score decided
    assert "score 2 and 1 of them" in tie_note([1.0, 2.0, 2.0], [1])


def test_halo_cap_note_names_the_layer_left_out():
    """The GLA 12.5% selection of 2026-12-01 (results/gpu/mixers-small-12-gla/, its R and C to 4 digits): layers 1 and
    2 score the cap on a near-zero LM cost and are kept; layer 4, which lost the most recall, is left out."""
    from hybridize.selection.base import top_k
    from hybridize.selection.halo import CAP, cap_note, halo_scores

    R = [0.5521, 0.7812, 0.6771, 0.7708, 0.3854, 0.8021, 0.7917, 0.8021, 0.8021, 0.8021, 0.8021, 0.8021]
    C = [-0.3306, -0.02798, -0.03022, -0.03324, -0.04548, -0.02872, -0.03227, -0.03065, -0.03136, -0.03075,
         -0.03075, -0.02809]
    scores = halo_scores(R, C)
    layers = top_k(scores, 2, tiebreak=[(max(R) - r, max(C) - c) for r, c in zip(R, C)])
    assert layers == [1, 2]
    note = cap_note(R, C, scores, layers)
    assert note is not None and "layer 4, left out" in note and "1 (recall lost 0.0209" in note, note
    # a capped layer kept, but no layer left out lost more recall than it: nothing to say
    assert cap_note([0.2, 0.9, 0.8], [-1.0, -2.0, -1.1], [CAP, 0.0, 1.0], [0]) is None
    # no capped layer kept: nothing to say
    assert cap_note(R, C, scores, [0, 4]) is None


def test_halo_scores_match_a_hand_computation():
    R = [0.9, 0.5, 0.9, 0.2, 0.6]
    C = [-2.0, -2.5, -2.1, -2.0, -2.01]
    # max R = 0.9, max C = -2.0:
    #   0: 0.0 / (0.0 + eps)  = 0           (loses nothing)
    #   1: 0.4 / (0.5 + eps)  = 0.8
    #   2: 0.0 / (0.1 + eps)  = 0
    #   3: 0.7 / (0.0 + eps)  = 7e9 -> 50   (loses recall at no LM cost: the cap)
    #   4: 0.3 / (0.01 + eps) = 30 (just under: eps in the denominator)
    s = halo_scores(R, C)
    assert s == pytest.approx([0.0, 0.8, 0.0, 50.0, 30.0], rel=1e-7, abs=0)
    assert s[4] < 30.0 and s[3] == 50.0
    assert top_k(s, 2) == [3, 4] and top_k(s, 3) == [1, 3, 4]
    assert halo_scores([0.3, 0.3], [-1.0, -1.0]) == [0.0, 0.0]  # 0 / eps
    assert halo_scores([1.0, 0.0], [0.0, 0.0], eps=0.5) == [0.0, 2.0]  # 1 / (0 + 0.5)
    assert halo_scores([1.0, 0.0], [0.0, 0.0], cap=7.0) == [0.0, 7.0]
    with pytest.raises(ValueError, match="one value per layer"):
        halo_scores([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        halo_scores([1.0, math.nan], [1.0, 2.0])


def test_top_k_breaks_ties_by_the_tiebreak_then_the_index():
    assert top_k([0.0, 0.0, 1.0, 0.0], 2) == [0, 2]
    assert top_k([0.0, 0.0, 1.0, 0.0], 2, tiebreak=[0.1, 0.5, 0.0, 0.3]) == [1, 2]
    assert top_k([0.0, 0.0, 0.0], 1, tiebreak=[(1.0, 0.0), (1.0, 2.0), (0.0, 9.0)]) == [1]


def test_registry_and_budgets_give_clear_errors():
    assert set(SELECTORS) == {"uniform", "random", "halo", "kl_guided", "flashmorph"}
    with pytest.raises(ValueError, match=r"unknown selector 'x'; available: \['flashmorph', 'halo', 'kl_guided', "
                                         r"'random', 'uniform'\]"):
        get_selector("x")
    with pytest.raises(ValueError, match="unknown selector 'best'; available"):
        load_recipe("smoke", ["selector=best"])
    for budget in (0, "0", -1, 0.0):
        with pytest.raises(ValueError, match="budget must be a fraction in \\(0, 1\\) or a whole layer count"):
            resolve_budget(budget, 4)
        with pytest.raises(ValueError, match="budget must be a fraction in \\(0, 1\\) or a whole layer count"):
            load_recipe("smoke", [f"budget={budget}"])
    with pytest.raises(ValueError, match="whole layer count in 1..4, got 5"):
        resolve_budget(5, 4)
    with pytest.raises(ValueError, match="whole layer count in 1..4, got 2.5"):
        resolve_budget(2.5, 4)
    with pytest.raises(ValueError, match="whole layer count >= 1, got 2.5"):
        load_recipe("smoke", ["budget=2.5"])
    with pytest.raises(ValueError, match="rounds to 0 attention layers"):
        resolve_budget(0.1, 4)
    assert resolve_budget(0.25, 28) == 7 and resolve_budget("3", 4) == 3 and resolve_budget(4, 4) == 4


def test_uniform_and_random():
    assert uniform_layers(28, 7) == [3, 7, 11, 15, 19, 23, 27]
    assert 0 not in uniform_layers(12, 4)
    a, draws = random_layers(28, 7, seed=3)
    assert a == random_layers(28, 7, seed=3)[0] and len(set(a)) == 7 and all(0 <= i < 28 for i in a)
    assert a != random_layers(28, 7, seed=4)[0]
    assert set(random_layers(28, 3, seed=3)[0]) <= set(a)  # a larger budget keeps the smaller one's layers
    assert sorted(range(28), key=lambda i: -draws[i])[:7] == sorted(a, key=lambda i: -draws[i])


def test_learned_selectors_need_stage_1(stage1, tmp_path):
    ctx = _context(stage1, tmp_path, aligned=False)
    for name in LEARNED:
        with pytest.raises(ValueError, match=f"selector '{name}' swaps in the stage-1 aligned mixers.*run "
                                             "`hybridize align` first"):
            run_selection(name, ctx, 1)
    assert not (tmp_path / "selection.json").exists()


def test_morphable_model_is_the_teacher_at_one_and_the_swap_at_zero(stage1):
    """Gates all 1: the teacher's hidden states exactly. Gate i = 0: the HALO swap model (a real HybridForCausalLM
    with layer i's aligned mixer), so both selectors swap the same thing."""
    teacher = stage1.load_teacher().model
    ctx = _context(stage1, Path("unused"))
    aligned = ctx.aligned("test")
    morph = MorphableModel(teacher, aligned)
    ids = torch.randint(0, 300, (2, 23))
    with torch.no_grad():
        for a, b in zip(morph(ids), teacher_states(teacher, ids)):
            assert_close(a, b, "gates = 1")
        for i in range(4):
            gates = torch.ones(4)
            gates[i] = 0.0
            swap = swapped_model(teacher, aligned, [i])
            assert swap.config.layer_types[i] == "linear_attention" and len(swap.config.attention_layers) == 3
            assert_close(teacher.model.norm(morph(ids, gates=gates)[-1]), swap.model(ids).last_hidden_state,
                         f"gate {i} = 0")
    assert [n for n, p in morph.named_parameters() if p.requires_grad] == ["gates"]


def test_answer_positions_are_where_the_answer_is_predicted():
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100, -100, 9]])
    assert answer_positions(labels).tolist() == [[False, False, True, True, False, False, True, False]]


def test_passkey_batches_are_padded_after_each_example_and_resumable():
    tok = make_tokenizer()
    filler = FillerTokens.build(tok, TEXTS)
    options = {"num_passkeys": 2, "words_per_passkey": 3}

    def make(lengths=(256, 320)):
        return PasskeyBatches(tok, filler, "passkey", options, list(lengths), 800, seed=1)

    a = make()
    batches = [next(a) for _ in range(3)]
    assert [b.input_ids.shape[0] for b in batches] == [3, 2, 3] and all(b.cu_seqlens is None for b in batches)
    padded = 0
    for m, batch in enumerate(batches):
        cfg = task_config("passkey", length=(256, 320)[m % 2], **options)
        for row in range(batch.input_ids.shape[0]):
            ex = generate(cfg, 1 * 10**12 + m * 10**6 + row, tok, filler)
            n = len(ex.input_ids)
            assert batch.input_ids[row, :n].tolist() == ex.input_ids and batch.labels[row, :n].tolist() == ex.labels
            assert (batch.input_ids[row, n:] == tok.pad_token_id).all() and (batch.labels[row, n:] == -100).all()
            padded += n < batch.input_ids.shape[1]
        assert int(answer_positions(batch.labels).sum()) == int((batch.labels != -100).sum())
    assert padded  # answers of different token lengths share a micro-batch
    b = make()
    b.load_state_dict({**a.state_dict(), "step": 1})
    assert torch.equal(next(b).input_ids, batches[1].input_ids)
    with pytest.raises(ValueError, match="the saved data had lengths=\\[256, 320\\], this run has \\[256\\]"):
        make([256]).load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_returns_k_distinct_valid_layers(name, stage1, tmp_path):
    """Budgets 1..L and a fraction, in one run directory (the learned selectors reuse their measurements)."""
    ctx = _context(stage1, tmp_path / name)
    for budget, k in ((1, 1), (2, 2), (0.75, 3), (4, 4)):
        record = run_selection(name, ctx, budget)
        layers, scores = record["layers"], record["scores"]
        assert len(layers) == k == len(set(layers)) and all(0 <= i < 4 for i in layers), (budget, layers)
        assert len(scores) == 4 and all(math.isfinite(s) for s in scores)
        assert min(scores[i] for i in layers) >= max([scores[i] for i in range(4) if i not in layers], default=-1e9)
        saved = json.loads((tmp_path / name / "selection.json").read_text())
        assert {k: saved[k] for k in ("selector", "budget", "layers", "scores", "device")} == \
               {"selector": name, "budget": budget, "layers": layers, "scores": scores, "device": "cpu"}
        assert saved["seconds"] >= 0 and (saved["tokens"] > 0) == (name in LEARNED)
        assert (tmp_path / name / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if name == "halo":
        d = record["details"]
        assert len(d["R"]) == len(d["C"]) == 4 and d["s"] == scores == halo_scores(d["R"], d["C"])
    if name == "kl_guided":
        d = record["details"]
        assert scores == pytest.approx([d["kl_all_linear"] - kl for kl in d["kl"]])
        assert all((tmp_path / name / "kl_guided" / f"layer{i}" / "result.json").is_file() for i in range(4))
    if name == "flashmorph":
        d = record["details"]
        assert scores == d["gates"] and all(0.0 <= a <= 1.0 for a in scores) and d["mse_first"] == 0.0
        assert all(a < 1.0 for a in scores)  # lambda pulled every gate down from 1


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    """The hand-built teacher (retrieval_teacher.py) with layer 2 the only one that retrieves, and a recipe that
    trains on its one-word passkeys."""
    teacher, aligned, tok = retrieval_teacher.build(retriever=2)
    data = tmp_path_factory.mktemp("filler")
    for i, text in enumerate(retrieval_teacher.FILLER):
        (data / f"doc{i}.txt").write_text(text)
    one_word = "{num_passkeys: 1, words_per_passkey: 1}"
    recipe = load_recipe("smoke", [
        "hype=false", "select.halo_lengths=[96, 128]", f"select.halo_task_options={one_word}",
        "select.halo_examples=3", "select.halo_lm_seq_len=64",
        "select.flashmorph_task=passkey", f"select.flashmorph_task_options={one_word}",
        "select.flashmorph_lengths=[96, 128]", "select.flashmorph_micro_batch_tokens=256",
        "select.flashmorph_batch_size=1", "select.flashmorph_tokens=7680",  # 30 steps
        "select.flashmorph_lr=0.1", "select.flashmorph_min_lr=0.01",
        "select.kl_tokens=512", "select.kl_seq_len=64", "select.kl_eval_sequences=4", "select.kl_lr=1e-4"])
    return teacher, aligned, tok, str(data), recipe


def _retrieval_context(retrieval, run_dir: Path) -> SelectionContext:
    teacher, aligned, tok, data, recipe = retrieval
    return SelectionContext(teacher=teacher, tokenizer=tok, recipe=recipe, run_dir=run_dir, device="cpu", data=data,
                            aligned_model=aligned)


def test_flashmorph_keeps_the_gate_of_the_only_retrieving_layer(retrieval, tmp_path):
    record = run_selection("flashmorph", _retrieval_context(retrieval, tmp_path), 1)
    gates = record["scores"]
    assert record["layers"] == [2], gates
    assert gates[2] > 0.85, gates  # the MSE holds it near 1 - lambda / (2 * MSE curvature)
    assert [gates[i] for i in (0, 1, 3)] == [0.0, 0.0, 0.0], gates  # lambda alone: projected down to exactly 0
    rows = [json.loads(line) for line in (tmp_path / "flashmorph" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and rows[0]["mse"] == 0.0  # a_l = 1 at the start: the morphable model is the teacher
    for l in range(4):
        trace = [r[f"gate/{l}"] for r in rows]
        assert trace[0] == 1.0 and all(0.0 <= a <= 1.0 for a in trace), (l, trace)
    useless = [r["gate/0"] for r in rows]
    assert all(b <= a for a, b in zip(useless, useless[1:]))  # the lambda term only pulls down
    assert record["details"]["mean_gate"][2] == max(record["details"]["mean_gate"])


def test_halo_finds_the_only_retrieving_layer(retrieval, tmp_path):
    teacher, aligned, *_ = retrieval
    record = run_selection("halo", _retrieval_context(retrieval, tmp_path), 1)
    d = record["details"]
    assert d["teacher"]["R"] == 1.0 and d["R"] == [1.0, 1.0, 0.0, 1.0], d
    for i in (0, 1, 3):  # the other swaps change nothing
        assert d["C"][i] == pytest.approx(d["teacher"]["C"], abs=1e-5)
    assert record["layers"] == [2] and record["scores"][2] == max(record["scores"]) > 0
    # the scores are HALO's formula of the recorded R and C
    assert record["scores"] == halo_scores(d["R"], d["C"])


def test_kl_guided_finds_the_only_retrieving_layer(retrieval, tmp_path):
    record = run_selection("kl_guided", _retrieval_context(retrieval, tmp_path), 1)
    d = record["details"]
    assert record["layers"] == [2], d
    assert d["kl"][2] < 0.01 * min(d["kl"][i] for i in (0, 1, 3)), d  # with layer 2 restored the student is the teacher


def test_every_builtin_recipe_loads():
    names = builtin_recipes()
    assert {"smoke", "demo", "halo-qwen3-1.7b", "gpu-small"} <= set(names)
    for name in names:
        assert load_recipe(name).name == name  # parsed and validated, the select section included
    small = load_recipe("gpu-small")  # the small teacher is trained at 1024 tokens: the selectors' prompts fit it
    assert max(small.select.halo_lengths + small.select.flashmorph_lengths) < 1024 == small.align.seq_len


def test_select_section_of_the_recipe(tmp_path):
    smoke = load_recipe("smoke")
    assert smoke.select.flashmorph_task_options == {"num_passkeys": 2, "words_per_passkey": 8}
    halo = load_recipe("halo-qwen3-1.7b").select
    assert (halo.flashmorph_tokens, halo.flashmorph_lr, halo.flashmorph_min_lr, halo.flashmorph_lambda) == \
           (20_000_000, 2e-2, 2e-3, 0.1)
    assert min(halo.flashmorph_lengths) == 1024 and max(halo.flashmorph_lengths) == 16384
    raw = smoke.to_dict()
    del raw["select"]
    assert recipe_from_dict(raw).select == type(smoke.select)()  # recipes without the section still load
    save_recipe(smoke, tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml") == smoke
    assert load_recipe("smoke", ["select.kl_lr=3e-4"]).select.kl_lr == 3e-4
    (tmp_path / "s.yaml").write_text((tmp_path / "r.yaml").read_text().replace("flashmorph_lr: 0.02",
                                                                                "flashmorph_lr: 2e-2"))
    assert load_recipe(tmp_path / "s.yaml").select.flashmorph_lr == 0.02  # YAML 1.1 reads 2e-2 as a string
    bad = {
        "select.halo_examples=0": "select.halo_examples must be a positive integer, got 0",
        "select.kl_lr=-1": "select.kl_lr must be a number >= 0",
        "select.flashmorph_lr=fast": "select.flashmorph_lr must be a number, got 'fast'",
        "select.flashmorph_lengths=[]": "select.flashmorph_lengths must be a non-empty list",
        "select.halo_tasks=[needle]": "select.halo_tasks names 'needle'; allowed: \\[",
        "select.flashmorph_task_options={num_keys: 2}": "select.flashmorph_task_options: task 'passkey_flashmorph' "
                                                         "has no option 'num_keys'",
        "select.halo_task_options={length: 9}": "select.halo_task_options cannot set length; use select.halo_lengths",
        "select.kl_batch_size=6": "select.kl_batch_size=6 must be a multiple of select.kl_micro_batch_size=4",
        "select.flashmorph_steps=3": "unknown field\\(s\\) \\['select.flashmorph_steps'\\]",
        "select=3": "recipe section 'select' must be a mapping",
    }
    for override, message in bad.items():
        with pytest.raises(ValueError, match=message):
            load_recipe("smoke", [override])


def _cli(*args: str):
    return subprocess.run([sys.executable, "-m", "hybridize.cli", *args], capture_output=True, text=True,
                          env={**os.environ})


def test_cli_select(stage1, tmp_path):
    teacher = str(stage1.teacher)
    out = _cli("select", "--teacher", teacher, "--out", str(tmp_path / "a"), "--selector", "random", "--budget", "2",
               "--device", "cpu")
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "a" / "stages" / "select" / "selection.json").read_text())
    assert saved["selector"] == "random" and len(saved["layers"]) == 2 and str(saved["layers"]) in out.stdout
    out = _cli("select", "--teacher", teacher, "--out", str(tmp_path / "b"), "--selector", "flashmorph",
               "--device", "cpu")
    assert out.returncode == 2 and "run `hybridize align` first" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("selector, overrides", [("halo", []), ("explicit", ["keep_layers=[1, 2]"])])
def test_select_stage_dispatches_and_assemble_follows(selector, overrides, stage1, tmp_path):
    """The pipeline's select stage: the registry (or keep_layers), done.json == selection.json, and the hybrid that
    stage 2 starts from keeps attention exactly in the chosen layers."""
    import shutil

    from hybridize.pipeline.stages import assemble, select

    recipe = load_recipe("smoke", [f"selector={'uniform' if selector == 'explicit' else selector}", *overrides])
    conv = Conversion(stage1.teacher, tmp_path / "out", recipe, data=stage1.data, device="cpu")
    shutil.copytree(stage1.stage_dir("align"), conv.stage_dir("align"))  # stage 1 as done before
    done = select(conv)
    saved = json.loads((conv.stage_dir("select") / "selection.json").read_text())
    assert saved["selector"] == selector and done["layers"] == saved["layers"] and done["scores"] == saved["scores"]
    assert (conv.stage_dir("select") / "scores.png").is_file() and done["device"] == "cpu"
    if selector == "explicit":
        assert done["layers"] == [1, 2] and done["budget"] == 2
    assert assemble(conv).config.attention_layers == done["layers"]


def test_prompts_too_short_for_the_selectors_task_fail_before_stage_1(stage1, tmp_path):
    recipe = load_recipe("smoke", ["selector=flashmorph", "select.flashmorph_lengths=[512, 1024]",
                                   "select.flashmorph_task_options={}"])  # 10 x 32 words need ~2.3K tiny-BPE tokens
    with pytest.raises(ValueError, match="select.flashmorph_lengths: length=512 is too short for task "
                                         "'passkey_flashmorph'.*use length >= "):
        Conversion(stage1.teacher, tmp_path / "out", recipe, data=stage1.data, device="cpu")
    assert not (tmp_path / "out").exists()  # refused when the conversion is made: nothing written


# Intra-layer conversions (recipe fusion=intra): the selectors choose KV-head groups, not layers.
def test_uniform_groups_spread_the_budget_over_layers_then_groups():
    from hybridize.selection import uniform_groups

    assert uniform_groups(4, 4, 6) == [[3], [1, 3], [3], [1, 3]]
    assert uniform_groups(28, 8, 56) == [[3, 7]] * 28  # 25% of Qwen3-1.7B's 224 groups: 2 per layer
    assert uniform_groups(4, 2, 8) == [[0, 1]] * 4  # everything: every layer attention
    with pytest.raises(ValueError, match="number of attention groups must be in 1..8, got 9"):
        uniform_groups(4, 2, 9)


@pytest.mark.parametrize("name", ["uniform", "random", "flashmorph", "halo"])
def test_group_selectors_return_k_distinct_groups(name, stage1, tmp_path):
    ctx = _context(stage1, tmp_path / name)
    ctx.recipe = load_recipe("smoke", ["fusion=intra"])
    for budget, k in ((1, 1), (0.5, 4), (8, 8)):  # 4 layers x 2 KV-head groups
        record = run_selection(name, ctx, budget)
        groups = record["groups"]
        assert record["fusion"] == "intra" and len(groups) == 4 and sum(len(g) for g in groups) == k, record
        assert all(len(set(g)) == len(g) and all(j in (0, 1) for j in g) for g in groups)
        assert record["layers"] == [i for i, g in enumerate(groups) if len(g) == 2]
        scores = record["scores"]
        assert len(scores) == 4 and all(len(row) == 2 and all(math.isfinite(s) for s in row) for row in scores)
        kept = [scores[i][j] for i in range(4) for j in groups[i]]
        left = [scores[i][j] for i in range(4) for j in range(2) if j not in groups[i]]
        assert min(kept) >= max(left, default=-1e9)
        saved = json.loads((tmp_path / name / "selection.json").read_text())
        assert saved["groups"] == groups and saved["scores"] == scores
        assert (tmp_path / name / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["layers"] == [0, 1, 2, 3]


def test_groups_per_layer_keeps_attention_in_every_layer(stage1, tmp_path):
    """select.groups_per_layer: each layer first keeps its own best groups, the rest of the budget goes to the best
    anywhere (0: the best anywhere, as FlashMorph's and random's plain top k)."""
    from hybridize.selection import top_k_groups

    scores = [5, 1, 0, 4, 3, 0, 0, 0, 1, 0, 0, 0]  # 4 layers x 3 groups
    assert top_k_groups(scores, 4, 4) == [[0, 1], [0, 1], [], []]
    assert top_k_groups(scores, 4, 4, per_layer=1) == [[0], [0], [2], [0]]
    assert top_k_groups(scores, 4, 6, per_layer=1) == [[0, 1], [0, 1], [2], [0]]
    with pytest.raises(ValueError, match="groups_per_layer=1: 4 layers x 1 groups must fit the budget's 3"):
        top_k_groups(scores, 4, 3, per_layer=1)
    for name in ("random", "flashmorph"):
        ctx = _context(stage1, tmp_path / name)
        ctx.recipe = load_recipe("smoke", ["fusion=intra", "select.groups_per_layer=1"])
        groups = run_selection(name, ctx, 4)["groups"]  # 4 of 8 groups: one in each of the 4 layers
        assert [len(g) for g in groups] == [1, 1, 1, 1], (name, groups)


def test_halo_at_head_level_swaps_one_group_at_a_time(stage1, tmp_path):
    """HALO with fusion=intra: each swapped model is the teacher with one KV-head group's heads turned into the
    layer's stage-1 mixer heads (the layers before it compute the teacher's hidden states exactly), one (R, C) per
    layer and group, saved for a resumed run."""
    from hybridize.selection.base import swap_group_config

    ctx = _context(stage1, tmp_path)
    ctx.recipe = load_recipe("smoke", ["fusion=intra"])
    aligned = ctx.aligned("test")
    config = swap_group_config(ctx.teacher.config, aligned.config, 2, 1)
    assert config.layer_types[2] == "hybrid" and config.attention_kv_heads[2] == [0]
    assert [config.layer_types[i] for i in (0, 1, 3)] == [ctx.teacher.config.layer_types[i] for i in (0, 1, 3)]
    model = swapped_model(ctx.teacher, aligned, config=config)
    ids = torch.randint(1, 300, (2, 13))
    with torch.no_grad():
        ours = model(ids, output_hidden_states=True).hidden_states
        theirs = ctx.teacher(ids, output_hidden_states=True).hidden_states
    for layer in (1, 2):  # the outputs of layers 0 and 1
        assert torch.equal(ours[layer], theirs[layer]), layer
    assert not torch.allclose(ours[3], theirs[3])  # layer 2's group 1 is linear now
    record = run_selection("halo", ctx, 3)
    assert len(record["details"]["R"]) == len(record["details"]["C"]) == 8  # 4 layers x 2 groups
    assert sorted(p.name for p in (tmp_path / "halo").glob("layer*-group*.json")) == \
        sorted(f"layer{i}-group{j}.json" for i in range(4) for j in range(2))
    flat = [s for row in record["scores"] for s in row]
    kept = [flat[i * 2 + j] for i, g in enumerate(record["groups"]) for j in g]
    assert sum(map(len, record["groups"])) == 3 and min(kept) >= max(set(flat) - set(kept), default=-1)


def test_layer_selectors_refuse_kv_head_groups(stage1, tmp_path):
    ctx = _context(stage1, tmp_path)
    ctx.recipe = load_recipe("smoke", ["fusion=intra"])
    with pytest.raises(ValueError, match="selector 'kl_guided' chooses whole layers; with fusion=intra .* use one "
                                         r"of \['flashmorph', 'halo', 'random', 'uniform'\]"):
        run_selection("kl_guided", ctx, 1)
    with pytest.raises(ValueError, match="whole KV-head group count in 1..8, got 9"):
        run_selection("uniform", ctx, 9)
    with pytest.raises(ValueError, match="keep_layers names whole layers"):
        load_recipe("smoke", ["fusion=intra", "keep_layers=[1]"])


def test_group_gates_equal_layer_gates_when_a_layer_shares_one_value(stage1):
    """The head-level morphable model scales each head's output before the output projections; with every group of
    a layer at the layer's gate a_l it is the layer-level model (a_l * attention + (1 - a_l) * mixer)."""
    teacher = stage1.load_teacher().model
    aligned = _context(stage1, Path("unused")).aligned("test")
    layer, group = MorphableModel(teacher, aligned), MorphableModel(teacher, aligned, groups=True)
    assert tuple(group.gates.shape) == (4, 2)
    ids = torch.randint(0, 300, (2, 17))
    a = torch.tensor([0.9, 0.0, 0.4, 1.0])
    with torch.no_grad():
        for x, y in zip(group(ids, gates=a[:, None].expand(4, 2)), layer(ids, gates=a)):
            assert_close(x, y, "group gates == layer gates")
        mixed = group(ids, gates=torch.tensor([[1.0, 0.0]] * 4))[-1]
        assert not torch.allclose(mixed, layer(ids, gates=torch.ones(4))[-1])  # one group's heads swapped out


def test_flashmorph_groups_keep_the_group_of_the_only_retrieving_layer(retrieval, tmp_path):
    """The hand-built teacher has one KV-head group per layer: the head-level gates must find layer 2 as the
    layer-level ones do."""
    import dataclasses

    ctx = _retrieval_context(retrieval, tmp_path)
    ctx.recipe = dataclasses.replace(ctx.recipe, fusion="intra")
    record = run_selection("flashmorph", ctx, 1)
    assert record["groups"] == [[], [], [0], []], record["scores"]
    assert record["layers"] == [2] and record["scores"][2][0] > 0.85

