"""Where recall is lost: a conversion's student after each stage, beside its teacher, on the same prompts.

    hybridize eval --stages out/qwen3-hybrid --out out/stages-eval --lengths 4K,8K,16K
    run_stage_eval(EvalConfig(models=[], stages="out/qwen3-hybrid", out="out/stages-eval", lengths=[4096, 8192]))

For a `hybridize convert` output folder, the students are:

    aligned    stages/align/model: stage 1's all-linear model (every layer its aligned mixer)
    selected   the hybrid distillation starts from: the teacher's attention in the selected layers, the aligned
               mixers elsewhere, fresh gates drawn as `distill` draws them (rebuilt here, seed and all, and saved
               under OUT/models/selected: a distill at learning rate 0 saves the same weights, tested)
    distilled  stages/distill/model
    finetuned  stages/finetune/model

(those whose stage ran). One `run_eval` scores them and the teacher (source-teacher.json names it, or `teacher`) on
the same prompts; `stages.md` / `stages.json` then put each stage's recall per task and length in one table, with
its Wilson 95% interval and McNemar's p against the stage before it and against the teacher, so that a shortfall
points to the stage where it appeared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..provenance import check_weights
from .compare import fmt_p, fmt_rate, paired, pooled
from .runner import EvalConfig, run_eval

STAGE_MODELS = (("aligned", "align"), ("selected", "select"), ("distilled", "distill"), ("finetuned", "finetune"))


def source_teacher(conversion: str | Path) -> dict | None:
    """The teacher a conversion folder records (`pipeline.stages.SOURCE_TEACHER`): {"path", "weights_sha256"}."""
    from ..pipeline.stages import SOURCE_TEACHER

    path = Path(conversion) / SOURCE_TEACHER
    return json.loads(path.read_text()) if path.is_file() else None


def build_selected(conversion: str | Path, teacher: str | Path, out: str | Path, device: str | None = None) -> Path:
    """The hybrid stage 2 starts from, saved to `out` (fp32, with the teacher's tokenizer): `distill`'s own steps
    (teacher loaded, the stage's seed, `assemble`) on the conversion's recipe and selection, on `device` (None: CUDA
    when available), where the teacher loads as `distill` loads it (bf16 on CUDA, fp32 on the CPU)."""
    import yaml

    from ..pipeline.recipe import recipe_from_dict
    from ..pipeline.stages import Conversion, assemble

    conversion, out = Path(conversion), Path(out)
    if (out / "config.json").is_file():
        return out
    recipe = recipe_from_dict(yaml.safe_load((conversion / "recipe.yaml").read_text()))
    # data="builtin": nothing is trained here, so the recipe's data need not be on this machine
    conv = Conversion(teacher, conversion, recipe, data="builtin", device=device)
    if conv.done("select") is None:
        raise ValueError(f"{conversion} has no finished selection (stages/select/done.json): nothing to assemble")
    conv.load_teacher()  # as in distill: the teacher is loaded before the stage's seed
    conv.seed("distill")
    model = assemble(conv).float()
    model.save_pretrained(out)
    conv.load_teacher().tokenizer.save_pretrained(out)
    return out


def stage_models(conversion: str | Path, teacher: str | Path, work: str | Path,
                 device: str | None = None) -> list[tuple[str, Path]]:
    """(name, model folder) of each stage that ran, in pipeline order."""
    conversion = Path(conversion)
    models = []
    for name, stage in STAGE_MODELS:
        if stage == "select":
            if (conversion / "stages" / "select" / "done.json").is_file():
                models.append((name, build_selected(conversion, teacher, Path(work) / "models" / name, device)))
        elif (conversion / "stages" / stage / "model" / "config.json").is_file():
            models.append((name, conversion / "stages" / stage / "model"))
    if not models:
        raise ValueError(f"{conversion} holds no stage models (stages/*/model): is it a `hybridize convert` output "
                         "folder?")
    return models


def run_stage_eval(cfg: EvalConfig) -> list[Path]:
    """Evaluate every stage's student of the conversion `cfg.stages` beside the teacher with `cfg`'s suites, lengths
    and sample sizes (the teacher: `cfg.teacher`, else the one the conversion recorded, whose weights hash it must
    then have); write the report and `stages.md` / `stages.json` into `cfg.out`. Returns the files written."""
    conversion = Path(cfg.stages)
    if not (conversion / "recipe.yaml").is_file():
        raise ValueError(f"stages: {conversion} is not a `hybridize convert` output folder (no recipe.yaml)")
    recorded = source_teacher(conversion) or {}
    teacher = cfg.teacher or recorded.get("path")
    if teacher is None:
        raise ValueError(f"{conversion} records no teacher (source-teacher.json); give it with --teacher DIR")
    expected = cfg.teacher_sha256 or recorded.get("weights_sha256")
    check_weights(teacher, expected)  # before the selected hybrid is built from it
    models = stage_models(conversion, teacher, cfg.out, cfg.device)
    cfg = dataclasses.replace(cfg, models=[str(p) for _, p in models], names=[n for n, _ in models], stages=None,
                              teacher=str(teacher), teacher_sha256=expected)
    written = run_eval(cfg)
    report = json.loads((Path(cfg.out) / "report.json").read_text())
    table = stage_table(report, conversion)
    (Path(cfg.out) / "stages.json").write_text(json.dumps(table, indent=1) + "\n")
    (Path(cfg.out) / "stages.md").write_text(stage_markdown(table))
    return [*written, Path(cfg.out) / "stages.json", Path(cfg.out) / "stages.md"]


def stage_table(report: dict, conversion: str | Path | None = None) -> dict:
    """One row per model (teacher first, then the stages in order), task and length: recall pooled over depths with
    its interval, and McNemar's p against the previous stage and against the teacher."""
    entries, meta = report["results"], report["meta"]
    teacher = next((m["name"] for m in meta["models"] if m["role"] == "teacher"), None)
    order = [m["name"] for m in meta["models"]]
    tasks = list(dict.fromkeys(e["task"] for e in entries if e["metric"] == "exact_match"))
    lengths = sorted({e["length"] for e in entries if e["metric"] == "exact_match"})
    rows = []
    for task in tasks:
        for length in lengths:
            previous = None
            for name in order:
                r = pooled(entries, name, task, length)
                if r is None:
                    continue
                row = {"model": name, "task": task, "length": length, **r}
                if name != teacher:
                    if previous is not None:
                        row["p_vs_previous"] = paired(entries, name, previous, task, length)["p"]
                    if teacher is not None:
                        row["p_vs_teacher"] = paired(entries, name, teacher, task, length)["p"]
                    previous = name
                rows.append(row)
    return {"conversion": str(conversion) if conversion is not None else None, "teacher": teacher,
            "trained_context": meta.get("trained_context"), "models": meta["models"], "tasks": tasks,
            "lengths": lengths, "rows": rows, "command": meta.get("command"), "git_commit": meta.get("git_commit"),
            "device": meta.get("device"), "seed": meta.get("seed")}


def stage_markdown(table: dict) -> str:
    trained = table.get("trained_context")
    cols = [(t, n) for t in table["tasks"] for n in table["lengths"]]

    def label(n):
        return f"{n} ({n / trained:g}x)" if trained else str(n)

    names = list(dict.fromkeys(r["model"] for r in table["rows"]))
    at = {(r["model"], r["task"], r["length"]): r for r in table["rows"]}
    teacher = next((m for m in table["models"] if m["name"] == table["teacher"]), {})
    sha = f" (weights sha256 `{teacher['weights_sha256'][:16]}`)" if teacher.get("weights_sha256") else ""
    lines = ["# Recall after each stage", "",
             f"Conversion `{table['conversion']}`; teacher `{teacher.get('path')}`{sha}. "
             "Exact match over the depths: rate [95% Wilson interval] n=prompts; below it, McNemar's p on the same "
             "prompts against the stage before (p prev) and against the teacher (p teacher). aligned: stage 1's "
             "all-linear model; selected: the hybrid distill starts from (attention restored in the selected layers); "
             "distilled, finetuned: after stages 2 and 3.", "",
             "| model | " + " | ".join(f"{t} @ {label(n)}" for t, n in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        cells = [fmt_rate(at.get((name, t, n))) for t, n in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        ps = []
        for t, n in cols:
            r = at.get((name, t, n)) or {}
            parts = [f"p prev {fmt_p(r['p_vs_previous'])}" if "p_vs_previous" in r else "",
                     f"p teacher {fmt_p(r['p_vs_teacher'])}" if "p_vs_teacher" in r else ""]
            ps.append(", ".join(p for p in parts if p))
        if any(ps):
            lines.append("| | " + " | ".join(ps) + " |")
    lines += ["", "```", table.get("command") or "", "```", "",
              f"- commit: {table.get('git_commit')}; device: {table.get('device')}; seed: {table.get('seed')}"]
    return "\n".join(lines) + "\n"
