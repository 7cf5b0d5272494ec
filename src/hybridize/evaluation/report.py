"""The comparison report: `report.json` (one entry per model, metric, length and depth; `recall`: each model's
exact match per task and length pooled over depths with its Wilson 95% interval; `paired`: McNemar's test of every
student against the teacher and of every student with attention against every all-linear one, on the same prompts,
per cell, per length and over all), `report.md` (teacher vs students tables with intervals, the paired tests, the
figures, how it was produced) and PNG figures: NIAH heatmaps (depth x length), recall vs length with 95% error bars,
perplexity by context length. Points past the teacher's trained context are marked "†" in tables and tick labels and
shaded in the curves.

Figures use matplotlib's object API (`Figure`, Agg canvas), never pyplot's global state.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from .compare import (ALL, fmt_p, fmt_rate, paired_perplexity_rows, paired_rows, pooled, recall_rows,
                      report_pairs)

DAGGER = "†"


def write_report(out: str | Path, entries: list[dict], meta: dict) -> list[Path]:
    """Write report.json, report.md and the figures into `out`; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m["name"] for m in meta["models"]]
    trained = meta.get("trained_context")
    written = [out / "report.json"]
    pairs = report_pairs(meta["models"])
    summary = {"recall": recall_rows(entries, models), "paired": paired_rows(entries, pairs),
               "paired_perplexity": paired_perplexity_rows(entries, pairs)}
    written[0].write_text(json.dumps({"meta": meta, "results": entries, **summary}, indent=2) + "\n",
                          encoding="utf-8")
    figures: list[tuple[str, Path]] = []
    recall = [e for e in entries if e["suite"] != "perplexity" and e["metric"] == "exact_match"]
    tasks = list(dict.fromkeys(e["task"] for e in recall))
    for task in tasks:
        path = out / f"heatmap_{task}.png"
        _heatmap(path, task, [e for e in recall if e["task"] == task], models, trained)
        figures.append((f"{task}: exact match by depth and length", path))
    if recall:
        path = out / "recall_vs_length.png"
        _recall_curves(path, recall, tasks, models, trained)
        figures.insert(0, ("Recall (exact match over the depths, 95% Wilson intervals) vs context length", path))
    ppl = [e for e in entries if e["metric"] == "perplexity"]
    if ppl:
        path = out / "perplexity_by_length.png"
        _ppl_curve(path, ppl, models, trained)
        figures.append(("Perplexity by context length", path))
    written += [p for _, p in figures]
    md = out / "report.md"
    md.write_text(_markdown(entries, meta, models, tasks, figures, summary["paired"], summary["paired_perplexity"]),
                  encoding="utf-8")
    written.append(md)
    return written


def _mark(length: int, trained: int | None) -> str:
    return f"{length}{DAGGER}" if trained is not None and length > trained else str(length)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def mean_over_depths(entries: list[dict], model: str, task: str, metric: str, length: int) -> float:
    """One model's `metric` on `task` at `length`, averaged over depths (NaN when it was not measured)."""
    return _mean(e["value"] for e in entries if e["model"] == model and e["task"] == task and e["metric"] == metric
                 and e["length"] == length)


def _depth_label(d) -> str:
    return "random" if d is None else f"{d:g}"


