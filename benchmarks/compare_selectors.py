r"""Every layer selector on equal terms: one shared stage 1, then each selector at the same budget through the same
stages 2-3 (distill, finetune), then one evaluation of all the hybrids against the teacher on identical tokens.

    python benchmarks/compare_selectors.py --teacher src/hybridize/assets/teacher-tiny --out out/selectors --recipe demo \
        --data builtin out/demo/data/episodes.jsonl         # the demo's data (hybridize demo writes it)
    python benchmarks/compare_selectors.py --teacher out/teacher-small --out out/sel-small --recipe my.yaml \
        --budget 0.125 --selectors uniform,flashmorph --lengths 1024,2048,4096 --device cuda

Writes `OUT/selectors.json` (one row per selector: the layers kept, selection tokens and seconds, conversion seconds
per stage, perplexity and its ratio to the teacher, exact-match recall per task and length) and `OUT/selectors.md`,
plus the evaluation report in `OUT/report/`. Each selector's run folder is `OUT/<selector>/` (resumable: run the
same command again after an interruption; finished stages are skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from hybridize.evaluation.report import mean_over_depths
from hybridize.evaluation.runner import EvalConfig, run_eval
from hybridize.pipeline import load_recipe
from hybridize.pipeline.stages import Conversion, align, convert
from hybridize.provenance import device_name, provenance
from hybridize.selection import SELECTORS

TASKS = ["passkey", "niah_single_2", "mqar"]
ALL_LINEAR = "all-linear"  # the name of stage 1's all-linear student in the evaluation (--all-linear)


def state_bytes(model_dir: Path, lengths: list[int], all_attention: bool = False) -> dict[int, int]:
    """Decode state of one sequence in bf16 (KV of the attention layers + the mixers' fixed states) at each length,
    from the model's config alone (built on the meta device). `all_attention`: the same shapes with attention in
    every layer, i.e. the teacher's KV cache."""
    from hybridize.models import HybridConfig, HybridForCausalLM

    cfg = HybridConfig.from_pretrained(model_dir)
    if all_attention:  # a new config, so that the per-layer mixer list is derived again (none)
        d = cfg.to_dict()
        d.update(layer_types=["full_attention"] * cfg.num_hidden_layers, linear_mixers=None)
        cfg = HybridConfig(**d)
    with torch.device("meta"):
        model = HybridForCausalLM(cfg)
    return {n: model.state_size(n, dtype=torch.bfloat16) for n in lengths}


def run(teacher: Path, out: Path, recipe_name: str, budget: str, selectors: list[str], lengths: list[int] | None,
        samples: int, device: str | None, overrides: list[str], data: list[str] | None = None,
        eval_data: str | None = None, evaluate: bool = True, all_linear: bool = False) -> dict | None:
    bad = [s for s in selectors if s not in SELECTORS]
    if bad:
        raise SystemExit(f"unknown selector(s) {bad}; allowed: {sorted(SELECTORS)}")
    out.mkdir(parents=True, exist_ok=True)
    base = [f"budget={budget}", *overrides]
    shared = Conversion(teacher, out / "stage1", load_recipe(recipe_name, base), data=data, device=device)
    t0 = time.perf_counter()
    stage1 = align(shared)  # once: every learned selector and every hybrid starts from the same aligned mixers
    print(f"stage 1 shared: {stage1['result']['tokens']:,} tokens", flush=True)
    runs = {}
    for name in selectors:
        conv = Conversion(teacher, out / name, load_recipe(recipe_name, [*base, f"selector={name}"]), data=data,
                          device=device)
        if not conv.done("align"):
            shutil.copytree(shared.stage_dir("align"), conv.stage_dir("align"), dirs_exist_ok=True)
        print(f"--- {name}", flush=True)
        convert(conv)
        runs[name] = conv
    if not evaluate:  # conversions only (e.g. selectors split over GPUs); the same command without --no-eval evaluates
        print(f"converted: {', '.join(runs) or 'stage 1 only'}; not evaluated (--no-eval)", flush=True)
        return None
    models = [str(out / n) for n in selectors]
    if all_linear:  # stage 1's all-linear student: the check that the recall tasks need attention at all
        link = out / ALL_LINEAR
        if not link.exists():
            link.symlink_to((shared.stage_dir("align") / "model").resolve())
        models.append(str(link))
    trained = json.loads((Path(teacher) / "config.json").read_text()).get("max_position_embeddings", 4096)
    lengths = lengths or [trained, 2 * trained, 4 * trained]
    report = out / "report"
    run_eval(EvalConfig(models=models, teacher=str(teacher), out=str(report),
                        suites=["perplexity", *TASKS], lengths=lengths, depths=[0.1, 0.5, 0.9], samples=samples,
                        device=device, data=eval_data, command=" ".join(sys.argv)))
    results = json.loads((report / "report.json").read_text())["results"]
    teacher_name = next(e["model"] for e in results if e["role"] == "teacher")

    def value(model, task, metric, length):
        v = mean_over_depths(results, model, task, metric, length)
        return None if math.isnan(v) else v

    rows = []
    entries = [(name, conv.done("select"), {s: conv.done(s) for s in ("distill", "finetune")}, out / name)
               for name, conv in runs.items()]
    if all_linear:
        entries.append((ALL_LINEAR, {"layers": [], "tokens": 0, "seconds": 0.0, "device": stage1.get("device")}, {},
                        out / ALL_LINEAR))
    for name, sel, stages, model_dir in entries:
        row = {"selector": name, "layers": sel["layers"], "selection_tokens": sel.get("tokens"),
               "selection_seconds": sel.get("seconds"), "device": sel.get("device"),
               "stage_seconds": {s: r["result"]["seconds"] for s, r in stages.items() if r},
               "stage_tokens": {s: r["result"]["tokens"] for s, r in stages.items() if r}}
        row.update({f"state_bytes@{n}": size for n, size in state_bytes(model_dir, lengths).items()})
        for n in lengths:
            ppl, ppl_t = value(name, "perplexity", "perplexity", n), value(teacher_name, "perplexity", "perplexity", n)
            row[f"perplexity@{n}"] = ppl
            row[f"perplexity_ratio@{n}"] = ppl / ppl_t if ppl and ppl_t else None
            for task in TASKS:
                row[f"{task}@{n}"] = value(name, task, "exact_match", n)
        rows.append(row)
    teacher_row = {f"{task}@{n}": value(teacher_name, task, "exact_match", n) for n in lengths for task in TASKS}
    teacher_row.update({f"perplexity@{n}": value(teacher_name, "perplexity", "perplexity", n) for n in lengths})
    teacher_row.update({f"state_bytes@{n}": size for n, size in  # the shapes of stage 1's model, attention everywhere
                        state_bytes(shared.stage_dir("align") / "model", lengths, all_attention=True).items()})
    record = {**provenance(), "teacher": str(teacher), "recipe": recipe_name, "overrides": overrides, "budget": budget,
              "data": data, "seed": shared.recipe.seed, "device": device_name(shared.device),
              "eval_data": eval_data, "lengths": lengths, "samples_per_cell": samples, "stage1": stage1,
              "teacher_results": teacher_row, "rows": rows, "seconds": time.perf_counter() - t0}
    (out / "selectors.json").write_text(json.dumps(record, indent=1))
    (out / "selectors.md").write_text(table(record))
    print(table(record))
    return record


def table(record: dict) -> str:
    n1 = record["lengths"][0]
    head = (["selector", "layers", "selection tokens", "selection s", f"ppl ratio @{n1}", f"state @{n1}"]
            + [f"{t} @{n}" for t in TASKS for n in record["lengths"]])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(v):
        return "-" if v is None else f"{100 * v:.0f}%"

    def size(v):
        return "-" if v is None else f"{v / 2**20:.2f} MiB"

    t = record["teacher_results"]
    lines.append(f"| teacher | all | - | - | 1.000 | {size(t.get(f'state_bytes@{n1}'))} | "
                 + " | ".join(pct(t[f"{task}@{n}"]) for task in TASKS for n in record["lengths"]) + " |")
    for r in record["rows"]:
        ratio = r[f"perplexity_ratio@{n1}"]
        cells = [r["selector"], ",".join(map(str, r["layers"])), f"{r['selection_tokens'] or 0:,}",
                 f"{r['selection_seconds'] or 0:.1f}", "-" if ratio is None else f"{ratio:.3f}",
                 size(r.get(f"state_bytes@{n1}"))]
        cells += [pct(r[f"{task}@{n}"]) for task in TASKS for n in record["lengths"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", default="demo")
    p.add_argument("--budget", default="0.25")
    p.add_argument("--selectors", default="uniform,random,halo,kl_guided,flashmorph")
    p.add_argument("--lengths", default=None, help="comma-separated prompt lengths (default: 1x, 2x, 4x the "
                   "teacher's max_position_embeddings)")
    p.add_argument("--samples", type=int, default=8, help="examples per (task, length, depth)")
    p.add_argument("--device", default=None)
    p.add_argument("--data", nargs="+", default=None, help="conversion data (default: the recipe's, else the built-in "
                   "corpus); the demo converts on `builtin out/demo/data/episodes.jsonl`")
    p.add_argument("--eval-data", default=None, help="text for perplexity and haystacks (default: the built-in corpus; "
                   "builtin:heldout for text a teacher trained on builtin:train never saw)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-eval", action="store_true", help="convert only (e.g. the selectors split over GPUs); run "
                   "the command again with every selector and without --no-eval to evaluate them together")
    p.add_argument("--all-linear", action="store_true", help="also evaluate stage 1's all-linear student (a row "
                   f"named {ALL_LINEAR!r}): the check that recall needs the attention layers at all")
    a = p.parse_args()
    from hybridize.cli import dump_stacks_on_sigusr1

    dump_stacks_on_sigusr1()  # benchmarks/gpu_run.sh's `timeout -s USR1` then shows where an overrunning row was
    run(Path(a.teacher), Path(a.out), a.recipe, a.budget, [s for s in a.selectors.split(",") if s],
        [int(x) for x in a.lengths.split(",")] if a.lengths else None, a.samples, a.device, a.overrides, a.data,
        a.eval_data, evaluate=not a.no_eval, all_linear=a.all_linear)


if __name__ == "__main__":
    main()
