"""Two rows of quality grids on the same teacher and prompts, prompt by prompt: for every conversion seed the two have
in common, each task and length, both recalls with Wilson 95% intervals and McNemar's exact p on the same prompts;
where both conversions have perplexities (grids run since it was measured), each bucket's perplexity with its interval
and the paired sign-flip test of the per-window NLLs on the same windows.
This is how an intra-layer grid (results/quality-intra) is set beside the inter-layer one (results/quality), or one
selector beside another in a grid:

    python benchmarks/quality_compare.py results/quality-intra:lightning/uniform results/quality:lightning/halo \\
        --out results/quality-intra/compare-uniform-vs-halo.json

A side is STATE_DIR:MIXER/SELECTOR (STATE_DIR holds a quality_grid.py state.json). Two grids pair only when they
converted the same teacher (weights hash) and scored the same prompts (each cell's fingerprint); otherwise the script
says which and writes nothing. Prints a Markdown table; --out also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybridize.evaluation.compare import fmt_p, paired, paired_perplexity, pooled

STATE = "state.json"


def parse_side(text: str) -> tuple[Path, str]:
    folder, sep, row = text.rpartition(":")
    if not sep or row.count("/") != 1 or not all(row.split("/")):
        raise ValueError(f"side {text!r}: expected STATE_DIR:MIXER/SELECTOR, e.g. results/quality:lightning/halo")
    if not (Path(folder) / STATE).is_file():
        raise ValueError(f"side {text!r}: {Path(folder) / STATE} does not exist")
    return Path(folder), row


def label(state: dict, row: str) -> str:
    return f"{row} ({state['settings'].get('fusion', 'inter')})"


def compare(a: tuple[dict, str], b: tuple[dict, str]) -> list[dict]:
    """Rows: seed, task, length (x the trained context), length_tokens, a / b (rate dicts), paired counts and p."""
    (sa, ra), (sb, rb) = a, b
    ta, tb = sa["teacher"]["weights_sha256"], sb["teacher"]["weights_sha256"]
    if ta != tb:
        raise ValueError(f"teachers differ: {ta[:16]} and {tb[:16]}: a paired comparison needs one teacher")
    units_a = {u["seed"]: (k, u) for k, u in sa["units"].items() if f"{u['mixer']}/{u['selector']}" == ra}
    units_b = {u["seed"]: (k, u) for k, u in sb["units"].items() if f"{u['mixer']}/{u['selector']}" == rb}
    for name, units, row in (("first", units_a, ra), ("second", units_b, rb)):
        if not units:
            raise ValueError(f"{name} side: no conversion {row} in its state.json")
    seeds = sorted(set(units_a) & set(units_b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(units_a)} and {sorted(units_b)}")
    trained = sa["teacher"]["trained_context"]
    rows = []
    for seed in seeds:
        (ka, ua), (kb, ub) = units_a[seed], units_b[seed]
        entries = [{**e, "model": "a", "metric": "exact_match"} for e in ua["entries"]]
        entries += [{**e, "model": "b", "metric": "exact_match"} for e in ub["entries"]]
        for task in dict.fromkeys(e["task"] for e in ua["entries"]):
            for n in sorted({e["length"] for e in ua["entries"] if e["task"] == task}):
                p = paired(entries, "a", "b", task, n)  # raises on different prompts
                if p is None:
                    continue
                rows.append({"seed": seed, "task": task, "length": n / trained, "length_tokens": n,
                             "a": {"unit": ka, "fusion": sa["settings"].get("fusion", "inter"), "layers": ua["layers"],
                                   "groups": ua.get("groups"), **pooled(entries, "a", task, n)},
                             "b": {"unit": kb, "fusion": sb["settings"].get("fusion", "inter"), "layers": ub["layers"],
                                   "groups": ub.get("groups"), **pooled(entries, "b", task, n)},
                             **p})
        ppl = [{**e, "model": "a", "metric": "perplexity"} for e in ua.get("perplexity", [])]
        ppl += [{**e, "model": "b", "metric": "perplexity"} for e in ub.get("perplexity", [])]
        for e in ua.get("perplexity", []):
            p = paired_perplexity(ppl, "a", "b", e["length"])  # raises on different windows
            if p is None:
                continue
            other = next(x for x in ub["perplexity"] if x["length"] == e["length"])
            rows.append({"seed": seed, "task": "perplexity", "length": e["length"] / trained,
                         "length_tokens": e["length"], "length_from": e["length_from"],
                         "a": {"unit": ka, "perplexity": e["value"], "ci_low": e["ci_low"], "ci_high": e["ci_high"]},
                         "b": {"unit": kb, "perplexity": other["value"], "ci_low": other["ci_low"],
                               "ci_high": other["ci_high"]}, **p})
    return rows


def _pct(r: dict) -> str:
    return f"{100 * r['recall']:.0f}% [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}]"


def markdown(name_a: str, name_b: str, rows: list[dict]) -> str:
    ppl = [r for r in rows if r["task"] == "perplexity"]
    rows = [r for r in rows if r["task"] != "perplexity"]
    lines = [f"A = {name_a}, B = {name_b}: exact match with Wilson 95% intervals on the same prompts; only A / only B: "
             "prompts one of them got right; p: McNemar's exact test.", "",
             "| seed | task | length | n | A | B | only A | only B | p |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['task']} | {r['length']:g}x | {r['n']} | {_pct(r['a'])} | {_pct(r['b'])} | "
                     f"{r['only_a']} | {r['only_b']} | {fmt_p(r['p'])} |")
    wins_a = sum(r["p"] < 0.05 and r["only_a"] > r["only_b"] for r in rows)
    wins_b = sum(r["p"] < 0.05 and r["only_b"] > r["only_a"] for r in rows)
    lines += ["", f"Of {len(rows)} cells (seed x task x length): A better in {wins_a}, B better in {wins_b}, "
              f"no significant difference (p >= 0.05) in {len(rows) - wins_a - wins_b}."]
    if ppl:
        lines += ["", "Perplexity on the same windows, by context position: each with its 95% bootstrap interval over "
                  "windows; p: paired sign-flip test of the per-window NLLs.", "",
                  "| seed | tokens | windows | A | B | p |", "|---|---|---|---|---|---|"]
        for r in ppl:
            a, b = r["a"], r["b"]
            lines.append(f"| {r['seed']} | {r['length_from'] + 1}-{r['length_tokens']} ({r['length']:g}x) | {r['n']} | "
                         f"{a['perplexity']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | "
                         f"{b['perplexity']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] | {fmt_p(r['p'])} |")
        lower_a = sum(r["p"] < 0.05 and r["nll_a"] < r["nll_b"] for r in ppl)
        lower_b = sum(r["p"] < 0.05 and r["nll_b"] < r["nll_a"] for r in ppl)
        lines += ["", f"Of {len(ppl)} buckets (seed x context): A lower in {lower_a}, B lower in {lower_b}, no "
                  f"significant difference in {len(ppl) - lower_a - lower_b}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("a", help="STATE_DIR:MIXER/SELECTOR")
    p.add_argument("b", help="STATE_DIR:MIXER/SELECTOR")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        (fa, ra), (fb, rb) = parse_side(args.a), parse_side(args.b)
        sa, sb = (json.loads((f / STATE).read_text()) for f in (fa, fb))
        rows = compare((sa, ra), (sb, rb))
    except ValueError as err:
        print(f"quality_compare: error: {err}", file=sys.stderr)
        return 2
    text = markdown(label(sa, ra), label(sb, rb), rows)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(json.dumps({"a": args.a, "b": args.b, "teacher_sha256":
                                              sa["teacher"]["weights_sha256"], "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
