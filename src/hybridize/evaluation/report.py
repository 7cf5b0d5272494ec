"""The comparison report: `report.json` (one entry per model, metric, length and depth), `report.md` (teacher vs
students tables, the figures, how it was produced) and PNG figures: NIAH heatmaps (depth x length), recall vs
length, perplexity by context length. Points past the teacher's trained context are marked "†" in tables and tick
labels and shaded in the curves.

Figures use matplotlib's object API (`Figure`, Agg canvas), never pyplot's global state.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

DAGGER = "†"


def write_report(out: str | Path, entries: list[dict], meta: dict) -> list[Path]:
    """Write report.json, report.md and the figures into `out`; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m["name"] for m in meta["models"]]
    trained = meta.get("trained_context")
    written = [out / "report.json"]
    written[0].write_text(json.dumps({"meta": meta, "results": entries}, indent=2) + "\n", encoding="utf-8")
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
        figures.insert(0, ("Recall (exact match, mean over depths) vs context length", path))
    ppl = [e for e in entries if e["metric"] == "perplexity"]
    if ppl:
        path = out / "perplexity_by_length.png"
        _ppl_curve(path, ppl, models, trained)
        figures.append(("Perplexity by context length", path))
    written += [p for _, p in figures]
    md = out / "report.md"
    md.write_text(_markdown(entries, meta, models, tasks, figures), encoding="utf-8")
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


def _by_length(entries: list[dict], model: str) -> dict[int, float]:
    """Mean value over depths, per length, for one model."""
    acc = defaultdict(list)
    for e in entries:
        if e["model"] == model:
            acc[e["length"]].append(e["value"])
    return {k: _mean(v) for k, v in sorted(acc.items())}


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
    fig.suptitle(f"{task}: exact match", fontsize=10)
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
        for model in models:
            curve = _by_length(sel, model)
            if curve:
                ax.plot(list(curve), list(curve.values()), marker="o", label=model)
        _length_axis(ax, sorted({e["length"] for e in sel}), trained)
        _shade_beyond(ax, trained, sorted({e["length"] for e in sel}))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("context length (tokens)", fontsize=8)
        ax.set_ylabel("exact match", fontsize=8)
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


def _fmt(x: float, metric: str) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:.2f}" if metric == "perplexity" else f"{x:.3f}"


def _markdown(entries: list[dict], meta: dict, models: list[str], tasks: list[str], figures) -> str:
    trained = meta.get("trained_context")
    roles = {m["name"]: m["role"] for m in meta["models"]}
    head = "| | " + " | ".join(f"{m} ({roles[m]})" for m in models) + " |"
    sep = "|---" * (len(models) + 1) + "|"
    lines = ["# Evaluation report", ""]
    lines += [f"- **{m['name']}** ({m['role']}): `{m['path']}`" + (f", {m['parameters'] / 1e6:.1f}M parameters"
              if m.get("parameters") else "") for m in meta["models"]]
    if trained:
        lines += ["", f"Trained context ({meta.get('trained_context_source', 'teacher')}): {trained} tokens. Lengths "
                  f"beyond it are marked {DAGGER} here and `beyond_trained_context: true` in report.json."]
    lines += ["", "## Summary", "", "Recall: exact match, mean over every length and depth (and over the lengths "
              "within the trained context). Perplexity: every bucket.", "", head, sep]
    for task in tasks:
        for metric in ("exact_match", "ruler_match"):
            sel = [e for e in entries if e["task"] == task and e["metric"] == metric]
            cells = []
            for m in models:
                mine = [e["value"] for e in sel if e["model"] == m]
                inside = [e["value"] for e in sel if e["model"] == m and not e["beyond_trained_context"]]
                cell = _fmt(_mean(mine), metric)
                if inside and len(inside) != len(mine):
                    cell += f" ({_fmt(_mean(inside), metric)})"
                cells.append(cell)
            lines.append(f"| {task} {metric} | " + " | ".join(cells) + " |")
    ppl = [e for e in entries if e["metric"] == "perplexity"]
    for (lo, hi) in sorted({(e["length_from"], e["length"]) for e in ppl}):
        vals = {e["model"]: e["value"] for e in ppl if e["length"] == hi}
        lines.append(f"| perplexity, context {lo + 1}-{_mark(hi, trained)} | "
                     + " | ".join(_fmt(vals.get(m, math.nan), "perplexity") for m in models) + " |")
    if tasks:
        lines += ["", "## Recall by length", "", "Exact match, mean over depths.", "",
                  "| task | length | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
        for task in tasks:
            sel = [e for e in entries if e["task"] == task and e["metric"] == "exact_match"]
            per = {m: _by_length(sel, m) for m in models}
            for length in sorted({e["length"] for e in sel}):
                lines.append(f"| {task} | {_mark(length, trained)} | "
                             + " | ".join(_fmt(per[m].get(length, math.nan), "exact_match") for m in models) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        for title, path in figures:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += ["## How this was produced", "", "```", meta.get("command", ""), "```", ""]
    for key in ("seed", "samples", "sample_seeds", "lengths", "depths", "tasks", "data", "device", "dtype",
                "scoring", "versions", "git_commit", "created"):
        if key in meta:
            value = meta[key]
            lines.append(f"- {key}: {json.dumps(value) if isinstance(value, (list, dict)) else value}")
    return "\n".join(lines) + "\n"
