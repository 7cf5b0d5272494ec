"""Episode-answer loss, corpus loss and (where recorded) held-out loss against optimizer step for teachers trained
side by side (their run/metrics.jsonl, or metrics.jsonl.gz as committed under results/): where retrieval is learned,
and whether the corpus was memorised first.

    python benchmarks/plot_teachers.py results/gpu/teachers-small/teacher-small-{a,b,c1,c2} --out curves.png
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, or of metrics.jsonl.gz where only the compressed copy exists."""
    path = run / "metrics.jsonl"
    f = path.open() if path.is_file() else gzip.open(run / "metrics.jsonl.gz", "rt")
    with f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="folders holding metrics.jsonl[.gz] (and recipe.json for the legend)")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", nargs="+", help="one legend label per run (default: the folder's name)")
    a = p.parse_args()
    if a.labels is not None and len(a.labels) != len(a.runs):
        p.error(f"--labels: {len(a.labels)} given for {len(a.runs)} runs; give one per run")
    runs = [(run, read_metrics(run)) for run in map(Path, a.runs)]
    heldout = any("eval/heldout_loss" in x for _, rows in runs for x in rows)
    fig, axes = plt.subplots(1, 3 if heldout else 2, figsize=(16 if heldout else 11, 4))
    ax1, ax2 = axes[:2]
    for i, (run, rows) in enumerate(runs):
        label = a.labels[i] if a.labels else run.name
        if (run / "recipe.json").is_file():
            r = json.loads((run / "recipe.json").read_text())
            label += (f" (batch {r['train']['batch_size']}, {r['episode_rows']}/{r['train']['micro_batch_size']} "
                      f"episode rows, lr {r['train']['lr']:g})")
        steps = [x["step"] for x in rows]
        ax1.plot(steps, [x["answer_loss"] for x in rows], label=label, lw=1)
        ax2.plot(steps, [x["lm_loss"] for x in rows], label=label, lw=1)
        evals = [x for x in rows if "eval/heldout_loss" in x]
        if heldout and evals:
            axes[2].plot([x["step"] for x in evals], [x["eval/heldout_loss"] for x in evals], "o-", ms=3,
                         label=label, lw=1)
    if heldout:
        axes[2].set(xlabel="optimizer step", ylabel="CE on held-out text", title="held-out (eval/heldout_loss)")
    ax1.set(xlabel="optimizer step", ylabel="CE on episode answers", title="retrieval episodes")
    ax2.set(xlabel="optimizer step", ylabel="CE on corpus rows", yscale="log", title="corpus rows (training text)")
    ax1.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
