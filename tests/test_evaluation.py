"""Evaluation: scoring on hand-made cases, recall scoring end to end with a model that can recall, batched
generation, perplexity against the plain forward, and the whole `hybridize eval` report on tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, assert_close, load_script, tiny_config
from hybridize import HybridForCausalLM
from hybridize.cli import main
from hybridize.data.synthetic import WORDS, FillerTokens
from hybridize.data.tokenizer import train_bpe_tokenizer
from hybridize.evaluation import (
    EvalConfig, build_cells, evaluate_cells, exact_match, greedy_generate, normalize, perplexity_by_length,
    perplexity_windows, ruler_match, run_eval, token_nll,
)

TEXTS = [
    f"Document {i}. The river runs past the old mill, and the miller counts his sacks of grain twice a day. "
    f"Nobody in the village remembers when the bridge was built; some say it was the year of the great flood."
    for i in range(60)
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS + [" ".join(WORDS)] * 3, vocab_size=400)


def _tiny(tok, pattern="mixed", **kw) -> HybridForCausalLM:
    cfg = tiny_config(pattern, sliding=False, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **{"max_position_embeddings": 4096, **kw})
    return HybridForCausalLM(cfg).eval()


def test_exact_match_on_hand_made_cases():
    assert exact_match(" 8946754.", ["8946754"]) == 1.0
    assert exact_match("\n\n  8946754 The grass is green.\nmore", ["8946754"]) == 1.0  # first line, first words
    assert exact_match(" 89467540", ["8946754"]) == 0.0  # a longer number is another word
    assert exact_match(" 894675", ["8946754"]) == 0.0
    assert exact_match(" It is 8946754", ["8946754"]) == 0.0  # the answer must come first
    assert exact_match("\n", ["8946754"]) == 0.0
    assert exact_match("first line\n8946754", ["8946754"]) == 0.0  # only the first line counts
    assert exact_match(" 454, 491, 426, 854", ["454", "491", "426", "854"]) == 1.0
    assert exact_match(" 454; 491 426,854.", ["454", "491", "426", "854"]) == 1.0  # separators do not matter
    assert exact_match(" 454, 426, 491, 854", ["454", "491", "426", "854"]) == 0.0  # order does
    assert exact_match(" 454, 491, 426", ["454", "491", "426", "854"]) == 0.0  # every value is required
    assert exact_match(" 3835D0AC-CDB3-49ad-a9f5-cc18571aec50", ["3835d0ac-cdb3-49ad-a9f5-cc18571aec50"]) == 1.0
    assert exact_match(" 3835d0ac-cdb3-49ad-a9f5-cc18571aec5", ["3835d0ac-cdb3-49ad-a9f5-cc18571aec50"]) == 0.0
    assert exact_match(" Harbor horizon kitten. Remember it.", ["harbor horizon kitten"]) == 1.0
    assert exact_match(" harbor kitten horizon", ["harbor horizon kitten"]) == 0.0
    assert normalize(" Ab-3,  x.Y ") == ["ab", "3", "x", "y"]
    with pytest.raises(ValueError, match="at least one non-empty expected value"):
        exact_match("x", [" "])


def test_ruler_match_is_the_order_free_fraction_of_values_found():
    values = ["454", "491", "426", "854"]
    assert ruler_match("the values are 854 and 454, then 426 and 491", values) == 1.0
    assert ruler_match("454 and 491\n426", values) == 0.75
    assert ruler_match("nothing", values) == 0.0
    assert ruler_match("ID: 3835D0AC-cdb3-49AD-a9f5-cc18571aec50!", ["3835d0ac-cdb3-49ad-a9f5-cc18571aec50"]) == 1.0


class _Oracle(nn.Module):
    """A stand-in model that answers a prompt correctly when its needle is in the top half of the context and with a
    wrong number otherwise: the scores of every cell are then known exactly."""

    def __init__(self, examples, pad_id: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.answers = {}
        for ex in examples:
            good = ex.needle_depths[0] <= 0.5
            answer = ex.answer_ids if good else ex.answer_ids[:-1] + [ex.answer_ids[-1] + 1]
            self.answers[tuple(ex.prompt_ids)] = answer
        self.pad_id, self.batches = pad_id, []

    def generate(self, input_ids, attention_mask, generation_config):
        self.batches.append(len(input_ids))
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = [t for t, m in zip(ids, mask) if m]
            assert all(t == self.pad_id for t, m in zip(ids, mask) if not m) and mask == sorted(mask), "not left-padded"
            new = self.answers[tuple(prompt)][:generation_config.max_new_tokens]
            rows.append(ids + new + [self.pad_id] * (generation_config.max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_recall_scores_every_cell_and_example_from_the_generations(tok):
    filler = FillerTokens.build(tok, TEXTS)
    tasks, lengths, depths = ["niah_single_2", "passkey", "mqar"], [300, 400], [0.0, 0.25, 1.0]
    cells = build_cells(tasks, lengths, depths, samples=3, seed=0, tokenizer=tok, filler=filler)
    assert len(cells) == 18 and all(len(c.examples) == 3 for c in cells)
    oracle = _Oracle([ex for c in cells for ex in c.examples], tok.pad_token_id)
    rows, preds = evaluate_cells(oracle, tok, cells, batch_tokens=750, progress=False)
    # batches of batch_tokens // (length + answer + 8 tokens): 2 at length 300, 1 at length 400
    assert sorted(set(oracle.batches)) == [1, 2] and len(preds) == 54
    for row, cell in zip(rows, cells):
        expected = sum(ex.needle_depths[0] <= 0.5 for ex in cell.examples) / 3
        assert (row["task"], row["length"], row["depth"]) == (cell.task, cell.length, cell.depth)
        assert row["exact_match"] == pytest.approx(expected)
        if cell.depth is not None:
            assert row["exact_match"] == (1.0 if cell.depth <= 0.25 else 0.0)
    wrong = [p for p in preds if p["task"] == "mqar" and p["depth"] == 1.0]
    assert all(p["exact_match"] == 0.0 and p["ruler_match"] == 0.75 for p in wrong)  # 3 of 4 values right
    right = [p for p in preds if p["depth"] == 0.0]
    assert len(right) == 18 and all(p["exact_match"] == 1.0 and p["ruler_match"] == 1.0 for p in right)


def test_batched_left_padded_generation_equals_each_prompt_alone(tok):
    torch.manual_seed(0)
    model = _tiny(tok)
    prompts = [torch.randint(2, len(tok), (n,)).tolist() for n in (23, 9, 16)]
    batched = greedy_generate(model, prompts, 6, tok.pad_token_id, [tok.eos_token_id])
    alone = [greedy_generate(model, [p], 6, tok.pad_token_id, [tok.eos_token_id])[0] for p in prompts]
    assert batched == alone and all(len(r) == 6 for r in batched)


def test_generation_is_greedy_even_when_the_models_own_config_samples(tok):
    # Qwen3 checkpoints ship a generation_config.json with do_sample=True, temperature=0.6: evaluation must not
    # inherit it.
    torch.manual_seed(0)
    model = _tiny(tok)
    model.generation_config.do_sample, model.generation_config.temperature, model.generation_config.top_k = True, 5.0, 50
    prompt = torch.randint(2, len(tok), (11,)).tolist()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(6):  # the obviously greedy loop: argmax of a full forward, no cache
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    expected = ids[0, len(prompt):].tolist()
    for _ in range(2):
        assert greedy_generate(model, [prompt], 6, tok.pad_token_id, []) == [expected]


def test_generation_stops_at_eos(tok):
    class Eos(_Oracle):
        def __init__(self):
            nn.Module.__init__(self)
            self.weight = nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, generation_config):
            tail = torch.tensor([[5, 6, tok.eos_token_id, 7]] * len(input_ids))
            return torch.cat([input_ids, tail], 1)

    assert greedy_generate(Eos(), [[3, 4]], 4, tok.pad_token_id, [tok.eos_token_id]) == [[5, 6]]


def test_perplexity_equals_the_plain_forward_and_buckets_by_context(tok):
    torch.manual_seed(0)
    model = _tiny(tok)
    windows = perplexity_windows(tok, TEXTS, max_length=96, samples=3)
    assert windows.shape == (3, 97)
    assert torch.equal(windows, perplexity_windows(tok, TEXTS, max_length=96, samples=3))
    stream = [t for d in TEXTS for t in tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]]
    assert windows.flatten().tolist() == stream[:3 * 97]
    nll = token_nll(model, windows, chunk=10)  # chunks that do not divide the length
    with torch.no_grad():
        logits = model(windows).logits
    ref = F.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none")
    assert_close(nll, ref, "chunked NLL vs full forward")
    nll2, ent = token_nll(model, windows, chunk=10, entropy=True)
    ref_ent = torch.distributions.Categorical(logits=logits[:, :-1].float()).entropy()
    assert torch.equal(nll2, nll)
    assert_close(ent, ref_ent, "chunked predictive entropy vs full forward")
    rows = perplexity_by_length(model, windows, [32, 96, 64], batch_size=2, progress=False)
    assert [(r["length_from"], r["length"], r["tokens"]) for r in rows] == [(0, 32, 96), (32, 64, 96), (64, 96, 96)]
    for r in rows:
        expected = ref[:, r["length_from"]:r["length"]].double().mean().item()
        assert r["nll"] == pytest.approx(expected, rel=1e-5)
        assert r["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
        assert r["entropy"] == pytest.approx(ref_ent[:, r["length_from"]:r["length"]].double().mean().item(), rel=1e-5)
        # each window's mean over the bucket: the values intervals and paired tests rest on; their mean is `nll`
        per_window = ref[:, r["length_from"]:r["length"]].double().mean(1)
        assert r["window_nll"] == pytest.approx(per_window.tolist(), rel=1e-5)
        assert sum(r["window_nll"]) / 3 == pytest.approx(r["nll"], rel=1e-9)
    with pytest.raises(ValueError, match="holds .* tokens, but 500 windows of 97 tokens need"):
        perplexity_windows(tok, TEXTS, max_length=96, samples=500)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tok):
    """A teacher (all attention, trained context 320) and two students, saved with the tokenizer."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    (root / "data.txt").write_text("\n\n".join(TEXTS))
    dirs = {}
    for name, pattern in (("teacher", "all_attention"), ("hybrid-a", "mixed"), ("hybrid-b", "gated_deltanet")):
        _tiny(tok, pattern, max_position_embeddings=320).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = root / name
    return root, dirs


