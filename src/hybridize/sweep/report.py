"""A sweep folder's results: `sweep.json` (one row per finished cell), `README.md` (the table, the figures, the
two design-space studies' numbers beside ours) and the figures the studies drew: recall against the ratio per mixer,
held-out loss against the ratio, recall against the decode state a model keeps.

Figures use matplotlib's object API (`Figure` on an Agg canvas), never pyplot's global state. Rows of several seeds
are pooled in the figures (recall: correct answers over all prompts; loss: the mean) and listed one by one in the
table.
"""

from __future__ import annotations

import json
from pathlib import Path

FIGURES = {"recall_vs_ratio.png": "recall against the ratio, per mixer (one panel per context length)",
           "loss_vs_ratio.png": "held-out loss against the ratio, per mixer",
           "recall_vs_state.png": "recall at 1x against the decode state after 1x tokens"}

# The two studies (../shared/METHODS.md, "The design space"): what a grid is checked against.
STUDY_RECALL = {"all-linear": 0.256, "6:1": 0.39, "3:1": 0.397, "transformer": 0.42}  # arXiv 2507.06457, RULER mean
STUDY_FUSION = [("Transformer (Llama)", "transformer", 2.750, 256), ("inter-layer ~1:5", "inter", 2.735, 43),
                ("intra-layer ~1:5", "intra", 2.728, 38)]  # arXiv 2510.04800, 1B: loss, cache MiB


def write_report(out: str | Path, rows: list[dict], figures: bool = True) -> list[Path]:
    """Write sweep.json, and with `figures` README.md and the figures; returns the files written."""
    out = Path(out)
    written = [out / "sweep.json"]
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    if not figures:
        return written
    drawn = []
    if rows:
        drawn = [_recall_vs_ratio(out / "recall_vs_ratio.png", rows), _loss_vs_ratio(out / "loss_vs_ratio.png", rows),
                 _recall_vs_state(out / "recall_vs_state.png", rows)]
    (out / "README.md").write_text(readme(rows, [p.name for p in drawn if p is not None]))
    return written + [out / "README.md"] + [p for p in drawn if p is not None]


def _series(row: dict) -> str:
    """The line a row belongs to in the figures: its mixer, and its fusion / placement when not the default."""
    if row["mixer"] is None:
        return "transformer"
    tags = [t for t in (row["fusion"] if row["fusion"] != "inter" else None,
                        row["placement"] if row["placement"] not in (None, "uniform") else None) if t]
    return row["mixer"] + (f" ({', '.join(tags)})" if tags else "")


def _requested_share(ratio: str) -> float:
    """The attention share a ratio asks for: 0 all-linear, 1 / (N + 1) for N:1, 1 transformer."""
    if ratio in ("all-linear", "transformer"):
        return float(ratio == "transformer")
    return 1 / (int(ratio.split(":")[0]) + 1)


def _ratios(rows: list[dict]) -> list[str]:
    """The requested ratios in order of attention share (all-linear first, transformer last)."""
    return sorted({r["ratio"] for r in rows}, key=_requested_share)


def _pooled(rows: list[dict], key: str) -> tuple[float, float, float]:
    """Recall pooled over tasks and seeds at length `key`: (rate, lo, hi)."""
    from ..metrics.stats import wilson_interval

    k = sum(sum(v[key] for v in r["recall_correct"].values()) for r in rows)
    n = sum(r["n"] * len(r["recall_correct"]) for r in rows)
    lo, hi = wilson_interval(k, n)
    return k / n, lo, hi


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows by (series, ratio): the seeds of one mix together."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((_series(r), r["ratio"]), []).append(r)
    return out


def _style(series: list[str]):
    from matplotlib import colormaps

    mixers = sorted({s.split(" ")[0] for s in series if s != "transformer"})
    colors = colormaps["tab10"]
    style = {}
    for s in series:
        if s == "transformer":
            style[s] = dict(color="black", marker="s", linestyle="--")
            continue
        base = s.split(" ")[0]
        style[s] = dict(color=colors(mixers.index(base) % 10), marker="D" if "intra" in s else "o",
                        linestyle=":" if "(" in s else "-", markerfacecolor="none" if "intra" in s else None)
    return style


