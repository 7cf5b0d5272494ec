"""`hybridize pretrain`: any layer mix from a preset or a recipe file trains end to end into a checkpoint that
`from_pretrained` loads and generates with; bad input stops in one line before anything is written; the teacher is
the Transformer preset of the same trainer, weight for weight."""

from __future__ import annotations

import json
import random
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import hybridize  # noqa: F401  (registers the model type)
from hybridize.cli import main
from hybridize.pretrain import build_recipe, mix_summary, pretrain
from hybridize.teacher import train_teacher

# 3 optimizer steps of 4 rows (2 of them episodes) at 192 tokens
SHORT = ["train.tokens=2304", "train.batch_size=4", "train.micro_batch_size=4", "episode_rows=2",
         "train.warmup_steps=1", "train.save_every=1"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on two shared cores, small ops with two threads wait on each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(Path(m.__file__).read_text() for m in (random, json, types)))
    return str(path)


def _sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def _generates(folder: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("def main():", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_a_preset_with_an_intra_layer_mix_trains_resumes_and_loads(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    args = ["pretrain", "--preset", "tiny", "--mixer", "mamba2", "--ratio", "3:1", "--fusion", "intra", "--data", corpus,
            "--eval-data", corpus, *_sets(SHORT), "--device", "cpu"]
    # stopped after its first step (--max-minutes 0), then the same command continues from the checkpoint
    assert main([*args, "--out", str(tmp_path / "m"), "--max-minutes", "0"]) == 0
    assert not (tmp_path / "m" / "model.safetensors").exists() and "run the same command" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "m")]) == 0
    record = json.loads((tmp_path / "m" / "pretrain.json").read_text())
    assert record["result"]["steps"] == 3 and record["result"]["resumed_from"] == 1
    assert record["heldout"]["step"] == 3 and record["heldout"]["loss"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert type(model).__name__ == "HybridForCausalLM"
    assert model.config.layer_types == ["hybrid"] * 4 and model.config.attention_kv_heads == [[3]] * 4
    assert mix_summary(model.config)["actual_ratio"] == "3:1"
    _generates(tmp_path / "m")
    # the uninterrupted run ends with the same weights
    assert main([*args, "--out", str(tmp_path / "once")]) == 0
    w1, w2 = load_file(tmp_path / "m" / "model.safetensors"), load_file(tmp_path / "once" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_recipe_file_trains_any_layer_mix(tmp_path):
    """A JSON recipe: per-layer mixers of three kinds, an intra-layer layer and an attention layer in one model."""
    recipe = {"model": {"vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
                        "layer_types": ["linear_attention", "hybrid", "full_attention", "linear_attention"],
                        "linear_mixers": ["hgrn2", "retnet", None, "mamba2"],
                        "attention_kv_heads": [None, [1], None, None]},
              "train": {"tokens": 2304, "seq_len": 192, "batch_size": 4, "micro_batch_size": 4, "lr": 2e-3,
                        "warmup_steps": 1},
              "episode_rows": 2, "seed": 3}
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(recipe))
    assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "m"), "--data", _corpus(tmp_path),
                 "--device", "cpu"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.linear_mixers == ["hgrn2", "retnet", None, "mamba2"]
    assert model.config.layer_types[1] == "hybrid" and model.config.attention_kv_heads[1] == [1]
    assert json.loads((tmp_path / "m" / "pretrain.json").read_text())["recipe"]["seed"] == 3
    _generates(tmp_path / "m")


@pytest.mark.parametrize("args,message", [
    (["--preset", "tiny", "--mixer", "mamba9", "--ratio", "3:1"], "mixer 'mamba9'; allowed: "),
    (["--preset", "tiny", "--mixer", "gla", "--ratio", "3:2"], "ratio '3:2': allowed: transformer, all-linear"),
    (["--preset", "tiny", "--mixer", "gla", "--ratio", "3:1", "--fusion", "both"], "fusion 'both'; allowed: "),
    (["--preset", "tiny", "--mixer", "gla", "--ratio", "3:1", "--placement", "top"], "placement 'top'; allowed: "),
    (["--preset", "tiny", "--mixer", "gla"], "--ratio is missing"),
    (["--preset", "huge"], "unknown pretrain preset 'huge'; allowed: "),
    (["--preset", "teacher-tiny", "--mixer", "gla", "--ratio", "3:1"], "model_type='qwen3'"),
    (["--preset", "tiny", "--set", "model.num_hiden_layers=3"], "unknown field model.num_hiden_layers"),
    (["--preset", "tiny", "--set", "train.lr=-1"], "train.lr must be a number >= 0"),
    (["--preset", "tiny", "--set", "episode_rows=8"], "episode_rows must be in [0, micro_batch_size=8)"),
    (["--preset", "tiny", "--data", "no-such-file.txt"], "no-such-file.txt"),
    (["--config", "no-such-recipe.json"], "no recipe file"),
    (["--preset", "tiny", "--mixer", "gla", "--ratio", "3:1", "--set", "model.layer_types=[]"],
     "model.layer_types is what --ratio sets"),
    # found once the tokenizer is trained, still before anything is written
    (["--preset", "tiny", "--data", "corpus.txt", "--set", "model.vocab_size=512"],
     "episode task 'mqar' does not fit in train.seq_len=192"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    _corpus(tmp_path)
    assert main(["pretrain", *args, "--out", "out", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hybridize: error: ") and message in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]


def test_teacher_is_the_transformer_preset_of_pretrain(tmp_path):
    """`hybridize teacher --size tiny` and `hybridize pretrain --preset teacher-tiny` train the same Qwen3 model from
    the same data to the same weights."""
    corpus = _corpus(tmp_path)
    short = ["train.tokens=3072", "train.batch_size=4", "train.micro_batch_size=4", "episode_rows=2",
             "train.warmup_steps=1"]
    train_teacher("tiny", tmp_path / "teacher", short, data=[corpus], device="cpu")
    recipe = build_recipe("teacher-tiny", overrides=short, data=[corpus])
    pretrain(recipe, tmp_path / "pretrain", device="cpu")
    w1 = load_file(tmp_path / "teacher" / "model.safetensors")
    w2 = load_file(tmp_path / "pretrain" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    config = json.loads((tmp_path / "pretrain" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_hidden_layers"] == 4
