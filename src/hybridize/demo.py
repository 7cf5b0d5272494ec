"""`hybridize demo`: the main job end to end on the built-in default, on a CPU in minutes.

1. the tiny teacher: the one the package ships (trained by `hybridize teacher --size tiny`), or trained anew;
2. `hybridize convert` at a 25% attention budget with the `demo` recipe (align, select, distill, finetune);
3. `hybridize eval`: teacher, hybrid and the all-linear stage-1 student on the same perplexity windows and the
   same passkey / NIAH / MQAR prompts at 1x, 2x and 4x the teacher's training length;
4. a table of the results, the report with its plots, and what the decode state costs at real sizes.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path

import torch

SHIPPED_TEACHER = "teacher-tiny"
TASKS = ["passkey", "niah_single_2", "mqar"]
EPISODES = 3000  # retrieval episodes added to the built-in corpus for the conversion (~0.4M tokens)
TRAIN_DATA = "builtin:train"  # what the tiny teacher trained on (its recipe's default), and the conversion's text
EVAL_DATA = "builtin:heldout"  # perplexity windows and haystack filler: the one document in eight neither saw


def shipped_teacher() -> Path | None:
    path = Path(str(resources.files("hybridize.assets").joinpath(SHIPPED_TEACHER)))
    return path if (path / "model.safetensors").is_file() else None


def run_demo(out: str | Path = "out/demo", teacher: str | Path | None = None, retrain_teacher: bool = False,
             mixer: str = "lightning", device: str | None = None, samples: int = 6,
             overrides: list[str] | None = None, command: str | None = None) -> Path:
    from .evaluation.runner import EvalConfig, run_eval
    from .pipeline import Conversion, convert, load_recipe
    from .teacher import train_teacher

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if teacher is None:
        teacher = None if retrain_teacher else shipped_teacher()
        if teacher is None:
            print("[1/4] training the tiny teacher (hybridize teacher --size tiny) ...", flush=True)
            train_teacher("tiny", out / "teacher", device=device)
            teacher = out / "teacher"
        else:
            print(f"[1/4] the shipped tiny teacher: {teacher}", flush=True)
    teacher = Path(teacher)
    trained = json.loads((teacher / "config.json").read_text()).get("max_position_embeddings", 256)
    print(f"[2/4] converting at a 25% attention budget ({mixer} mixers, HyPE) ...", flush=True)
    recipe = load_recipe("demo", [f"mixer={mixer}", *(overrides or [])])
    # converted on the text the shipped teacher trained on (builtin:train, plus retrieval episodes with filler from
    # it), evaluated on builtin:heldout, which neither saw
    data = [TRAIN_DATA, str(_episodes(out / "data" / "episodes.jsonl", teacher, min(trained, 2048), data=TRAIN_DATA))]
    conv = Conversion(teacher, out / "hybrid", recipe, data=data, device=device, eval_data=EVAL_DATA)
    convert(conv)
    all_linear = out / "all-linear-stage1"  # a readable name in the report for stage 1's all-linear model
    if not all_linear.exists():
        os.symlink((out / "hybrid" / "stages" / "align" / "model").resolve(), all_linear)
    lengths = [trained, 2 * trained, 4 * trained]
    print(f"[3/4] evaluating teacher, hybrid and all-linear student at {lengths} tokens ...", flush=True)
    report = out / "report"
    run_eval(EvalConfig(models=[str(out / "hybrid"), str(all_linear)], teacher=str(teacher), out=str(report),
                        suites=["perplexity", *TASKS], lengths=lengths, depths=[0.1, 0.5, 0.9], samples=samples,
                        device=device, data=EVAL_DATA,
                        command=command or f"hybridize.demo.run_demo(out={str(out)!r}, overrides={overrides!r})"))
    print(f"[4/4] results ({time.perf_counter() - t0:.0f} s so far); report: {report / 'report.md'}\n", flush=True)
    print(summary_table(json.loads((report / "report.json").read_text()), lengths))
    print()
    print(state_size_table(mixer))
    curves = sorted((out / "hybrid" / "stages").glob("*/curves.png"))
    if curves:
        print("\ntraining curves (loss, held-out values, learning rate) of each stage:")
        print("\n".join(f"  {path}" for path in curves))
    return report


def _episodes(path: Path, teacher: Path, seq_len: int, n: int = EPISODES, data=None) -> Path:
    """The conversion's data is what the teacher was trained on: the built-in corpus and retrieval episodes (new
    draws, seed 1). On the corpus alone the student never sees a question and forgets how to answer one. `data`:
    the spec the episodes' filler text comes from (None: the built-in corpus; `builtin:train` keeps held-out text
    out of them)."""
    if path.is_file():
        return path
    from transformers import AutoTokenizer

    from .data import iter_documents
    from .data.synthetic import FillerTokens
    from .teacher.train import episode_documents

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    docs = episode_documents(tokenizer, FillerTokens.build(tokenizer, iter_documents(data)), n, seq_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tmp.replace(path)
    return path


def summary_table(report: dict, lengths: list[int]) -> str:
    """One row per model and length (1x, 2x, 4x the training length): perplexity and exact-match recall per task."""
    from .evaluation.report import mean_over_depths  # here: the report module imports matplotlib

    entries = report["results"]
    models = list(dict.fromkeys(e["model"] for e in entries))
    metrics = [("perplexity", "perplexity", "perplexity")] + [(f"{t} recall", t, "exact_match") for t in TASKS]
    width = max(len(m) for m in models) + 2
    head = f"{'model':<{width}}{'length':>12}" + "".join(f"{label:>{len(label) + 3}}" for label, _, _ in metrics)
    lines = [head, "-" * len(head)]
    for m in models:
        for k, L in enumerate(lengths):
            cells = []
            for label, task, metric in metrics:
                v = mean_over_depths(entries, m, task, metric, L)
                cells.append(f"{v:>{len(label) + 3}.2f}" if metric == "perplexity" else f"{v:>{len(label) + 3}.0%}")
            lines.append(f"{m:<{width}}{f'{L} ({2 ** k}x)':>12}" + "".join(cells))
    lines.append("(1x = the teacher's training length; 2x and 4x are beyond it. Recall is exact match on generated "
                 "answers; perplexity is on builtin:heldout, the part of the built-in corpus that neither the teacher "
                 "nor the conversion saw.)")
    return "\n".join(lines)


def state_size_table(mixer: str) -> str:
    """Decode state per sequence at real sizes: the Qwen3-1.7B shape as a Transformer vs a 25% hybrid."""
    from .models import HybridConfig, HybridForCausalLM
    from .models.shapes import shape_config
    from .selection import resolve_budget, uniform_layers

    shape = shape_config("qwen3-1.7b")
    L = shape["num_hidden_layers"]
    keep = uniform_layers(L, resolve_budget(0.25, L))
    with torch.device("meta"):
        transformer = HybridForCausalLM(HybridConfig(**shape))
        hybrid = HybridForCausalLM(HybridConfig(
            **shape, layer_types=["full_attention" if i in keep else "linear_attention" for i in range(L)],
            linear_mixers=mixer))
    lines = ["decode state per sequence, Qwen3-1.7B shape, bf16:",
             f"  {'context':>8} {'Transformer':>12} {'25% hybrid':>11} {'ratio':>6}"]
    for ctx in (4096, 32768, 131072, 524288):
        a, b = transformer.state_size(ctx, dtype=torch.bfloat16), hybrid.state_size(ctx, dtype=torch.bfloat16)
        lines.append(f"  {ctx:>8} {a / 2**30:>10.2f}Gi {b / 2**30:>9.2f}Gi {b / a:>6.1%}")
    return "\n".join(lines)
