"""The finetuned against the distilled student of each `benchmarks/finetune_variants.sh` variant, from its
`hybridize eval --stages` report: recall per task and length (Wilson 95%, McNemar's exact p on the same prompts) and
perplexity per bucket (paired sign-flip p on the same windows); and, for any variant named with --weights, whether its
finetuned weights differ from the distilled ones (max absolute difference over all tensors).

    python benchmarks/finetune_summary.py OUT lr1e-4 lr2e-5 ... [--weights lr0] --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from hybridize.evaluation.compare import paired, paired_perplexity, pooled
from hybridize.provenance import provenance


def variant_rows(folder: Path) -> dict:
    report = json.loads((folder / "eval" / "report.json").read_text())
    entries = report["results"]
    recall = []
    for task in dict.fromkeys(e["task"] for e in entries if e["metric"] == "exact_match"):
        for n in sorted({e["length"] for e in entries if e["task"] == task and e["metric"] == "exact_match"}):
            d, f = pooled(entries, "distilled", task, n), pooled(entries, "finetuned", task, n)
            recall.append({"task": task, "length": n, "n": f["n"], "distilled": d["recall"], "finetuned": f["recall"],
                           "ci_low": f["ci_low"], "ci_high": f["ci_high"],
                           "p": paired(entries, "finetuned", "distilled", task, n)["p"]})
    ppl = []
    for n in sorted({e["length"] for e in entries if e["metric"] == "perplexity"}):
        pp = paired_perplexity(entries, "finetuned", "distilled", n)
        ppl.append({"length": n, "windows": pp["n"], "distilled": pp["ppl_b"], "finetuned": pp["ppl_a"], "p": pp["p"]})
    done = json.loads((folder / "stages" / "finetune" / "done.json").read_text())
    meta = report["meta"]
    return {"recall": recall, "perplexity": ppl, "finetune": done["result"],
            "eval": {k: meta[k] for k in ("command", "git_commit", "device", "seed", "samples", "windows")}}


def weight_change(folder: Path) -> dict:
    a = load_file(next((folder / "stages" / "distill" / "model").glob("*.safetensors")))
    b = load_file(next((folder / "stages" / "finetune" / "model").glob("*.safetensors")))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {"tensors": len(a), "same_names": sorted(a) == sorted(b), "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="finetune_variants.sh's OUT folder")
    ap.add_argument("variants", nargs="*", help="variants with an evaluation (OUT/NAME/eval)")
    ap.add_argument("--weights", nargs="*", default=[], help="variants whose weights are compared with distill's")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = ap.parse_args(argv)
    for name in [*a.variants, *a.weights]:
        if not (a.folder / name / "stages" / "finetune" / "done.json").is_file():
            print(f"finetune_summary: {a.folder / name} has no finetune stage", file=sys.stderr)
            return 2
    record = {"variants": {name: variant_rows(a.folder / name) for name in a.variants},
              "weights": {name: weight_change(a.folder / name) for name in a.weights},
              **provenance(), "device": "cpu", "seed": 0}
    a.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
