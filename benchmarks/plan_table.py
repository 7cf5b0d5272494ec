"""The planned peak memory per GPU of `halo-qwen3-1.7b` conversions of Qwen3-1.7B / 8B / 32B on 1, 8 and 64 GPUs of
80 GB: the table docs/multi-gpu.md shows, as JSON and markdown with the command and commit (a computation from shapes
alone, no GPU: `hybridize.pipeline.plan.memory_plan`).

    python benchmarks/plan_table.py --out results/plan
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybridize import HybridConfig
from hybridize.models.shapes import shape_config
from hybridize.pipeline import load_recipe
from hybridize.pipeline.plan import GiB, memory_plan
from hybridize.provenance import git_commit

# HALO's global batches (32 / 96 / 128) split over 8 GPUs at micro-batches 4 / 12 / 1; over 64 they do not at its
# micro-batches, so the 64-GPU rows use align 64 x 1, distill 128 x 2, finetune 128 x 1 (global x micro)
SPLITS = {1: [], 8: ["align.micro_batch_size=4", "distill.micro_batch_size=12", "finetune.micro_batch_size=1"],
          64: ["align.batch_size=64", "align.micro_batch_size=1", "distill.batch_size=128",
               "distill.micro_batch_size=2", "finetune.micro_batch_size=1"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = []
    for shape in ("qwen3-1.7b", "qwen3-8b", "qwen3-32b"):
        for gpus, overrides in SPLITS.items():
            plan = memory_plan(HybridConfig(**shape_config(shape)), load_recipe("halo-qwen3-1.7b", overrides),
                               world=gpus, device_memory=80 * 10**9, teacher_name=shape)
            rows.append({"teacher": shape, "gpus": gpus, "teacher_placement": plan.teacher_placement,
                         **{s.stage: round(s.peak / GiB, 1) for s in plan.stages}, "fits_80GB": plan.fits,
                         "recipe_overrides": overrides})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/plan_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {"command": command, "commit": git_commit(short=True), "device": "none (computed from shapes)",
              "seed": None, "recipe": "halo-qwen3-1.7b", "mixer": "lightning", "budget": 0.25, "rows": rows}
    (out / "plan.json").write_text(json.dumps(record, indent=1))
    lines = ["| teacher | GPUs | teacher on each GPU | align | distill | finetune | fits 80 GB |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['teacher']} | {r['gpus']} | {r['teacher_placement']} | {r['align']} | {r['distill']} | "
              f"{r['finetune']} | {'yes' if r['fits_80GB'] else 'no'} |" for r in rows]
    (out / "plan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
