"""The lm-eval adapter: loglikelihoods equal our own forward, a local multiple-choice task through
`lm_eval.simple_evaluate`, and a local generation task through `hybridize lm-eval` in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, tiny_config
from hybridize import HybridForCausalLM
from hybridize.metrics.recall import greedy_generate

import lm_eval  # in the [test] extra: these tests must run, never skip
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from hybridize.evaluation.lm_eval_adapter import HybridizeLM

TEXTS = [
    f"Report {i}. The harbour master counts the boats at dawn, writes the numbers in a ledger and walks home "
    f"along the quay while gulls argue over the nets."
    for i in range(50)
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _word_tokenizer(texts):
    """A word-level tokenizer: every token decodes to a printable word, so generated text compares as strings
    (a random byte-level model emits partial UTF-8 that two decoders may render differently)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|pad|>", "<unk>"]
    words = sorted({w for t in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(t) for w in [w[0]]})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>", unk_token="<unk>", padding_side="left")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = _word_tokenizer(TEXTS)
    torch.manual_seed(0)
    cfg = tiny_config("mixed", sliding=False, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    path = tmp_path_factory.mktemp("lm") / "hybrid"
    HybridForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(model_dir) -> HybridizeLM:
    return HybridizeLM(pretrained=str(model_dir), batch_size=3)


def _own_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    ctx = tok.encode(context, add_special_tokens=False)
    cont = tok.encode(continuation, add_special_tokens=False)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0, len(ctx) - 1:-1].double(), -1)  # (len(cont), V)
    target = torch.tensor(cont)
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def test_adapter_loads_our_model_on_the_cpu_in_fp32(lm):
    assert type(lm.model).__name__ == "HybridForCausalLM" and lm.backend == "causal"
    assert lm.device.type == "cpu" and lm.model.dtype == torch.float32 and lm.max_length == 512


def test_batched_loglikelihoods_equal_our_forward(lm):
    pairs = [("The harbour master counts", " the boats at dawn"), ("Report 7.", " The"),
             ("gulls argue over the nets and the ledger", " numbers"), ("walks", " home along the quay while gulls"),
             ("Report 12. The harbour master counts the boats at dawn, writes", " the numbers in a ledger")]
    requests = [Instance("loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    got = lm.loglikelihood(requests)  # batches of 3, right-padded
    own = [_own_loglikelihood(lm.model, lm.tokenizer, c, x) for c, x in pairs]
    assert_close(torch.tensor([g[0] for g in got], dtype=torch.float64),
                 torch.tensor([o[0] for o in own], dtype=torch.float64), "lm-eval vs own loglikelihood",
                 dtype=torch.float32)
    assert [g[1] for g in got] == [o[1] for o in own]


def _write_task(root: Path, name: str, records: list[dict], body: str) -> None:
    (root / f"{name}.json").write_text(json.dumps(records))
    (root / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / name}.json\n"
        f"  cache_dir: {root / 'hf-cache'}\ntest_split: test\n{body}")


def test_local_multiple_choice_task_through_simple_evaluate(lm, tmp_path):
    questions = [("The harbour master counts the", [" boats", " gulls", " quay"]),
                 ("Report 3. The harbour", [" master", " ledger"]),
                 ("writes the numbers in a", [" nets", " ledger", " dawn", " home"]),
                 ("while gulls argue over the", [" nets", " boats"])]
    # Gold labels: our own argmax for the first two questions, another choice for the last two, so that
    # lm-eval's accuracy is 0.5 exactly when its scores rank the choices as our forward does.
    records = []
    for i, (q, choices) in enumerate(questions):
        scores = [_own_loglikelihood(lm.model, lm.tokenizer, q, c)[0] for c in choices]
        best = max(range(len(choices)), key=scores.__getitem__)
        records.append({"question": q, "choices": choices, "label": best if i < 2 else (best + 1) % len(choices)})
    _write_task(tmp_path, "hyb_local_mc", records,
                'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
                'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    out = lm_eval.simple_evaluate(model=lm, tasks=["hyb_local_mc"], task_manager=TaskManager(include_path=str(tmp_path)))
    assert out["results"]["hyb_local_mc"]["acc,none"] == 0.5


def test_local_generation_task_through_hybridize_lm_eval(model_dir, tmp_path):
    model = HybridForCausalLM.from_pretrained(model_dir).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = ["The harbour master", "Report 9. The", "writes the numbers", "along the quay while"]
    records = []
    for i, p in enumerate(prompts):
        out = greedy_generate(model, [tok.encode(p, add_special_tokens=False)], 5, tok.pad_token_id, [tok.eos_token_id])
        ours = tok.decode(out[0], skip_special_tokens=True)
        assert ours.strip(), f"empty greedy continuation for {p!r}"
        # Targets: our own greedy continuation for the first three prompts, something else for the last.
        records.append({"prompt": p, "target": ours if i < 3 else ours + " not this"})
    _write_task(tmp_path, "hyb_local_gen", records,
                'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
                'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 5\n  do_sample: false\n'
                'metric_list:\n  - metric: exact_match\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    run = subprocess.run(
        [sys.executable, "-m", "hybridize.cli", "lm-eval", "--model", "hybridize", "--model_args",
         f"pretrained={model_dir}", "--tasks", "hyb_local_gen", "--include_path", str(tmp_path), "--batch_size", "4",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "hyb_local_gen" in run.stdout and "exact_match" in run.stdout  # lm-eval's own results table
    (results,) = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(results.read_text())["results"]["hyb_local_gen"]["exact_match,none"] == 0.75


def test_importing_the_adapter_twice_keeps_one_registration():
    import importlib

    import hybridize.evaluation.lm_eval_adapter as adapter
    from lm_eval.api.registry import get_model

    first = get_model("hybridize")
    assert first is HybridizeLM and issubclass(first, lm_eval.models.huggingface.HFLM)
    importlib.reload(adapter)
    assert get_model("hybridize") is first


def test_lm_eval_help_is_lm_evals_own():
    run = subprocess.run([sys.executable, "-m", "hybridize.cli", "lm-eval", "--help"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and "Language Model Evaluation Harness" in run.stdout


def test_without_the_extra_hybridize_lm_eval_says_how_to_install_it(monkeypatch, capsys):
    from hybridize.cli import main

    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what a missing package looks like to `import`
    monkeypatch.delitem(sys.modules, "hybridize.evaluation.lm_eval_adapter")
    assert main(["lm-eval", "--model", "hybridize", "--tasks", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridize: error: the lm-eval adapter needs lm-eval 0.4.13") and err.count("\n") == 1
    assert "pip install 'hybridize[lm-eval]'" in err
