"""Log-log plots of a bench run: prefill latency and time per output token against context length, one line per
(variant and mixer, batch), each with its roofline bound dashed in the same colour; an x marks a run out of memory."""

from __future__ import annotations

from pathlib import Path


def plot_latency(rows: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    name = lambda r: r["variant"] if r.get("mixer") is None else f"{r['variant']} {r['mixer']}"  # noqa: E731
    series = sorted({(name(r), r["batch"]) for r in rows})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, bound, label in ((axes[0], "prefill_s", "prefill_bound_s", "prefill latency (s)"),
                                  (axes[1], "tpot_ms", "tpot_bound_ms", "time per output token (ms)")):
        for n, (variant, batch) in enumerate(series):
            colour = colours[n % len(colours)]
            mine = [r for r in rows if name(r) == variant and r["batch"] == batch]
            done = [r for r in mine if r[key] is not None]
            ax.plot([r["context"] for r in done], [r[key] for r in done], "o-", color=colour,
                    label=f"{variant} B={batch}")
            ax.plot([r["context"] for r in mine], [r[bound] for r in mine], "--", color=colour, alpha=0.6)
            for r in mine:
                if r["oom"]:
                    ax.plot([r["context"]], [r[bound]], "x", color=colour, markersize=10)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}  (dashed: roofline bound; x: out of memory)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