def _figure(width: float, height: float, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _per_ratio(ax, rows: list[dict], value, ratios: list[str], style) -> None:
    """One line per series over the ratio axis; `value(rows) -> (y, lo, hi)` (lo / hi None: no error bar). The
    Transformer is a point at its own ratio and a dashed line across."""
    by_series: dict[str, list[tuple[int, tuple]]] = {}
    for (series, ratio), group in _groups(rows).items():
        by_series.setdefault(series, []).append((ratios.index(ratio), value(group)))
    for i, (series, points) in enumerate(sorted(by_series.items())):
        points.sort()
        dodge = 0.05 * (i - (len(by_series) - 1) / 2)  # series with equal values stay apart
        xs = [p[0] + dodge for p in points]
        ys = [p[1][0] for p in points]
        st = style[series]
        if series == "transformer":
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=0.8)
        if points[0][1][1] is not None:
            err = [[y - p[1][1] for y, p in zip(ys, points)], [p[1][2] - y for y, p in zip(ys, points)]]
            ax.errorbar(xs, ys, yerr=err, label=series, capsize=2, **st)
        else:
            ax.plot(xs, ys, label=series, **st)
    ax.set_xticks(range(len(ratios)), ratios, rotation=30, fontsize=7)
    ax.set_xlabel("linear : attention (requested ratio)", fontsize=8)
    ax.grid(alpha=0.3)


def _recall_vs_ratio(path: Path, rows: list[dict]) -> Path:
    keys = list(rows[0]["recall_mean"])
    ratios = _ratios(rows)
    style = _style([_series(r) for r in rows])
    fig, axes = _figure(4.2, 3.4, len(keys))
    for ax, key in zip(axes, keys):
        _per_ratio(ax, rows, lambda g, key=key: _pooled(g, key), ratios, style)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"recall at {key} the training length", fontsize=9)
        ax.set_ylabel("exact match (all tasks), 95% CI", fontsize=8)
    axes[-1].legend(fontsize=6)
    fig.savefig(path, dpi=120)
    return path


def _loss_vs_ratio(path: Path, rows: list[dict]) -> Path:
    ratios = _ratios(rows)
    style = _style([_series(r) for r in rows])
    fig, (ax,) = _figure(5.5, 3.6)
    _per_ratio(ax, rows, lambda g: (sum(r["heldout_loss"] for r in g) / len(g), None, None), ratios, style)
    ax.set_title("held-out loss (tokens with up to 1x the training length of context)", fontsize=9)
    ax.set_ylabel("loss (nats / token)", fontsize=8)
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)
    return path


