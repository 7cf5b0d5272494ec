r"""Recall of teacher and hybrids at 1x / 2x / 4x the teacher's length, one panel per (task, mixer and budget), from
compare_selectors runs (their selectors.json): grouped bars per selector, the run's own teacher beside them.

    python benchmarks/recall_grid.py results/gpu/mixers-small-code-teacher/*/selectors.json \
        results/gpu/mixers-small-lightning-gla/*/selectors.json --out recall-grid.png

Runs of the same mixer and budget (e.g. a later FlashMorph run in its own folder) share a panel when they share a
teacher; each panel's teacher is its runs' own, so runs of different teachers are never drawn against one teacher.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASKS = ("passkey", "niah_single_2")
ORDER = ("teacher", "uniform", "halo", "flashmorph", "kl_guided", "random", "all-linear")


def _mixer(rec: dict) -> str:
    return next((o.split("=", 1)[1] for o in rec.get("overrides", []) if o.startswith("mixer=")), "lightning")


def panels(records: list[dict]) -> list[dict]:
    """[{"title", "lengths", "bars": {name: {task: [value per length]}}}], one per (mixer, budget, teacher)."""
    out: dict[tuple, dict] = {}
    for rec in records:
        ls = rec["lengths"]
        key = (_mixer(rec), str(rec["budget"]), rec["teacher"], json.dumps(rec["teacher_results"], sort_keys=True))
        if key not in out:
            t = rec["teacher_results"]
            out[key] = {"title": f"{key[0]} {float(key[1]):.1%}".replace(".0%", "%"), "lengths": ls,
                        "bars": {"teacher": {k: [t.get(f"{k}@{n}") for n in ls] for k in TASKS}}}
        elif out[key]["lengths"] != ls:
            raise ValueError(f"{key[0]} at {key[1]}: runs with lengths {out[key]['lengths']} and {ls} cannot share a "
                             "panel")
        for r in rec["rows"]:
            out[key]["bars"][r["selector"]] = {k: [r.get(f"{k}@{n}") for n in ls] for k in TASKS}
    for p in out.values():
        p["bars"] = dict(sorted(p["bars"].items(),
                                key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))
    # panels of one mixer side by side, larger budgets first
    return [out[k] for k in sorted(out, key=lambda k: (k[0], -float(k[1])))]


def plot(ps: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(3.2 * len(ps) + 1, 6.0)  # one panel: room for the title
    fig, axes = plt.subplots(len(TASKS), len(ps), figsize=(width, 5.2), squeeze=False, sharey=True)
    names = list(dict.fromkeys(n for p in ps for n in p["bars"]))
    colours = {n: ("black" if n == "teacher" else f"C{i}") for i, n in enumerate(names)}
    for j, p in enumerate(ps):
        ls = p["lengths"]
        width = 0.8 / len(p["bars"])
        for i, task in enumerate(TASKS):
            ax = axes[i][j]
            for b, (name, vals) in enumerate(p["bars"].items()):
                xs = [x + (b - (len(p["bars"]) - 1) / 2) * width for x in range(len(ls))]
                ax.bar(xs, [100 * (v or 0) for v in vals[task]], width, color=colours[name], label=name)
            ax.set_xticks(range(len(ls)), [f"{n // ls[0]}x" for n in ls])
            ax.set_ylim(0, 105)
            ax.grid(True, axis="y", alpha=0.3)
            if i == 0:
                ax.set_title(p["title"], fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{task}\nexact match %")
    handles = {}  # one legend entry per name, over every panel
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle("Recall at 1x / 2x / 4x the teacher's length (each panel: its own teacher)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", type=Path, help="selectors.json files of compare_selectors runs")
    p.add_argument("--out", type=Path, required=True, help="the plot (.png)")
    a = p.parse_args(argv)
    missing = [str(f) for f in a.records if not f.is_file()]
    if missing:
        sys.exit(f"recall_grid: no such selectors.json: {', '.join(missing)}")
    try:
        ps = panels([json.loads(f.read_text()) for f in a.records])
    except (KeyError, ValueError) as e:
        sys.exit(f"recall_grid: {e} (are these compare_selectors.py's selectors.json files?)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    plot(ps, a.out)
    print(f"wrote {a.out} ({len(ps)} panels)")


if __name__ == "__main__":
    main()
