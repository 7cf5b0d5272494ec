"""The decode step's matmuls on the GPU (issue 23): our split-K GEMV (`hybridize/mixers/triton/gemv.py`) against
`F.linear` (cuBLAS) and the bandwidth bound, for every weight shape one decode step multiplies, and the whole step's
matmul time projected from them.

    python benchmarks/gemv.py --model qwen3-1.7b --batches 1,8 --out gemv.json            # default tiles
    python benchmarks/gemv.py --model qwen3-1.7b --batches 1 --sweep --out gemv-sweep.json   # and a sweep of them

The shapes are recorded from one real decode step of the model (random weights, fused projections as the CUDA-graph
decoder fuses them, a static cache): every `F.linear` call, its (rows, N, K) and how often it occurs, for the hybrid
(`--budget`, `--mixer`) and the teacher (every layer attention). Each distinct shape is timed with triton's
`do_bench` (median; it flushes the L2 cache before every run, so W comes from HBM as it does inside a step), beside
the bound: W's bytes / the measured copy bandwidth. `--sweep` also times tile choices (`GemvConfig`: block_n,
block_k, split_k, then warps and stages at the best tile) and reports the best per shape, which is what
`gemv_config`'s defaults are to be checked against. Each row carries the GEMV's max error against the fp32
reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hybridize import HybridForCausalLM, HybridStaticCache
from hybridize.bench.inference import build_models
from hybridize.bench.roofline import measure_peaks
from hybridize.provenance import git_commit


class _RecordLinears(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self.calls[(x.numel() // x.shape[-1], *weight.shape, bias is not None)] += 1
        return func(*args, **kwargs)


@torch.no_grad()
def step_linears(config, batch: int, device: str, dtype=torch.bfloat16) -> Counter:
    """{(rows, N, K, has_bias): calls} of the `F.linear` calls in one decode step of a model of `config` at `batch`,
    after a short prefill into a static cache, with the projections fused (as the CUDA-graph decoder runs it)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = HybridForCausalLM(config).to(dtype).eval()
    model.fuse_projections()
    cache = HybridStaticCache(config, 8, batch, dtype, device)
    ids = torch.ones(batch, 4, dtype=torch.long, device=device)
    model.prefill(ids, cache=cache)
    with _RecordLinears() as rec:
        model(ids[:, :1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return rec.calls


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3  # us


def sweep(x, w, b) -> dict:
    """The fastest tile choice for this shape: block_n x block_k x split_k, then warps x stages at the best one."""
    from hybridize.mixers.triton.gemv import gemv

    def timed(knobs):
        try:
            return bench(lambda: gemv(x, w, b, **knobs))
        except Exception as err:  # a tile that does not compile for this GPU (shared memory, registers): skipped
            print(f"  {knobs}: {type(err).__name__}", flush=True)
            return float("inf")

    tiles = [dict(block_n=n, block_k=k, split_k=s) for n, k, s in itertools.product((32, 64, 128), (128, 256),
                                                                                    (1, 2, 4, 8))]
    best = min(((timed(t), t) for t in tiles), key=lambda r: r[0])
    launch = [dict(best[1], num_warps=wp, num_stages=st) for wp, st in itertools.product((2, 4, 8), (2, 3, 4))]
    best = min([best, *((timed(t), t) for t in launch)], key=lambda r: r[0])
    return {"us": best[0], **best[1]}


def rows_for(calls: Counter, copy_bw: float, do_sweep: bool, timed: dict) -> list[dict]:
    """A row per shape of `calls`; `timed` keeps the shapes measured already in this run (the hybrid and the teacher
    share most of theirs)."""
    from hybridize.mixers.triton.gemv import gemv, gemv_config, reference_gemv

    rows = []
    for (M, N, K, has_bias), count in sorted(calls.items(), key=lambda kv: -kv[0][1] * kv[0][2]):
        if (M, N, K, has_bias) in timed:
            rows.append(dict(timed[M, N, K, has_bias], calls_per_step=count))
            continue
        g = torch.Generator(device="cuda").manual_seed(N * K)
        x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
        w = (torch.randn(N, K, device="cuda", generator=g) * K**-0.5).bfloat16()
        b = torch.randn(N, device="cuda", generator=g).bfloat16() if has_bias else None
        nbytes = w.numel() * w.element_size()
        c = gemv_config(M, N, K, 2, x.device)
        row = dict(rows=M, N=N, K=K, bias=has_bias, calls_per_step=count, weight_bytes=nbytes,
                   bound_us=nbytes / copy_bw * 1e6, config=dict(block_n=c.block_n, block_k=c.block_k,
                                                                split_k=c.split_k))
        row["f_linear_us"] = bench(lambda: F.linear(x, w, b))
        row["gemv_us"] = bench(lambda: gemv(x, w, b))
        for name in ("f_linear", "gemv"):
            row[f"{name}_gbs"] = nbytes / (row[f"{name}_us"] * 1e-6) / 1e9
        row["gemv_max_err_vs_fp32"] = (gemv(x, w, b).float() - reference_gemv(x.float(), w.float(), b if b is None
                                                                               else b.float())).abs().max().item()
        if do_sweep:
            row["best"] = sweep(x, w, b)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        rows.append(row)
        timed[M, N, K, has_bias] = row
    return rows


def step_totals(rows: list[dict]) -> dict:
    """One decode step's matmul time, each shape times its calls per step: cuBLAS, our GEMV with default tiles, the
    best tiles of the sweep (where run), and the bound."""
    total = {name: sum(r[key] * r["calls_per_step"] for r in rows) / 1e3
             for name, key in (("f_linear_ms", "f_linear_us"), ("gemv_ms", "gemv_us"), ("bound_ms", "bound_us"))}
    if all("best" in r for r in rows):
        total["gemv_best_ms"] = sum(r["best"]["us"] * r["calls_per_step"] for r in rows) / 1e3
    total["weight_gb"] = sum(r["weight_bytes"] * r["calls_per_step"] for r in rows) / 1e9
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-1.7b")
    ap.add_argument("--budget", default="0.25")
    ap.add_argument("--mixer", default="lightning")
    ap.add_argument("--batches", default="1,8", help="decode batch sizes (rows of each matmul), e.g. 1,8")
    ap.add_argument("--variants", default="hybrid,teacher", help="whose decode step: hybrid, teacher or both")
    ap.add_argument("--sweep", action="store_true", help="also time tile choices per shape (minutes)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gemv.py times CUDA kernels: it needs a GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    models = build_models(args.model, args.budget, args.mixer)
    copy_bw = measure_peaks(torch.device("cuda"), torch.bfloat16)["copy_bytes"]
    record = dict(command="python " + shlex.join(["benchmarks/gemv.py", *(sys.argv[1:] if argv is None else argv)]),
                  device=torch.cuda.get_device_name(), torch=torch.__version__, commit=git_commit(short=True),
                  date=time.strftime("%Y-%m-%d"), seed=0, copy_bandwidth_gbs=copy_bw / 1e9, model=args.model,
                  runs=[])
    timed: dict = {}
    configs = {"hybrid": models.hybrid, "teacher": models.teacher}
    for name in args.variants.split(","):
        if name not in configs:
            raise SystemExit(f"--variants: each of hybrid, teacher, got {name!r}")
        for batch in (int(b) for b in args.batches.split(",")):
            calls = step_linears(configs[name], batch, "cuda")
            print(f"== {name} batch {batch}: {sum(calls.values())} matmuls per step, {len(calls)} shapes", flush=True)
            rows = rows_for(calls, copy_bw, args.sweep, timed)
            totals = step_totals(rows)
            print(f"== {name} batch {batch}: " + ", ".join(f"{k} {v:.3f}" for k, v in totals.items()), flush=True)
            record["runs"].append(dict(variant=name, batch=batch, rows=rows, step=totals))
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