def _recall_vs_state(path: Path, rows: list[dict]) -> Path | None:
    rows = [r for r in rows if r.get("state_bytes")]
    if not rows:
        return None
    key = next(iter(rows[0]["recall_mean"]))
    style = _style([_series(r) for r in rows])
    fig, (ax,) = _figure(5.5, 3.8)
    largest = max(r["state_bytes"][key] for r in rows)
    unit, unit_name = (2**20, "MiB") if largest >= 2**20 else (2**10, "KiB")
    seen = set()
    for (series, ratio), group in sorted(_groups(rows).items()):
        y, lo, hi = _pooled(group, key)
        x = group[0]["state_bytes"][key] / unit
        st = {k: v for k, v in style[series].items() if k != "linestyle"}
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], capsize=2, linestyle="none",
                    label=None if series in seen else series, **st)
        ax.annotate(ratio, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        seen.add(series)
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel(f"decode state after {key} tokens ({unit_name}, bf16, batch 1)", fontsize=8)
    ax.set_ylabel(f"recall at {key}, 95% CI", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)
    return path


def _pct(rate: float, ci) -> str:
    return f"{100 * rate:.0f}% [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def _mix(row: dict) -> str:
    if row["ratio"] in ("transformer", "all-linear"):
        return "-"
    if row["fusion"] == "intra":
        return f"{row['attention_kv_groups']} of {row['kv_groups']} KV groups, in every layer"
    return f"layers {', '.join(map(str, row['attention_layers']))} ({row['placement']})"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def _ppl(row: dict, key: str) -> str:
    """A cell's perplexity at one length, with its 95% interval over windows where the row has one."""
    ci = (row.get("heldout_ppl_by_length_ci") or {}).get(key)
    return f"{row['heldout_ppl_by_length'][key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def table(rows: list[dict]) -> str:
    """The markdown table: one line per cell."""
    keys = list(rows[0]["recall_mean"])
    tasks = list(rows[0]["recall"])
    head = (["cell", "mixer", "ratio (actual)", "fusion", "attention", "params", "tokens", f"state @{keys[0]} MiB",
             "held-out loss", "held-out ppl " + " / ".join(keys)]
            + [f"{t} " + " / ".join(keys) for t in tasks] + [f"all tasks {keys[0]}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["cell"], r["mixer"] or "-", f"{r['ratio']} ({r['actual_ratio']})", r["fusion"], _mix(r),
                 f"{r['params'] / 1e6:.2f}M", f"{r['tokens']:,}",
                 _mib((r.get("state_bytes") or {}).get(keys[0])), f"{r['heldout_loss']:.3f}",
                 " / ".join(_ppl(r, k) for k in keys)]
        cells += [" / ".join(_pct(r["recall"][t][k], r["recall_ci"][t][k]) for k in keys) for t in tasks]
        cells.append(_pct(r["recall_mean"][keys[0]], r["recall_mean_ci"][keys[0]]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _beside_the_studies(rows: list[dict]) -> str:
    """Our numbers beside the two studies': mean recall at 1x by ratio (pooled over mixers and tasks), and each
    mixer's inter / intra pair at one ratio against the fusion study's ~1:5 pair."""
    key = next(iter(rows[0]["recall_mean"]))
    lines = ["Recall by ratio (the hybrid linear-attention study, arXiv 2507.06457: mean RULER recall of its 340M / "
             "1.3B models over six mixers; here: exact match pooled over the cells' mixers, seeds and tasks at "
             f"{key}, inter-layer cells):", "",
             "| ratio | study | this sweep |", "|---|---|---|"]
    inter = [r for r in rows if r["fusion"] == "inter"]
    for ratio in _ratios(inter):
        group = [r for r in inter if r["ratio"] == ratio]
        rate, lo, hi = _pooled(group, key)
        study = STUDY_RECALL.get(ratio)
        lines.append(f"| {ratio} | {'-' if study is None else f'{study:.3f}'} | {rate:.3f} [{lo:.3f}, {hi:.3f}] "
                     f"({len(group)} cell{'s' if len(group) != 1 else ''}) |")
    pairs = []
    for r in rows:
        if r["fusion"] != "intra":
            continue
        twin = [o for o in rows if o["fusion"] == "inter" and o["mixer"] == r["mixer"] and o["ratio"] == r["ratio"]
                and o["seed"] == r["seed"] and o["placement"] in ("uniform", None)]
        if twin:
            pairs.append((twin[0], r))
    if pairs:
        lines += ["", "Inter- against intra-layer at one ratio (the fusion study, arXiv 2510.04800, 1B at ~1:5: "
                  + "; ".join(f"{name} loss {loss:.3f}, cache {mib} MiB" for name, _, loss, mib in STUDY_FUSION)
                  + "); here held-out loss and decode state at 1x, and recall at 1x:", "",
                  "| mixer | ratio (actual) | seed | fusion | params | held-out loss | state MiB | recall |",
                  "|---|---|---|---|---|---|---|---|"]
        transformer = [o for o in rows if o["ratio"] == "transformer"]
        for inter_row, intra_row in pairs:
            for r in (inter_row, intra_row):
                lines.append(f"| {r['mixer']} | {r['ratio']} ({r['actual_ratio']}) | {r['seed']} | {r['fusion']} | "
                             f"{r['params']:,} | {r['heldout_loss']:.3f} | {_mib((r.get('state_bytes') or {}).get(key))} "
                             f"| {_pct(r['recall_mean'][key], r['recall_mean_ci'][key])} |")
        for r in transformer:
            lines.append(f"| transformer | - | {r['seed']} | - | {r['params']:,} | {r['heldout_loss']:.3f} | "
                         f"{_mib((r.get('state_bytes') or {}).get(key))} | "
                         f"{_pct(r['recall_mean'][key], r['recall_mean_ci'][key])} |")
    return "\n".join(lines)


def readme(rows: list[dict], figures: list[str]) -> str:
    if not rows:
        return "# Design-space sweep\n\nNo cell has finished yet: run the same command again.\n"
    r0 = rows[0]
    keys = list(r0["recall_mean"])
    mixers = sorted({r["mixer"] for r in rows if r["mixer"]})
    seeds = sorted({r["seed"] for r in rows})
    provenance = {k: sorted({str(r[k]) for r in rows}) for k in ("command", "commit", "device")}
    parts = [
        f"# Design-space sweep: size `{r0['size']}`",
        "",
        f"{len(rows)} cells ({', '.join(mixers) or 'no linear mixer'}; ratios {', '.join(_ratios(rows))}; seeds "
        f"{', '.join(map(str, seeds))}), each trained from scratch by `hybridize pretrain` on the same tokenizer, "
        f"tokens, data order and seed ({r0['tokens']:,} tokens, {r0['steps']} steps of {r0['train_len']}-token rows), "
        f"then scored on held-out text and synthetic recall at {' / '.join(keys)} the training length. Every row is "
        "in [sweep.json](sweep.json); each cell's training run (metrics, curves, TensorBoard) under `cells/<cell>/run/`.",
        "",
        "Produced by: " + "; ".join(f"{k}: {', '.join(f'`{v}`' for v in vs)}" for k, vs in provenance.items()) + ".",
        "",
        "How to read it:",
        "- **Ratio** `N:1`: N linear layers per attention layer; a depth of L layers keeps k = round(L / (N + 1)) "
        "attention layers (at least one), the nearest ratio it holds (the actual one in brackets). `all-linear`: no "
        "attention; `transformer`: no linear layer.",
        "- **Placement** (inter-layer): `uniform` puts each attention layer at the end of a group of ~L/k layers, never "
        "first (the hybrid linear-attention study's layout); `middle` spreads them over the middle half (the fusion "
        "study's advice).",
        "- **Intra-layer** cells keep the same number of KV-head groups as the inter-layer mix of their ratio, spread "
        "over every layer: each layer runs softmax attention on its kept groups and the mixer on the other heads, "
        "side by side (concatenated before the output projection). Same KV cache and, up to per-layer norms, the same "
        "parameter count as the inter-layer twin (the params column).",
        f"- **Recall**: exact match of the greedy answer, {r0['n']} prompts per task and length (random depths, "
        "held-out filler); [95% Wilson interval]. **Held-out loss**: mean next-token loss on held-out text of the "
        f"tokens with up to {r0['train_len']} tokens of context; perplexity by context bucket "
        f"(1x: up to {r0['train_len']}, 2x: the next {r0['train_len']}, ...). **State**: KV cache + recurrent and "
        "convolution states in bytes (bf16, batch 1) after 1x tokens.",
        "",
        table(rows),
        "",
    ]
    for name in figures:
        parts += [f"![{FIGURES[name]}]({name})", ""]
    parts += ["## Beside the two studies", "", _beside_the_studies(rows), ""]
    return "\n".join(parts)


__all__ = ["FIGURES", "readme", "table", "write_report"]
