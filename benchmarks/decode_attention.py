"""Micro-benchmark of the one-token attention step on the GPU (issue 7): our split-K Triton kernel against the
masked SDPA call it replaced and against SDPA without a mask (the dynamic cache's path, which reads exactly the
context), beside the bound: the K and V bytes of the context / the measured copy bandwidth.

    python benchmarks/decode_attention.py --out results/gpu/decode-attention.json

Qwen3-1.7B's attention shape (8 KV heads x 128, 16 query heads), bf16, the buffer one token longer than the context.
Times are medians of triton's do_bench (CUDA events after warm-up). Each row also carries the kernel's max error
against the fp32 reference where that fits in memory.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from hybridize.bench.roofline import measure_peaks
from hybridize.mixers.triton.decode_attention import decode_attention, num_splits_for, reference_decode_attention
from hybridize.provenance import git_commit

HKV, G, D = 8, 2, 128


def bench(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def case(B: int, N: int, padded: bool):
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    q = torch.randn(B, HKV, G, D, device=dev, dtype=dt)
    k = torch.randn(B, HKV, N + 1, D, device=dev, dtype=dt)
    v = torch.randn(B, HKV, N + 1, D, device=dev, dtype=dt)
    pos = torch.tensor([N], device=dev)  # the new token's slot: N keys before it
    valid = torch.ones(B, N + 1, dtype=torch.bool, device=dev)
    if padded:
        valid[:, : N // 16] = False
    return q, k, v, pos, valid


def rows_for(B: int, N: int, copy_bw: float, tuning: list[tuple[int, int]]):
    q, k, v, pos, valid = case(B, N, padded=False)
    scale = D**-0.5
    bound_us = 2 * B * HKV * (N + 1) * D * 2 / copy_bw * 1e6
    mask = (torch.arange(N + 1, device="cuda") <= pos)[None, None, None, :].expand(B, 1, 1, N + 1)
    out = {"batch": B, "context": N, "bound_us": bound_us}
    out["sdpa_masked_us"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)) * 1e3
    kq = q.reshape(B, HKV * G, 1, D)
    out["sdpa_nomask_us"] = bench(lambda: F.scaled_dot_product_attention(kq, k[:, :, :N + 1], v[:, :, :N + 1],
                                                                        scale=scale, enable_gqa=True)) * 1e3
    out["splits"] = num_splits_for(B, HKV, N + 1, q.device)
    out["ours_us"] = bench(lambda: decode_attention(q, k, v, pos, valid, scale)) * 1e3
    for block_n, warps in tuning:
        out[f"ours_bn{block_n}_w{warps}_us"] = bench(
            lambda: decode_attention(q, k, v, pos, valid, scale, block_n=block_n, num_warps=warps)) * 1e3
    if B * N <= 1 << 20:
        qp, kp, vp, posp, validp = case(B, N, padded=True)
        got = decode_attention(qp, kp, vp, posp, validp, scale).float()
        ref = reference_decode_attention(qp, kp, vp, posp, validp, scale).float()
        exact = reference_decode_attention(qp.float(), kp.float(), vp.float(), posp, validp, scale)
        out["max_err_vs_fp32_ref"] = (got - exact).abs().max().item()
        out["max_err_of_bf16_ref"] = (ref - exact).abs().max().item()
    out["ours_over_bound"] = out["ours_us"] / bound_us
    out["sdpa_masked_over_ours"] = out["sdpa_masked_us"] / out["ours_us"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192, 32768, 131072, 262144])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--max-tokens", type=int, default=1 << 22, help="skip batch x context above this")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    copy_bw = measure_peaks(torch.device("cuda"), torch.bfloat16)["copy_bytes"]
    tuning = [(32, 4), (128, 4), (128, 8)]
    rows = []
    for B in args.batches:
        for N in args.contexts:
            if B * N > args.max_tokens:
                continue
            r = rows_for(B, N, copy_bw, tuning)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
            rows.append(r)
            torch.cuda.empty_cache()
    if args.out:
        record = dict(command="python " + shlex.join(sys.argv),
                      device=torch.cuda.get_device_name(), torch=torch.__version__, commit=git_commit(short=True),
                      seed=0, date=time.strftime("%Y-%m-%d"), copy_bandwidth_bytes_s=copy_bw,
                      shape=dict(kv_heads=HKV, groups=G, head_dim=D, dtype="bfloat16"), rows=rows)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
