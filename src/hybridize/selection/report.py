"""What every selection leaves in its run directory: `selection.json` and `scores.png`.

selection.json: {"selector", "budget", "layers" (the chosen indices), "scores" (one number per layer), "tokens",
"seconds", "device", "details"}; an intra-layer selection adds "fusion": "intra" and "groups" (each layer's kept
KV-head groups), and its "scores" hold one list per layer. scores.png: one bar per layer, the chosen layers in
color, selector and budget in the title; for KV-head groups a layers x groups grid, the kept groups outlined. The figure uses matplotlib's object API (`Figure` on an Agg canvas), imported only here, never pyplot.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

SCORE_LABELS = {  # what the bars mean, per selector
    "uniform": "chosen (1) or not (0)",
    "explicit": "chosen (1) or not (0)",
    "random": "random draw (seeded)",
    "halo": "HALO score s_i (cap 50)",
    "kl_guided": "KL drop when attention is restored",
    "flashmorph": "gate a_l after training",
}


def write_selection(run_dir: Path, record: dict) -> Path:
    """Write selection.json (atomically) and scores.png into `run_dir`; returns the JSON's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "selection.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=_plain))
    os.replace(tmp, path)
    if record.get("groups") is not None:
        plot_group_scores(run_dir / "scores.png", record["selector"], record["budget"], record["groups"],
                          record["scores"])
    else:
        plot_scores(run_dir / "scores.png", record["selector"], record["budget"], record["layers"], record["scores"])
    return path


def _plain(value):
    """JSON for numpy / torch scalars that slip into details."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to selection.json")


def plot_scores(path: Path, selector: str, budget, layers: list[int], scores: list[float]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    L = len(scores)
    chosen = set(layers)
    fig = Figure(figsize=(max(4.0, 0.32 * L + 1.5), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [s if math.isfinite(s) else 0.0 for s in scores]
    colors = ["tab:orange" if i in chosen else "tab:gray" for i in range(L)]
    ax.bar(range(L), values, color=colors)
    ax.set_xticks(range(L))
    ax.set_xticklabels([str(i) for i in range(L)], fontsize=7 if L > 20 else 9)
    ax.set_xlabel("layer (orange: keeps attention)")
    ax.set_ylabel(SCORE_LABELS.get(selector, "score"), fontsize=8)
    ax.set_title(f"{selector}, budget {budget}: {len(layers)} of {L} layers {sorted(layers)}", fontsize=9)
    fig.savefig(path, dpi=120)


def plot_group_scores(path: Path, selector: str, budget, groups: list[list[int]], scores: list[list[float]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    L, G = len(scores), len(scores[0])
    fig = Figure(figsize=(max(4.0, 0.32 * L + 2.0), max(2.4, 0.3 * G + 1.6)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    grid = [[s if math.isfinite(s) else 0.0 for s in row] for row in scores]
    image = ax.imshow(list(map(list, zip(*grid))), aspect="auto", origin="lower", cmap="viridis")
    for i, kept in enumerate(groups):
        for j in kept:
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="tab:orange", linewidth=2))
    ax.set_xlabel("layer")
    ax.set_ylabel("KV-head group")
    fig.colorbar(image, ax=ax, label=SCORE_LABELS.get(selector, "score"))
    kept = sum(len(k) for k in groups)
    ax.set_title(f"{selector}, budget {budget}: {kept} of {L * G} KV-head groups keep attention (outlined)", fontsize=9)
    fig.savefig(path, dpi=120)
