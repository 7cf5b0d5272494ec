"""Read a committed `hybridize bench --train --profile` record again with today's rules (`hybridize.bench.profile`).

Records written before b1469de counted a user annotation's GPU range ("Optimizer.step#AdamW.step") beside the
kernels it spans, and put "gpu_kernel_impl_nocast<...>" elementwise kernels under copies / casts. This drops the
annotation rows and moves the re-categorised rows, as far as the record's 20 heaviest rows show them (the rest of a
category cannot be split again), and prints each category's share of the median step, the idle time and the
matmul kernels' rate against the measured peak.

    python benchmarks/profile_reread.py results/bench/h200-train-profile/train-profile-*/train.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from hybridize.bench.profile import categorize

ANNOTATION = re.compile(r"[\w.]+#[\w.]+")  # record_function ranges: "Optimizer.step#AdamW.step" (not "lambda()#3")


def reread(record: dict) -> dict:
    """{"step_ms", "kernel_ms", "idle_ms", "matmul_tflops", "by_category": {name: ms}} of one train.json record."""
    p = record["profile"]
    cats = {k: v["ms"] for k, v in p["by_category"].items()}
    total = p["total_ms"]
    for t in p["top"]:
        if ANNOTATION.fullmatch(t["name"]):
            cats[t["category"]] -= t["ms"]
            total -= t["ms"]
        elif (now := categorize(t["name"])) != t["category"]:
            cats[t["category"]] -= t["ms"]
            cats[now] = cats.get(now, 0.0) + t["ms"]
    step = record["step_s"] * 1e3
    return {"step_ms": step, "kernel_ms": total, "idle_ms": step - total,
            "matmul_tflops": record["model_flops_per_step"] / (cats["matmul"] / 1e3) / 1e12,
            "by_category": dict(sorted(cats.items(), key=lambda kv: -kv[1]))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="+", type=Path, help="train.json files with a `profile`")
    for path in ap.parse_args(argv).records:
        record = json.loads(path.read_text())
        r = reread(record)
        print(f"{path}: {record['model']} {record['mixer']} {record['seq_len']} x {record['batch']}, "
              f"step {r['step_ms']:.1f} ms, MFU {record['mfu']:.1%}, kernels {r['kernel_ms']:.1f} ms "
              f"({r['kernel_ms'] / r['step_ms']:.1%} of the step), idle {r['idle_ms']:.1f} ms, matmul kernels at "
              f"{r['matmul_tflops']:.0f} TFLOP/s (peak measured {record['peak_matmul_tflops']:.0f})")
        for name, ms in r["by_category"].items():
            print(f"  {name:<32} {ms:7.1f} ms  {ms / r['step_ms']:6.1%} of the step")


if __name__ == "__main__":
    main()
