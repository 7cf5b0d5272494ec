"""Episode-answer loss and corpus loss against optimizer step for teachers trained side by side (their
run/metrics.jsonl): where retrieval is learned, and whether the corpus was memorised first.

    python benchmarks/gpu-plan/plot_teachers.py results/gpu/teachers-small/teacher-small-{a,b,c1,c2} --out curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="folders holding metrics.jsonl (and recipe.json for the legend)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for run in map(Path, a.runs):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        label = run.name
        if (run / "recipe.json").is_file():
            r = json.loads((run / "recipe.json").read_text())
            label += (f" (batch {r['train']['batch_size']}, {r['episode_rows']}/{r['train']['micro_batch_size']} "
                      f"episode rows, lr {r['train']['lr']:g})")
        steps = [x["step"] for x in rows]
        ax1.plot(steps, [x["answer_loss"] for x in rows], label=label, lw=1)
        ax2.plot(steps, [x["lm_loss"] for x in rows], label=label, lw=1)
    ax1.set(xlabel="optimizer step", ylabel="CE on episode answers", title="retrieval episodes")
    ax2.set(xlabel="optimizer step", ylabel="CE on corpus rows", yscale="log", title="corpus (builtin:train)")
    ax1.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
