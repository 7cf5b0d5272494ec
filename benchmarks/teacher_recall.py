"""Exact-match recall of trained teachers on the synthetic tasks at a few lengths, on held-out filler text: the quick
check of whether a teacher retrieves at all (and where it stops) before anything is converted from it.

    python benchmarks/teacher_recall.py /tmp/work/teacher-small-c1 --device cuda:0 --out recall.json

Each model: passkey, niah_single_2 and mqar at 256 / 512 / 1024 tokens (default), over 3 depths, with `hybridize
eval`'s prompts per cell (201 over the depths on CUDA, 8 per depth on the CPU; --samples sets the per-depth count);
each score is the exact match over the depths with its Wilson 95% interval and n, and the teacher's weights hash.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybridize.evaluation.compare import pooled
from hybridize.evaluation.runner import EvalConfig, run_eval
from hybridize.provenance import device_name, provenance

TASKS = ["passkey", "niah_single_2", "mqar"]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teachers", nargs="+")
    p.add_argument("--lengths", default="256,512,1024")
    p.add_argument("--samples", type=int, default=None, help="prompts per (task, length, depth); default: "
                   "hybridize eval's")
    p.add_argument("--device", default=None)
    p.add_argument("--data", default="builtin:heldout")
    p.add_argument("--out", default=None, help="json file for the scores (default: print only)")
    a = p.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    record = {**provenance(), "command": " ".join(sys.argv), "device": device_name(a.device or default_device()),
              "seed": 0, "data": a.data, "samples_per_depth": a.samples,
              "depths": [0.1, 0.5, 0.9], "lengths": lengths, "exact_match": {}, "weights_sha256": {}}
    for teacher in a.teachers:
        name = Path(teacher).name
        report = Path(f"/tmp/teacher-recall-{name}")
        run_eval(EvalConfig(models=[teacher], out=str(report), suites=TASKS, lengths=lengths, depths=[0.1, 0.5, 0.9],
                            samples=a.samples, device=a.device, data=a.data, seed=0, progress=False))
        done = json.loads((report / "report.json").read_text())
        scores = {t: [pooled(done["results"], name, t, n) for n in lengths] for t in TASKS}
        record["exact_match"][name] = scores
        record["weights_sha256"][name] = done["meta"]["models"][0]["weights_sha256"]
        record["samples_per_depth"] = done["meta"]["samples"]
        print(name, {t: [f"{r['recall']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] n={r['n']}" for r in s]
                     for t, s in scores.items()}, flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
