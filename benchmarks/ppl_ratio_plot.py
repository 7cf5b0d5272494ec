r"""Hybrid-to-teacher perplexity ratio against the teacher's own perplexity, one point per model per text.

    python benchmarks/ppl_ratio_plot.py \
        --text "builtin:train" ppl-checks/builtin-train-bfloat16/report.json \
        --text "stdlib-code:heldout" ppl-checks/stdlib-code-heldout-bfloat16/report.json \
        --text "builtin:heldout, 8 x 4097" lightning-25/report/report.json:1024:lightning-25- gla-25/report/report.json:1024:gla-25- \
        --skip all-linear --out ppl-ratio.png

Each `--text` names a text and one or more `hybridize eval` report.json files scored on it, each as
`PATH[:LENGTH[:PREFIX]]`: the perplexity bucket to read (default: the report's only, or longest, length) and a prefix
for its students' names (to tell rows apart when several reports are merged into one text). Every report of a text
must hold the same teacher value there. Writes the plot and, beside it, a JSON of the points with provenance.

The question it answers: is a hybrid's perplexity relative to its teacher's a property of the hybrid, or of how well
the teacher knows the text? Points that fall with the teacher's perplexity say the latter.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hybridize.provenance import provenance


def _parse(spec: str) -> tuple[Path, int | None, str]:
    path, _, rest = spec.partition(":")
    length, _, prefix = rest.partition(":")
    try:
        return Path(path), int(length) if length else None, prefix
    except ValueError:
        raise ValueError(f"--text report {spec!r}: LENGTH must be an integer (PATH[:LENGTH[:PREFIX]])") from None


def text_points(label: str, specs: list[str], skip: tuple[str, ...] = ()) -> dict:
    """{"text", "teacher": ppl, "models": {name: ppl}} of one text, from its reports (students whose name holds a
    `skip` string left out)."""
    teacher, models = None, {}
    for spec in specs:
        path, length, prefix = _parse(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--text {label!r}: no report at {path}")
        rows = [r for r in json.loads(path.read_text())["results"] if r["metric"] == "perplexity"]
        if not rows:
            raise ValueError(f"--text {label!r}: {path} holds no perplexity result")
        lengths = sorted({r["length"] for r in rows})
        use = length if length is not None else lengths[-1]
        if use not in lengths:
            raise ValueError(f"--text {label!r}: {path} has perplexity at lengths {lengths}, not {use}")
        rows = [r for r in rows if r["length"] == use]
        t = [r["value"] for r in rows if r["role"] == "teacher"]
        if len(t) != 1:
            raise ValueError(f"--text {label!r}: {path} holds {len(t)} teacher values at length {use}, not one")
        if teacher is not None and not math.isclose(t[0], teacher, rel_tol=1e-6):
            raise ValueError(f"--text {label!r}: {path} scores the teacher {t[0]:.4f}, another report {teacher:.4f}: "
                             "not the same text or teacher")
        teacher = t[0]
        models.update({prefix + r["model"]: r["value"] for r in rows
                       if r["role"] != "teacher" and not any(x in r["model"] for x in skip)})
    return {"text": label, "teacher": teacher, "models": models}


def plot(texts: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, t in enumerate(texts):
        colour = f"C{i}"
        for name, ppl in t["models"].items():
            hollow = name.endswith("-distill")
            ax.scatter(t["teacher"], ppl / t["teacher"], s=28, marker="o", edgecolors=colour,
                       facecolors="none" if hollow else colour, zorder=3)
        ax.scatter([], [], color=colour, label=f"{t['text']} (teacher {t['teacher']:.2f})")
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("teacher's perplexity on the text (log)")
    ax.set_ylabel("hybrid / teacher perplexity (log)")
    ax.set_title("Hybrids against their teacher, by text (hollow: after distill, before finetune)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", nargs="+", action="append", required=True, metavar=("LABEL", "REPORT"),
                   help="a text's label, then its report.json files as PATH[:LENGTH[:PREFIX]]")
    p.add_argument("--skip", action="append", default=[], metavar="SUBSTR",
                   help="leave out students whose name holds SUBSTR (e.g. all-linear); repeatable")
    p.add_argument("--out", type=Path, required=True, help="the plot (.png); its points go to the same name .json")
    args = p.parse_args(argv)
    for t in args.text:
        if len(t) < 2:
            p.error(f"--text {t[0]!r} needs at least one report.json after its label")
    try:
        texts = [text_points(t[0], t[1:], tuple(args.skip)) for t in args.text]
    except (OSError, ValueError) as e:
        sys.exit(f"ppl_ratio_plot: {e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(texts, args.out)
    points = [{**t, "ratios": {m: v / t["teacher"] for m, v in t["models"].items()}} for t in texts]
    args.out.with_suffix(".json").write_text(json.dumps(
        {**provenance(), "device": "cpu (plotting; each report names the device that scored it)", "seed": None,
         "reports": {t[0]: t[1:] for t in args.text}, "texts": points}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