def test_eval_report_for_a_teacher_and_two_students(model_dirs, tmp_path, capsys):
    root, d = model_dirs
    out = tmp_path / "report"
    code = main(["eval", "--teacher", str(d["teacher"]), "--model", str(d["hybrid-a"]), "--model", str(d["hybrid-b"]),
                 "--suite", "perplexity,niah_single_2,mqar", "--lengths", "256,400", "--depths", "0,1",
                 "--samples", "1", "--data", str(root / "data.txt"), "--seed", "7", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    meta, results = report["meta"], report["results"]
    assert [m["name"] for m in meta["models"]] == ["teacher", "hybrid-a", "hybrid-b"]
    assert [m["role"] for m in meta["models"]] == ["teacher", "student", "student"]
    assert meta["trained_context"] == 320 and meta["seed"] == 7 and meta["tasks"] == ["niah_single_2", "mqar"]
    assert meta["command"].startswith("hybridize eval --model ") and "--seed 7" in meta["command"]
    keys = {(e["model"], e["task"], e["metric"], e["length"], e["depth"]) for e in results}
    assert len(keys) == len(results)  # one entry per model, metric, length and depth
    expected = {(m, t, metric, n, dep) for m in ("teacher", "hybrid-a", "hybrid-b")
                for t in ("niah_single_2", "mqar") for metric in ("exact_match", "ruler_match")
                for n in (256, 400) for dep in (0.0, 1.0)}
    expected |= {(m, "perplexity", "perplexity", n, None) for m in ("teacher", "hybrid-a", "hybrid-b") for n in (256, 400)}
    assert keys == expected
    for e in results:
        assert e["beyond_trained_context"] == (e["length"] > 320)
        assert 0.0 <= e["value"] <= 1.0 if e["metric"] != "perplexity" else e["value"] > 1.0
    # Teacher and students were scored on the same prompts: the predictions files list the same (task, length,
    # depth, seed, values) in the same order.
    preds = {m: [json.loads(line) for line in (out / f"predictions_{m}.jsonl").read_text().splitlines()]
             for m in ("teacher", "hybrid-a", "hybrid-b")}
    strip = lambda ps: [(p["task"], p["length"], p["depth"], p["seed"], p["values"]) for p in ps]  # noqa: E731
    assert strip(preds["teacher"]) == strip(preds["hybrid-a"]) == strip(preds["hybrid-b"]) and len(preds["teacher"]) == 8
    for name in ("recall_vs_length.png", "heatmap_niah_single_2.png", "heatmap_mqar.png", "perplexity_by_length.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    md = (out / "report.md").read_text()
    assert "| | teacher (teacher) | hybrid-a (student) | hybrid-b (student) |" in md
    assert "| niah_single_2 | 400† |" in md and "| niah_single_2 | 256 |" in md
    assert "perplexity, context 257-400† |" in md
    # perplexity with its 95% interval over the windows, and the windows' fingerprint (the same for every model)
    ppl = [e for e in results if e["metric"] == "perplexity"]
    assert all(e["ci_low"] <= e["value"] <= e["ci_high"] and len(e["window_nll"]) == 1 for e in ppl)
    assert len({e["windows"] for e in ppl}) == 1
    t400 = next(e for e in ppl if e["model"] == "teacher" and e["length"] == 400)
    assert f"{t400['value']:.2f} [{t400['ci_low']:.2f}, {t400['ci_high']:.2f}]" in md
    assert meta["command"] in md and "![" in md and "heatmap_mqar.png" in md
    # each model's weights hash; each rate with its interval; each student paired with the teacher on the same prompts,
    # and the two hybrids with each other
    assert all(len(m["weights_sha256"]) == 64 for m in meta["models"]) and meta["prompts_per_cell"] == 2
    assert [m["attention_layers"] for m in meta["models"]] == [5, 2, 1]
    assert {(r["model"], r["task"], r["length"], r["n"]) for r in report["recall"]} == \
        {(m, t, n, 2) for m in ("teacher", "hybrid-a", "hybrid-b") for t in ("niah_single_2", "mqar") for n in (256, 400)}
    assert all(r["ci_low"] <= r["recall"] <= r["ci_high"] for r in report["recall"])
    assert {(r["a"], r["b"]) for r in report["paired"]} == {("hybrid-a", "teacher"), ("hybrid-b", "teacher"),
                                                            ("hybrid-a", "hybrid-b")}
    assert "## Paired comparisons" in md and "n=4" in md


def test_eval_errors_are_one_line_and_exit_2(model_dirs, tmp_path, capsys):
    root, d = model_dirs
    base = ["eval", "--model", str(d["hybrid-a"]), "--out", str(tmp_path / "o"), "--no-progress", "--data",
            str(root / "data.txt")]
    cases = [
        (["eval", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "model directory not found"),
        (base + ["--suite", "niah,hellaswag"], "unknown suite 'hellaswag'; allowed: perplexity, niah, passkey, mqar"),
        (base + ["--lengths", "1024,abc"], "--lengths must be comma-separated token counts"),
        (base + ["--depths", "0,1.5"], "--depths must be comma-separated fractions in [0, 1]"),
        (base + ["--teacher", str(root)], "teacher directory " + str(root) + " has no config.json"),
        (base + ["--suite", "perplexity", "--lengths", "100000"], "the perplexity data holds"),
        (base + ["--suite", "niah_single_3", "--lengths", "20"], "length=20 is too short for task 'niah_single_3'"),
        (base + ["--teacher", str(d["teacher"]), "--teacher-sha256", "00000000"], "not the expected 00000000"),
        (base + ["--teacher-sha256", "00000000"], "teacher_sha256 needs a teacher to check"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hybridize: error: ") and message in err and err.count("\n") == 1, err


def test_eval_config_validates_itself():
    with pytest.raises(ValueError, match="lengths must be integers >= 2"):
        EvalConfig(models=["m"], out="o", lengths=[0])
    with pytest.raises(ValueError, match="samples must be >= 1"):
        EvalConfig(models=["m"], out="o", samples=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        EvalConfig(models=["m"], out="o", dtype="int8")
    cfg = EvalConfig(models=["m"], out="o", suites=["niah", "passkey", "niah_single_1", "perplexity"])
    assert cfg.tasks == ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "passkey"]
    with pytest.raises(FileNotFoundError, match="model directory not found: m"):
        run_eval(cfg)


def test_importing_the_evaluation_package_loads_neither_matplotlib_nor_lm_eval():
    import subprocess
    import sys

    code = ("import sys, hybridize.evaluation, hybridize.cli; hybridize.cli.build_parser(); "
            "print(sorted(m for m in ('matplotlib', 'lm_eval') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_heldout_bpc_scores_bits_per_character_with_each_models_own_tokenizer(tmp_path, monkeypatch):
    """benchmarks/heldout_bpc.py: bits per character = the windows' summed next-token loss / the characters they
    decode to / ln 2 (comparable across tokenizers, unlike per-token perplexity); too little text is a clear error."""
    import json
    import math
    import sys

    mod = load_script("benchmarks/heldout_bpc.py")
    teacher = str(ROOT / "src" / "hybridize" / "assets" / "teacher-tiny")
    text = (ROOT / "README.md").read_text()[:6000]
    got = mod.score(teacher, text, 64, "cpu")
    assert got["windows"] == got["tokens"] // 65 and got["chars"] <= len(text)
    predicted = got["windows"] * 64  # each window's first token is context only
    assert math.isclose(got["bits_per_char"], got["nll_per_token"] * predicted / got["chars"] / math.log(2),
                        rel_tol=1e-5)
    assert math.isclose(got["ppl_per_token"], math.exp(got["nll_per_token"]), rel_tol=1e-9)
    with pytest.raises(ValueError, match="fewer than one window of 65; give more --chars"):
        mod.score(teacher, "short", 64, "cpu")
    out = tmp_path / "bpc.json"
    monkeypatch.setattr(sys, "argv", ["heldout_bpc.py", teacher, "--chars", "3000", "--window", "32", "--device", "cpu",
                                      "--out", str(out)])
    mod.main()
    record = json.loads(out.read_text())
    assert record["chars"] == 3000 and record["device"] == "cpu" and teacher in record["models"]
    assert "commit" in record and record["command"].startswith("heldout_bpc.py")


def test_heldout_overlap_counts_long_held_out_lines_found_verbatim_in_each_training_text():
    """benchmarks/heldout_overlap.py: the share of held-out lines (>= min_chars, stripped) that a training text also
    holds, per text and in any; short lines are not counted, and a held-out text without long lines is an error."""
    mod = load_script("benchmarks/heldout_overlap.py")
    a, b, c, d = ("line %d is long enough to be counted here" % i for i in range(4))
    held = [f"{a}\n  {b}  \nshort\n", f"{c}\n{d}"]
    got = mod.overlap(held, {"x": [f"{a}\nshort"], "y": [f"zzz\n{b}", a]}, min_chars=30)
    assert got == {"lines": 4, "in": {"x": 0.25, "y": 0.5}, "in_any": 0.5}
    with pytest.raises(ValueError, match="no line of 30 or more characters; lower --min-chars"):
        mod.overlap(["short\nlines"], {"x": ["short"]}, min_chars=30)


def test_ppl_ratio_plot_merges_reports_per_text_and_rejects_mismatched_teachers(tmp_path, monkeypatch):
    """benchmarks/ppl_ratio_plot.py: each text's students divided by its teacher, reports of one text merged under
    their prefixes at the chosen length, skipped names left out; a report whose teacher value differs, a missing
    length and a missing file are errors naming the text; the CLI writes the plot and its points with provenance."""
    import sys
    mod = load_script("benchmarks/ppl_ratio_plot.py")

    def report(name, teacher, students, length=1024):
        rows = [{"model": "t", "role": "teacher", "metric": "perplexity", "length": length, "value": teacher},
                {"model": "t", "role": "teacher", "metric": "perplexity", "length": 2 * length, "value": 99.0},
                {"model": "t", "role": "teacher", "metric": "exact_match", "length": length, "value": 1.0}]
        rows += [{"model": m, "role": "student", "metric": "perplexity", "length": length, "value": v}
                 for m, v in students.items()]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"results": rows}))
        return str(path)

    a = report("a", 10.0, {"uniform": 8.0, "all-linear": 30.0})
    b = report("b", 10.0, {"uniform": 12.0})
    got = mod.text_points("x", [f"{a}:1024:gla-", f"{b}:1024:lightning-"], skip=("all-linear",))
    assert got == {"text": "x", "teacher": 10.0, "models": {"gla-uniform": 8.0, "lightning-uniform": 12.0}}
    with pytest.raises(ValueError, match="'x'.*scores the teacher 20.0000, another report 10.0000"):
        mod.text_points("x", [f"{a}:1024", report("c", 20.0, {}) + ":1024"])
    with pytest.raises(ValueError, match="lengths \\[1024, 2048\\], not 512"):
        mod.text_points("x", [f"{a}:512"])
    with pytest.raises(FileNotFoundError, match="'x': no report at"):
        mod.text_points("x", [str(tmp_path / "missing.json")])

    out = tmp_path / "plot" / "ratio.png"
    monkeypatch.setattr(sys, "argv", ["ppl_ratio_plot.py"])
    mod.main(["--text", "x", f"{a}:1024", "--text", "y", report("d", 2.0, {"uniform": 3.0}, length=8), "--out", str(out)])
    points = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 0 and "commit" in points and points["seed"] is None
    assert [t["ratios"] for t in points["texts"]] == [{"uniform": 0.8, "all-linear": 3.0}, {}]