def _heatmap(path: Path, task: str, entries: list[dict], models: list[str], trained: int | None) -> None:
    lengths = sorted({e["length"] for e in entries})
    depths = sorted({e["depth"] for e in entries}, key=lambda d: -1 if d is None else d)
    fig = Figure(figsize=(1.2 + 0.75 * len(lengths) * len(models) + 1.0 * len(models), 0.9 + 0.45 * len(depths)),
                 layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    image = None
    for ax, model in zip(axes, models):
        grid = [[math.nan] * len(lengths) for _ in depths]
        for e in entries:
            if e["model"] == model:
                grid[depths.index(e["depth"])][lengths.index(e["length"])] = e["value"]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if not math.isnan(grid[i][j]):
                    ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [_mark(n, trained) for n in lengths], rotation=45, fontsize=7)
        ax.set_yticks(range(len(depths)), [_depth_label(d) for d in depths], fontsize=7)
        ax.set_xlabel("context length (tokens)" + (f"; {DAGGER} beyond trained {trained}" if trained else ""),
                      fontsize=7)
        ax.set_ylabel("needle depth", fontsize=7)
        ax.set_title(model, fontsize=9)
    ns = sorted({e["samples"] for e in entries})
    fig.suptitle(f"{task}: exact match, n = {'/'.join(map(str, ns))} prompts per cell", fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.savefig(path, dpi=120)


def _shade_beyond(ax, trained: int | None, lengths: list[int]) -> None:
    """Shade the lengths past the trained context, from halfway (on the log axis) between the last length within it
    and the first beyond it to the panel's right edge; call it once the axis has its data and scale."""
    beyond = [n for n in lengths if trained is not None and n > trained]
    if not beyond:
        return
    inside = [n for n in lengths if n <= trained]
    left, right = ax.get_xlim()
    start = math.sqrt(max(inside) * min(beyond)) if inside else left
    ax.axvspan(start, right, color="0.9", zorder=0, label=f"beyond trained context ({trained})")
    ax.set_xlim(left, right)


def _length_axis(ax, lengths: list[int], trained: int | None) -> None:
    """Log2 x axis ticked at the evaluated lengths, † past the trained context."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [_mark(n, trained) for n in lengths], rotation=45, fontsize=7)
    ax.minorticks_off()


def _recall_curves(path: Path, entries: list[dict], tasks: list[str], models: list[str], trained) -> None:
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, task in zip(axes, tasks):
        sel = [e for e in entries if e["task"] == task]
        lengths = sorted({e["length"] for e in sel})
        for k, model in enumerate(models):
            pts = [(n, r) for n in lengths if (r := pooled(sel, model, task, n)) is not None]
            if pts:
                # each model a little apart along x, so that overlapping bars stay readable
                xs = [n * 2 ** (0.04 * (k - (len(models) - 1) / 2)) for n, _ in pts]
                ys = [r["recall"] for _, r in pts]
                err = [[y - r["ci_low"] for y, (_, r) in zip(ys, pts)],
                       [r["ci_high"] - y for y, (_, r) in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=model)
        _length_axis(ax, lengths, trained)
        _shade_beyond(ax, trained, lengths)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("context length (tokens)", fontsize=8)
        ax.set_ylabel("exact match (95% Wilson interval)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=120)


def _ppl_curve(path: Path, entries: list[dict], models: list[str], trained) -> None:
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for model in models:
        pts = sorted((e["length"], e["value"]) for e in entries if e["model"] == model)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
    _length_axis(ax, sorted({e["length"] for e in entries}), trained)
    _shade_beyond(ax, trained, sorted({e["length"] for e in entries}))
    ax.set_xlabel("tokens of context (bucket end)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def _fmt_ppl(e: dict | None) -> str:
    """A perplexity with its 95% interval over windows (bootstrap; entries written before intervals have none)."""
    if e is None:
        return _fmt(math.nan, "perplexity")
    ci = f" [{e['ci_low']:.2f}, {e['ci_high']:.2f}]" if "ci_low" in e else ""
    return _fmt(e["value"], "perplexity") + ci


def _fmt(x: float, metric: str) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:.2f}" if metric == "perplexity" else f"{x:.3f}"


def _markdown(entries: list[dict], meta: dict, models: list[str], tasks: list[str], figures, paired: list[dict],
              paired_ppl: list[dict]) -> str:
    trained = meta.get("trained_context")
    roles = {m["name"]: m["role"] for m in meta["models"]}
    head = "| | " + " | ".join(f"{m} ({roles[m]})" for m in models) + " |"
    sep = "|---" * (len(models) + 1) + "|"
    lines = ["# Evaluation report", ""]
    lines += [f"- **{m['name']}** ({m['role']}): `{m['path']}`" + (f", {m['parameters'] / 1e6:.1f}M parameters"
              if m.get("parameters") else "") + (f", weights sha256 `{m['weights_sha256'][:16]}`"
                                                  if m.get("weights_sha256") else "") for m in meta["models"]]
    if trained:
        lines += ["", f"Trained context ({meta.get('trained_context_source', 'teacher')}): {trained} tokens. Lengths "
                  f"beyond it are marked {DAGGER} here and `beyond_trained_context: true` in report.json."]
    lines += ["", "## Summary", "", "Recall: exact match over every length and depth, as rate [95% Wilson interval] "
              "n=prompts (in parentheses: the rate within the trained context); RULER match: mean over every length "
              "and depth. Perplexity: every bucket.", "", head, sep]
    for task in tasks:
        cells = []
        for m in models:
            inside = [e for e in entries if e["model"] == m and e["task"] == task and e["metric"] == "exact_match"
                      and not e["beyond_trained_context"]]
            cell = fmt_rate(pooled(entries, m, task))
            if inside and len(inside) != len(_cells_of(entries, m, task)):
                r = pooled(inside, m, task)
                cell += f" ({100 * r['recall']:.0f}%)"
            cells.append(cell)
        lines.append(f"| {task} exact_match | " + " | ".join(cells) + " |")
        sel = [e for e in entries if e["task"] == task and e["metric"] == "ruler_match"]
        lines.append(f"| {task} ruler_match | "
                     + " | ".join(_fmt(_mean(e["value"] for e in sel if e["model"] == m), "ruler_match")
                                  for m in models) + " |")
    ppl = [e for e in entries if e["metric"] == "perplexity"]
    for (lo, hi) in sorted({(e["length_from"], e["length"]) for e in ppl}):
        vals = {e["model"]: e for e in ppl if e["length"] == hi}
        lines.append(f"| perplexity, context {lo + 1}-{_mark(hi, trained)} | "
                     + " | ".join(_fmt_ppl(vals.get(m)) for m in models) + " |")
    if tasks:
        lines += ["", "## Recall by length", "", "Exact match over the depths: rate [95% Wilson interval] n=prompts.",
                  "", "| task | length | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
        for task in tasks:
            sel = [e for e in entries if e["task"] == task and e["metric"] == "exact_match"]
            for length in sorted({e["length"] for e in sel}):
                lines.append(f"| {task} | {_mark(length, trained)} | "
                             + " | ".join(fmt_rate(pooled(sel, m, task, length)) for m in models) + " |")
    rows = [r for r in paired if r["depth"] == ALL]
    if rows:
        lines += ["", "## Paired comparisons", "", "McNemar's exact test on the same prompts (over the depths; "
                  "per depth in report.json's `paired`): of the prompts the two models disagree on, how many only A "
                  "and only B got right, and the two-sided p of a difference that large if neither were better.", "",
                  "| task | length | A | B | n | both | A only | B only | p |", "|---" * 9 + "|"]
        for r in rows:
            length = "all" if r["length"] == ALL else _mark(r["length"], trained)
            lines.append(f"| {r['task']} | {length} | {r['a']} | {r['b']} | {r['n']} | {r['both']} | {r['only_a']} | "
                         f"{r['only_b']} | {fmt_p(r['p'])} |")
    if paired_ppl:
        lines += ["", "## Paired perplexity", "", "The same held-out windows under both models: each bucket's "
                  "perplexity and the two-sided p of the paired sign-flip test of the per-window mean NLLs.", "",
                  "| context | A | B | windows | perplexity A | perplexity B | p |", "|---" * 7 + "|"]
        for r in paired_ppl:
            lines.append(f"| {_mark(r['length'], trained)} | {r['a']} | {r['b']} | {r['n']} | {r['ppl_a']:.2f} | "
                         f"{r['ppl_b']:.2f} | {fmt_p(r['p'])} |")
    if figures:
        lines += ["", "## Figures", ""]
        for title, path in figures:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += ["## How this was produced", "", "```", meta.get("command", ""), "```", ""]
    for key in ("seed", "samples", "prompts_per_cell", "sample_seeds", "windows", "lengths", "depths", "tasks", "data",
                "device", "dtype", "scoring", "versions", "git_commit", "created"):
        if key in meta:
            value = meta[key]
            lines.append(f"- {key}: {json.dumps(value) if isinstance(value, (list, dict)) else value}")
    return "\n".join(lines) + "\n"


def _cells_of(entries: list[dict], model: str, task: str) -> list[dict]:
    return [e for e in entries if e["model"] == model and e["task"] == task and e["metric"] == "exact_match"]
