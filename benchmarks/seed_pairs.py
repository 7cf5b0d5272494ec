"""Two conversion settings over several seeds, from one `hybridize eval` report that scored every seed's hybrid (named
`<A>-s<k>` and `<B>-s<k>`) and the teacher on the same prompts and windows: per task and length each seed's recall,
the mean over seeds, McNemar's p of A against B within each seed (the same prompts), and of each against the teacher;
per perplexity bucket each seed's perplexity and the paired sign-flip p of A against B.

    python benchmarks/seed_pairs.py REPORT.json --a gated_deltanet --b lightning --seeds 0,1,2 --out seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybridize.evaluation.compare import paired, paired_perplexity, pooled
from hybridize.provenance import provenance


def summarise(report: dict, a: str, b: str, seeds: list[int]) -> dict:
    entries = report["results"]
    teacher = next((m["name"] for m in report["meta"]["models"] if m["role"] == "teacher"), None)
    if teacher is None:
        raise ValueError("the report scored no teacher (evaluate the teacher beside the hybrids: "
                         "`hybridize eval --teacher DIR ...`)")
    names = {s: (f"{a}-s{s}", f"{b}-s{s}") for s in seeds}
    models = {m["name"] for m in report["meta"]["models"]}
    missing = sorted({n for pair in names.values() for n in pair} - models)
    if missing:
        raise ValueError(f"--a/--b/--seeds name models the report lacks: {', '.join(missing)} "
                         f"(it has {', '.join(sorted(models))})")
    recall = []
    cells = sorted({(e["task"], e["length"]) for e in entries if e["metric"] == "exact_match"})
    for task, n in cells:
        per_seed = []
        for s, (ma, mb) in names.items():
            ra, rb = pooled(entries, ma, task, n), pooled(entries, mb, task, n)
            per_seed.append({"seed": s, "n": ra["n"], a: ra["recall"], b: rb["recall"],
                             "p_a_vs_b": paired(entries, ma, mb, task, n)["p"],
                             "p_a_vs_teacher": paired(entries, ma, teacher, task, n)["p"],
                             "p_b_vs_teacher": paired(entries, mb, teacher, task, n)["p"]})
        recall.append({"task": task, "length": n, "teacher": pooled(entries, teacher, task, n)["recall"],
                       f"{a}_mean": sum(r[a] for r in per_seed) / len(per_seed),
                       f"{b}_mean": sum(r[b] for r in per_seed) / len(per_seed), "seeds": per_seed})
    perplexity = []
    for n in sorted({e["length"] for e in entries if e["metric"] == "perplexity"}):
        per_seed = []
        for s, (ma, mb) in names.items():
            pp = paired_perplexity(entries, ma, mb, n)
            per_seed.append({"seed": s, "windows": pp["n"], a: pp["ppl_a"], b: pp["ppl_b"], "p_a_vs_b": pp["p"]})
        perplexity.append({"length": n, "seeds": per_seed})
    return {"a": a, "b": b, "seeds": seeds, "teacher": teacher, "recall": recall, "perplexity": perplexity,
            "eval": {k: report["meta"][k] for k in ("command", "git_commit", "device", "seed", "prompts_per_cell")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a `hybridize eval` report.json")
    ap.add_argument("--a", required=True, help="models <A>-s<seed>")
    ap.add_argument("--b", required=True, help="models <B>-s<seed>")
    ap.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"seed_pairs: --seeds must be integers separated by commas, got {args.seeds!r}", file=sys.stderr)
        return 2
    try:
        record = summarise(json.loads(args.report.read_text()), args.a, args.b, seeds)
    except (OSError, ValueError, KeyError) as e:
        print(f"seed_pairs: {args.report}: {e}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps({**record, "summary": provenance()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
