r"""Every layer selector on equal terms: one shared stage 1, then each selector at the same budget through the same
stages 2-3 (distill, finetune; `--until distill` stops after distill), then one evaluation of all the hybrids against
the teacher on identical tokens.

    python benchmarks/compare_selectors.py --teacher src/hybridize/assets/teacher-tiny --out out/selectors --recipe demo \
        --data builtin out/demo/data/episodes.jsonl         # the demo's data (hybridize demo writes it)
    python benchmarks/compare_selectors.py --teacher out/teacher-small --out out/sel-small --recipe my.yaml \
        --budget 0.125 --selectors uniform,flashmorph --lengths 1024,2048,4096 --device cuda

Writes `OUT/selectors.json` (one row per selector: the layers kept, selection tokens and seconds, conversion seconds
per stage, perplexity and its ratio to the teacher, exact-match recall per task and length with its Wilson 95%
interval and n, and McNemar's p on the same prompts against the teacher and against the first selector listed) and
`OUT/selectors.md`, plus the evaluation report in `OUT/report/`. Each selector's run folder is `OUT/<selector>/`
(resumable: run the same command again after an interruption; finished stages are skipped).

`--seeds N` repeats all of it for conversion seeds 0..N-1 (the recipe's `seed`: stage 1, the random selector, fresh
gates, data order) in `OUT/seed<k>/`, each evaluated on the same prompts, and adds `OUT/seeds.json` / `OUT/seeds.md`:
per selector and score, the mean over seeds, the sample standard deviation, min and max.
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

from hybridize.distill.recipe import STAGES
from hybridize.evaluation.compare import paired, pooled
from hybridize.evaluation.report import mean_over_depths
from hybridize.evaluation.runner import EvalConfig, run_eval
from hybridize.pipeline import load_recipe
from hybridize.pipeline.stages import Conversion, align, convert
from hybridize.provenance import device_name, provenance
from hybridize.selection import SELECTORS

TASKS = ["passkey", "niah_single_2", "mqar"]
ALL_LINEAR = "all-linear"  # the name of stage 1's all-linear student in the evaluation (--all-linear)
UNTIL = ("distill", "finetune")  # --until: the last stage of every hybrid


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
        samples: int | None, device: str | None, overrides: list[str], data: list[str] | None = None,
        eval_data: str | None = None, evaluate: bool = True, all_linear: bool = False, seeds: int = 1,
        teacher_sha256: str | None = None, until: str = "finetune") -> dict | None:
    """One comparison in `out` (seeds=1, the recipe's own seed), or one per conversion seed 0..seeds-1 in
    `out/seed<k>` with their mean and spread in `out/seeds.json` (returned; None with evaluate=False)."""
    bad = [s for s in selectors if s not in SELECTORS]
    if bad:
        raise SystemExit(f"unknown selector(s) {bad}; allowed: {sorted(SELECTORS)}")
    if not selectors:
        raise SystemExit(f"selectors: give at least one of {sorted(SELECTORS)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise SystemExit(f"seeds must be an integer >= 1 (conversion seeds 0..N-1), got {seeds!r}")
    if until not in UNTIL:
        raise SystemExit(f"until must be one of {', '.join(UNTIL)}, got {until!r}")
    args = dict(teacher=teacher, recipe_name=recipe_name, budget=budget, selectors=selectors, lengths=lengths,
                samples=samples, device=device, data=data, eval_data=eval_data, evaluate=evaluate,
                all_linear=all_linear, teacher_sha256=teacher_sha256, until=until)
    if seeds == 1:
        return run_one(out=out, overrides=overrides, **args)
    records = [run_one(out=out / f"seed{k}", overrides=[*overrides, f"seed={k}"], **args) for k in range(seeds)]
    if not evaluate:
        return None
    record = seed_summary(records)
    (out / "seeds.json").write_text(json.dumps(record, indent=1))
    (out / "seeds.md").write_text(seeds_table(record))
    print(seeds_table(record))
    return record


def run_one(teacher: Path, out: Path, recipe_name: str, budget: str, selectors: list[str], lengths: list[int] | None,
            samples: int | None, device: str | None, overrides: list[str], data: list[str] | None = None,
            eval_data: str | None = None, evaluate: bool = True, all_linear: bool = False,
            teacher_sha256: str | None = None, until: str = "finetune") -> dict | None:
    out.mkdir(parents=True, exist_ok=True)
    base = [f"budget={budget}", *overrides]
    shared = Conversion(teacher, out / "stage1", load_recipe(recipe_name, base), data=data, device=device,
                        teacher_sha256=teacher_sha256)
    t0 = time.perf_counter()
    stage1 = align(shared)  # once: every learned selector and every hybrid starts from the same aligned mixers
    print(f"stage 1 shared: {stage1['result']['tokens']:,} tokens", flush=True)
    runs = {}
    for name in selectors:
        conv = Conversion(teacher, out / name, load_recipe(recipe_name, [*base, f"selector={name}"]), data=data,
                          device=device, teacher_sha256=shared.teacher_hash)
        if not conv.done("align"):
            shutil.copytree(shared.stage_dir("align"), conv.stage_dir("align"), dirs_exist_ok=True)
        print(f"--- {name}", flush=True)
        convert(conv, list(STAGES[:STAGES.index(until) + 1]))
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
                        device=device, data=eval_data, command=" ".join(sys.argv), teacher_sha256=shared.teacher_hash))
    done = json.loads((report / "report.json").read_text())
    results = done["results"]
    teacher_name = next(e["model"] for e in results if e["role"] == "teacher")

    def value(model, task, metric, length):
        v = mean_over_depths(results, model, task, metric, length)
        return None if math.isnan(v) else v

    def evidence(model) -> dict:
        """Each recall score's interval and n, and McNemar's p against the teacher and the first selector."""
        ci, p = {}, {teacher_name: {}, selectors[0]: {}}
        for n in lengths:
            for task in TASKS:
                key = f"{task}@{n}"
                if (r := pooled(results, model, task, n)) is not None:
                    ci[key] = [r["ci_low"], r["ci_high"], r["n"]]
                for other in p:
                    if other != model and (q := paired(results, model, other, task, n)) is not None:
                        p[other][key] = q["p"]
        return {"intervals": ci, "p_vs": {k: v for k, v in p.items() if v}}

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
        row.update(evidence(name))
        rows.append(row)
    teacher_row = {f"{task}@{n}": value(teacher_name, task, "exact_match", n) for n in lengths for task in TASKS}
    teacher_row["intervals"] = evidence(teacher_name)["intervals"]
    teacher_row.update({f"perplexity@{n}": value(teacher_name, "perplexity", "perplexity", n) for n in lengths})
    teacher_row.update({f"state_bytes@{n}": size for n, size in  # the shapes of stage 1's model, attention everywhere
                        state_bytes(shared.stage_dir("align") / "model", lengths, all_attention=True).items()})
    record = {**provenance(), "teacher": str(teacher), "recipe": recipe_name, "overrides": overrides, "budget": budget,
              "data": data, "seed": shared.recipe.seed, "device": device_name(shared.device),
              "teacher_sha256": shared.teacher_hash, "eval_data": eval_data, "lengths": lengths,
              "samples_per_depth": done["meta"]["samples"], "prompts_per_cell": done["meta"]["prompts_per_cell"],
              "stage1": stage1,
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

    def pct(v, ci=None):
        if v is None:
            return "-"
        return f"{100 * v:.0f}%" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")

    def size(v):
        return "-" if v is None else f"{v / 2**20:.2f} MiB"

    t = record["teacher_results"]
    tci = t.get("intervals", {})
    lines.append(f"| teacher | all | - | - | 1.000 | {size(t.get(f'state_bytes@{n1}'))} | "
                 + " | ".join(pct(t[f"{task}@{n}"], tci.get(f"{task}@{n}")) for task in TASKS
                              for n in record["lengths"]) + " |")
    for r in record["rows"]:
        ratio = r[f"perplexity_ratio@{n1}"]
        cells = [r["selector"], ",".join(map(str, r["layers"])), f"{r['selection_tokens'] or 0:,}",
                 f"{r['selection_seconds'] or 0:.1f}", "-" if ratio is None else f"{ratio:.3f}",
                 size(r.get(f"state_bytes@{n1}"))]
        cells += [pct(r[f"{task}@{n}"], r.get("intervals", {}).get(f"{task}@{n}")) for task in TASKS
                  for n in record["lengths"]]
        lines.append("| " + " | ".join(cells) + " |")
    n = record.get("prompts_per_cell")
    lines += ["", "Recall: exact match over the depths [95% Wilson interval]" + (f", {n} prompts per cell" if n else "")
              + "; McNemar's p on the same prompts in selectors.json (`p_vs`)."]
    return "\n".join(lines) + "\n"


SPREAD_KEYS = ("selection_seconds",)  # besides every recall and perplexity-ratio score


def _spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min and max of a score over seeds."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": m, "sd": sd, "min": min(values), "max": max(values), "values": values}


def seed_summary(records: list[dict]) -> dict:
    """Per selector and score (recall per task and length, perplexity ratio, selection seconds), its mean and spread
    over the seeds' records; the teacher's recall likewise (the same teacher and prompts: it should not move)."""
    lengths = records[0]["lengths"]
    keys = [f"{t}@{n}" for t in TASKS for n in lengths] + [f"perplexity_ratio@{n}" for n in lengths] + list(SPREAD_KEYS)
    selectors = list(dict.fromkeys(r["selector"] for rec in records for r in rec["rows"]))
    rows = []
    for name in selectors:
        mine = [r for rec in records for r in rec["rows"] if r["selector"] == name]
        row = {"selector": name, "seeds": [rec["seed"] for rec in records if any(r["selector"] == name
                                                                                  for r in rec["rows"])],
               "layers": [r["layers"] for r in mine]}
        for k in keys:
            vals = [r[k] for r in mine if r.get(k) is not None]
            row[k] = _spread(vals) if vals else None
        rows.append(row)
    teacher = {k: _spread(vals) for k in keys[:len(TASKS) * len(lengths)]
               if (vals := [rec["teacher_results"][k] for rec in records if rec["teacher_results"].get(k) is not None])}
    first = records[0]
    return {**provenance(), "teacher": first["teacher"], "teacher_sha256": first.get("teacher_sha256"),
            "recipe": first["recipe"], "overrides": first["overrides"], "budget": first["budget"],
            "device": first["device"], "lengths": lengths, "prompts_per_cell": first.get("prompts_per_cell"),
            "seeds": [rec["seed"] for rec in records], "teacher_results": teacher, "rows": rows,
            "runs": [f"seed{rec['seed']}/selectors.json" for rec in records]}


def seeds_table(record: dict) -> str:
    """Mean ± standard deviation over seeds [min-max] per selector and recall score."""
    cols = [f"{t}@{n}" for t in TASKS for n in record["lengths"]]

    def cell(s):
        if not s:
            return "-"
        sd = f" ± {100 * s['sd']:.0f}" if s["sd"] is not None else ""
        return f"{100 * s['mean']:.0f}%{sd} [{100 * s['min']:.0f}-{100 * s['max']:.0f}]"

    lines = [f"Seeds {record['seeds']}: mean ± sample standard deviation over seeds [min-max] of exact match.", "",
             "| selector | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1),
             "| teacher | " + " | ".join(cell(record["teacher_results"].get(c)) for c in cols) + " |"]
    for r in record["rows"]:
        lines.append(f"| {r['selector']} | " + " | ".join(cell(r.get(c)) for c in cols) + " |")
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
    p.add_argument("--samples", type=int, default=None, help="prompts per (task, length, depth) (default: hybridize "
                   "eval's: 200 per task and length over the depths on CUDA, 8 per depth on the CPU)")
    p.add_argument("--seeds", type=int, default=1, help="conversion seeds 0..N-1, each in OUT/seed<k>/, with their "
                   "mean and spread in OUT/seeds.json (default 1: the recipe's seed, in OUT/)")
    p.add_argument("--teacher-sha256", default=None, metavar="HEX", help="refuse a teacher whose weights hash "
                   "(teacher.json's weights_sha256) does not start with HEX")
    p.add_argument("--device", default=None)
    p.add_argument("--data", nargs="+", default=None, help="conversion data (default: the recipe's, else the built-in "
                   "corpus); the demo converts on `builtin out/demo/data/episodes.jsonl`")
    p.add_argument("--eval-data", default=None, help="text for perplexity and haystacks (default: the built-in corpus; "
                   "builtin:heldout for text a teacher trained on builtin:train never saw)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-eval", action="store_true", help="convert only (e.g. the selectors split over GPUs); run "
                   "the command again with every selector and without --no-eval to evaluate them together")
    p.add_argument("--until", choices=UNTIL, default="finetune", help="the last stage every hybrid goes through "
                   "(default finetune: the recipe's stages 2-3; distill: no finetune, as `hybridize demo`)")
    p.add_argument("--all-linear", action="store_true", help="also evaluate stage 1's all-linear student (a row "
                   f"named {ALL_LINEAR!r}): the check that recall needs the attention layers at all")
    a = p.parse_args()
    from hybridize.cli import dump_stacks_on_sigusr1

    dump_stacks_on_sigusr1()  # benchmarks/gpu_run.sh's `timeout -s USR1` then shows where an overrunning row was
    run(Path(a.teacher), Path(a.out), a.recipe, a.budget, [s for s in a.selectors.split(",") if s],
        [int(x) for x in a.lengths.split(",")] if a.lengths else None, a.samples, a.device, a.overrides, a.data,
        a.eval_data, evaluate=not a.no_eval, all_linear=a.all_linear, seeds=a.seeds, teacher_sha256=a.teacher_sha256,
        until=a.until)


if __name__ == "__main__":
    main()
