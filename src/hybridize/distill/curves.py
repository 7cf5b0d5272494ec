"""`curves.png` beside a run's metrics.jsonl: the training loss (and its parts), the held-out values and the learning
rate against tokens seen, redrawn whenever a run stops (finished or not), so a look tells how a run went."""

from __future__ import annotations

import json
import math
from pathlib import Path

# extras that are parts of the loss (teacher: corpus CE and episode-answer CE); per-layer values stay out
PARTS = ("lm_loss", "answer_loss")


def plot_curves(metrics_path: Path, out: Path, title: str) -> Path | None:
    """Draw `out` from the rows of `metrics_path`; None when there are no rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    tokens = [r["tokens"] for r in rows]
    evals = sorted({k for r in rows for k in r if k.startswith("eval/") and not k.endswith("_ppl")})
    lrs = sorted({k for r in rows for k in r if k.startswith("lr/")})
    panels = 2 + bool(evals)
    fig = Figure(figsize=(4.2 * panels, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)

    ax = axes[0]
    for key in ("loss", *PARTS):
        points = [(t, r[key]) for t, r in zip(tokens, rows) if key in r and _positive(r[key])]
        if points:
            ax.plot(*zip(*points), label=key, lw=0.8 if key == "loss" else 0.6)
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_title("training loss", fontsize=9)
    ax.legend(fontsize=7)

    if evals:
        ax = axes[1]
        for key in evals:
            points = [(t, r[key]) for t, r in zip(tokens, rows) if key in r and _positive(r[key])]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=key.removeprefix("eval/"))
        if "eval/heldout_loss" in evals and any("lm_loss" in r for r in rows):  # the gap = memorisation
            points = [(t, r["lm_loss"]) for t, r in zip(tokens, rows) if _positive(r.get("lm_loss"))]
            ax.plot(*zip(*points), color="tab:gray", lw=0.6, label="lm_loss (training text)")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title("held-out", fontsize=9)
        ax.legend(fontsize=7)

    ax = axes[-1]
    for key in lrs:
        ax.plot(tokens, [r.get(key, math.nan) for r in rows], label=key.removeprefix("lr/"))
    ax.set_xlabel("tokens")
    ax.set_title("learning rate", fontsize=9)
    if len(lrs) > 1:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110)
    return out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
