"""`hybridize demo`: the main job end to end on the built-in default, on a CPU in minutes.

1. the tiny teacher: the one the package ships (trained by `hybridize teacher --size tiny`), or trained anew;
2. `hybridize convert` with the `demo` recipe, stages align, select and distill: attention kept in the two layers
   that hold the teacher's retrieval (its passkey layer 1 and its NIAH layer 3: results/cpu-selectors), Lightning
   mixers in the others. Stage 3 (finetune, next-token CE at 512
   tokens) is left out: on this teacher it cost the hybrid most of the NIAH recall distillation had kept (42% -> 4%
   at 1x: results/cpu-demo/choices.json);
3. `hybridize eval`: teacher, hybrid and the all-linear stage-1 student on the same perplexity windows and the
   same passkey / NIAH prompts at 1x, 2x and 4x the teacher's training length, 120 prompts per task and length (a
   95% interval of about +-9 points). MQAR is left out: the tiny teacher
   has none to keep (0% at every length, results/cpu-demo);
4. why one converts, measured on the machine at hand: the time of a decode step and the bytes of the cache at long
   contexts, teacher vs hybrid (`hybridize.bench.decode`);
5. a table of the results, the report with its plots, and what the decode state costs at real sizes.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path

import torch

SHIPPED_TEACHER = "teacher-tiny"
TASKS = ["passkey", "niah_single_2"]
EPISODES = 3000  # retrieval episodes added to the built-in corpus for the conversion (~0.4M tokens)
# The teacher's episode tasks but MQAR, which it never learned: distilling its MQAR answers teaches wrong ones (with
# them the hybrid kept passkey 29% / NIAH 42% at 1x, without them 42% / 79%: results/cpu-demo/choices.json)
EPISODE_TASKS = ["repeat", "passkey", "niah_single_2"]
TRAIN_DATA = "builtin:train"  # what the tiny teacher trained on (its recipe's default), and the conversion's text
EVAL_DATA = "builtin:heldout"  # perplexity windows and haystack filler: the one document in eight neither saw
STAGES = ["align", "select", "distill"]
DECODE_CONTEXTS = [4096, 32768, 131072]  # the decode measurement: far past the 256 tokens the teacher trained on
SAMPLES = 40  # prompts per (task, length, depth): 120 per cell, a 95% interval of about +-9 points at 50%
DECODE_THREADS = 1  # batch-1 decode of a 1M-parameter model is a chain of tiny ops: a second thread only adds waits


def shipped_teacher() -> Path | None:
    path = Path(str(resources.files("hybridize.assets").joinpath(SHIPPED_TEACHER)))
    return path if (path / "model.safetensors").is_file() else None


def run_demo(out: str | Path = "out/demo", teacher: str | Path | None = None, retrain_teacher: bool = False,
             mixer: str = "lightning", device: str | None = None, samples: int = SAMPLES,
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
            print("[1/5] training the tiny teacher (hybridize teacher --size tiny) ...", flush=True)
            train_teacher("tiny", out / "teacher", device=device)
            teacher = out / "teacher"
        else:
            print(f"[1/5] the shipped tiny teacher: {teacher}", flush=True)
    teacher = Path(teacher)
    trained = json.loads((teacher / "config.json").read_text()).get("max_position_embeddings", 256)
    recipe = load_recipe("demo", [f"mixer={mixer}", *(overrides or [])])
    # converted on the text the shipped teacher trained on (builtin:train, plus retrieval episodes with filler from
    # it), evaluated on builtin:heldout, which neither saw
    episodes = out / "data" / f"episodes-{'-'.join(EPISODE_TASKS)}.jsonl"
    if episodes.is_file():
        print(f"      reusing the conversion's retrieval episodes in {episodes}", flush=True)
    data = [TRAIN_DATA, str(_episodes(episodes, teacher, min(trained, 2048), data=TRAIN_DATA))]
    conv = Conversion(teacher, out / "hybrid", recipe, data=data, device=device, eval_data=EVAL_DATA)
    if all(conv.done(stage) for stage in STAGES):
        print(f"[2/5] reusing the finished conversion in {conv.out} (made by an earlier run with the same recipe; "
              "another --out converts anew)", flush=True)
    else:
        print(f"[2/5] converting ({mixer} mixers, HyPE, attention budget {recipe.budget}) ...", flush=True)
    convert(conv, STAGES)
    all_linear = out / "all-linear-stage1"  # a readable name in the report for stage 1's all-linear model
    if not all_linear.exists():
        os.symlink((out / "hybrid" / "stages" / "align" / "model").resolve(), all_linear)
    lengths = [trained, 2 * trained, 4 * trained]
    print(f"[3/5] evaluating teacher, hybrid and all-linear student at {lengths} tokens ...", flush=True)
    report = out / "report"
    command = command or f"hybridize.demo.run_demo(out={str(out)!r}, overrides={overrides!r})"
    run_eval(EvalConfig(models=[str(out / "hybrid"), str(all_linear)], teacher=str(teacher), out=str(report),
                        suites=["perplexity", *TASKS], lengths=lengths, depths=[0.1, 0.5, 0.9], samples=samples,
                        device=device, data=EVAL_DATA, command=command))
    print(f"[4/5] decode speed and cache size at {', '.join(f'{c // 1024}K' for c in DECODE_CONTEXTS)} tokens on "
          "this machine ...", flush=True)
    decode = measure_decode(teacher, out / "hybrid", device, report / "decode.json", command)
    print(f"[5/5] results ({time.perf_counter() - t0:.0f} s); report: {report / 'report.md'}\n", flush=True)
    print(summary_table(json.loads((report / "report.json").read_text()), lengths))
    print()
    print(decode_table(decode))
    print()
    print(state_size_table(mixer))
    curves = sorted((out / "hybrid" / "stages").glob("*/curves.png"))
    if curves:
        print("\ntraining curves (loss, held-out values, learning rate) of each stage:")
        print("\n".join(f"  {path}" for path in curves))
    return report


def measure_decode(teacher: Path, hybrid: Path, device: str | None, path: Path, command: str) -> dict:
    """Teacher and hybrid decode at DECODE_CONTEXTS on this machine (`hybridize.bench.decode`), written to `path`.
    Both run on our engine in fp32 (the teacher loaded as an all-attention hybrid: the same code, only the mixers
    differ); on the CPU with DECODE_THREADS threads."""
    from .bench.decode import decode_at_context
    from .convert import load_teacher
    from .models import HybridForCausalLM
    from .provenance import device_name, provenance

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = {"teacher": load_teacher(teacher, device=dev).model,
              "hybrid": HybridForCausalLM.from_pretrained(hybrid).float().to(dev)}
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(DECODE_THREADS)
    try:
        rows = [{"model": name, **decode_at_context(model, context)}
                for context in DECODE_CONTEXTS for name, model in models.items()]
    finally:
        torch.set_num_threads(threads)
    record = {"what": "one-token decode steps (batch 1, fp32) with N tokens in a static cache marked full without a "
                      "prompt (hybridize.bench.decode); ms_per_token is the median of 3 runs of 8 steps",
              "command": command, "device": device_name(dev), "cpu_threads": DECODE_THREADS if dev.type == "cpu"
              else None, "cpu": _cpu_name(), "rows": rows, **provenance()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def _cpu_name() -> str | None:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return None


def decode_table(record: dict) -> str:
    """Teacher vs hybrid per context: time per decoded token and the cache's size, with their ratios."""
    by = {(r["model"], r["context"]): r for r in record["rows"]}
    contexts = sorted({r["context"] for r in record["rows"]})
    where = record["device"] + (f", {record['cpu_threads']} thread" if record.get("cpu_threads") else "")
    lines = [f"decode on this machine ({where}; the cache marked full, no prompt run: hybridize.bench.decode):",
             f"  {'context':>8} {'teacher ms/tok':>15} {'hybrid ms/tok':>14} {'speedup':>8} "
             f"{'teacher cache':>14} {'hybrid cache':>13} {'ratio':>6}"]
    for c in contexts:
        t, h = by[("teacher", c)], by[("hybrid", c)]
        lines.append(f"  {c:>8} {t['ms_per_token']:>15.2f} {h['ms_per_token']:>14.2f} "
                     f"{t['ms_per_token'] / h['ms_per_token']:>7.2f}x {t['cache_bytes'] / 2**20:>11.1f}MiB "
                     f"{h['cache_bytes'] / 2**20:>10.1f}MiB {h['cache_bytes'] / t['cache_bytes']:>6.1%}")
    return "\n".join(lines)


def _episodes(path: Path, teacher: Path, seq_len: int, n: int = EPISODES, data=None) -> Path:
    """The conversion's data is what the teacher was trained on: the built-in corpus and retrieval episodes (new
    draws, seed 1, of EPISODE_TASKS). On the corpus alone the student never sees a question and forgets how to
    answer one. `data`: the spec the episodes' filler text comes from (None: the built-in corpus; `builtin:train`
    keeps held-out text out of them)."""
    if path.is_file():
        return path
    import dataclasses

    from transformers import AutoTokenizer

    from .data import iter_documents
    from .data.synthetic import FillerTokens
    from .teacher.recipe import teacher_recipe
    from .teacher.train import episode_documents

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    recipe = dataclasses.replace(teacher_recipe("tiny"), episode_tasks=EPISODE_TASKS)
    docs = episode_documents(tokenizer, FillerTokens.build(tokenizer, iter_documents(data)), n, seq_len,
                             recipe=recipe)
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
