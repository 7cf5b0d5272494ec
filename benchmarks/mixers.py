"""Micro-benchmark of each mixer on the GPU: our kernel dispatch and our whole mixer layer against the raw fla op
and SDPA, forward and forward+backward, so that the cost of our wrapping is known (target: dispatch <= 10% over
the raw op).

    python benchmarks/mixers.py --out results/gpu/mixers.json

Shapes follow METHODS.md's table (B = 1, 16 heads x 128, bf16) and, for whole layers, Qwen3-1.7B's attention
(hidden 2048, 16 query heads, 8 KV heads, head_dim 128, q/k norm). Times are medians of triton's do_bench (CUDA
events, warm-up first).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from hybridize import HybridConfig
from hybridize.mixers import MIXERS, SeqInfo, kernels
from hybridize.models.modeling import HybridRotaryEmbedding


def bench(fn, grad_to_none=None) -> float:
    return do_bench(fn, warmup=50, rep=300, grad_to_none=grad_to_none, return_mode="median")


def raw_ops():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla
    from fla.ops.simple_gla import chunk_simple_gla

    return {
        "lightning": lambda q, k, v, g: chunk_simple_gla(q, k, v, g_gamma=g["g_gamma"], scale=q.shape[-1] ** -0.5,
                                                         output_final_state=True),
        "gla": lambda q, k, v, g: chunk_gla(q, k, v, g=g["g"], scale=q.shape[-1] ** -0.5, output_final_state=True),
        "gated_deltanet": lambda q, k, v, g: chunk_gated_delta_rule(
            q, k, v, g=g["g"], beta=g["beta"], scale=q.shape[-1] ** -0.5, output_final_state=True,
            use_qk_l2norm_in_kernel=True),
    }


def ours():
    return {
        "lightning": lambda q, k, v, g: kernels.gla(q, k, v, g_gamma=g["g_gamma"], scale=q.shape[-1] ** -0.5, mode="chunk"),
        "gla": lambda q, k, v, g: kernels.gla(q, k, v, g=g["g"], scale=q.shape[-1] ** -0.5, mode="chunk"),
        "gated_deltanet": lambda q, k, v, g: kernels.gated_delta_rule(
            q, k, v, g["g"], g["beta"], scale=q.shape[-1] ** -0.5, mode="chunk"),
    }


def gates_for(name, T, H, K, dev):
    if name == "lightning":
        return {"g_gamma": -torch.exp2(-8.0 * torch.arange(1, H + 1, device=dev) / H)}
    if name == "gla":
        return {"g": (F.logsigmoid(torch.randn(1, T, H, K, device=dev)) / 16).requires_grad_()}
    return {"g": F.logsigmoid(torch.randn(1, T, H, device=dev) + 3).requires_grad_(),
            "beta": torch.rand(1, T, H, device=dev, dtype=torch.bfloat16).requires_grad_()}


def op_rows(T: int, H: int, D: int, reversed_order: bool = False):
    """The raw fla op then our dispatch, per mixer (`reversed_order`: ours first, to see whether the order shapes the
    ratio)."""
    dev, dt = "cuda", torch.bfloat16
    q, k, v = (torch.randn(1, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    for name in ("lightning", "gla", "gated_deltanet"):
        g = gates_for(name, T, H, D, dev)
        leaves = [q, k, v, *[x for x in g.values() if x.requires_grad]]
        pairs = (("fla raw op", raw_ops()), ("hybridize kernels", ours()))
        for impl, fns in (pairs[::-1] if reversed_order else pairs):
            fn = fns[name]
            with torch.no_grad():
                fwd = bench(lambda: fn(q, k, v, g))
            do = torch.randn(1, T, H, D, device=dev, dtype=dt)
            fb = bench(lambda: fn(q, k, v, g)[0].backward(do), grad_to_none=leaves)
            yield dict(what=f"{name} op", impl=impl, T=T, fwd_ms=fwd, fwd_bwd_ms=fb)
    qs, ks, vs = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    with torch.no_grad():
        fwd = bench(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True))
    do = torch.randn_like(qs)
    fb = bench(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).backward(do), grad_to_none=[qs, ks, vs])
    yield dict(what="softmax attention op", impl="torch SDPA (causal)", T=T, fwd_ms=fwd, fwd_bwd_ms=fb)


def layer_rows(T: int):
    """Whole mixer layers (projections, norms, gates, recurrence) at the Qwen3-1.7B attention shape."""
    for name in ("attention", "lightning", "gla", "gated_deltanet"):
        config = HybridConfig(
            vocab_size=1000, hidden_size=2048, num_hidden_layers=1, num_attention_heads=16, num_key_value_heads=8,
            head_dim=128, qk_norm=True, layer_types=["full_attention" if name == "attention" else "linear_attention"],
            linear_mixers=None if name == "attention" else name, max_position_embeddings=max(T, 4096))
        mixer = MIXERS[name](config, 0).to("cuda", torch.bfloat16)
        rope = HybridRotaryEmbedding(config).to("cuda")
        x = torch.randn(1, T, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        pos = torch.arange(T, device="cuda")[None]
        cos, sin = rope(x, pos)
        info = SeqInfo(pos, cos, sin)
        with torch.no_grad():
            fwd = bench(lambda: mixer(x, info))
        dy = torch.randn_like(x)
        fb = bench(lambda: mixer(x, info)[0].backward(dy), grad_to_none=[x, *mixer.parameters()])
        yield dict(what=f"{name} layer", impl="hybridize mixer", T=T, fwd_ms=fwd, fwd_bwd_ms=fb)


def show(r: dict) -> None:
    ov = f"{r['fwd_overhead']:+.1%}/{r['fwd_bwd_overhead']:+.1%}" if "fwd_overhead" in r else ""
    print(f"{r['what']:<22} {r['impl']:<20} {r['T']:>6} {r['fwd_ms']:>9.3f} {r['fwd_bwd_ms']:>11.3f} {ov:>16}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--out", default=None)
    ap.add_argument("--commit", default=None, help="commit being measured (the GPU machine's copy has no .git)")
    ap.add_argument("--reversed", action="store_true", help="time our dispatch before the raw fla op")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{'what':<22} {'impl':<20} {'T':>6} {'fwd ms':>9} {'fwd+bwd ms':>11} {'overhead fwd/fb':>16}", flush=True)
    for T in args.T:
        for r in itertools.chain(op_rows(T, 16, 128, args.reversed), layer_rows(T)):
            show(r)
            rows.append(r)
        torch.cuda.empty_cache()
    # wrapping overhead of our dispatch over the raw op, side by side in this run
    for r in rows:
        if r["impl"] == "hybridize kernels":
            raw = next(x for x in rows if x["what"] == r["what"] and x["T"] == r["T"] and x["impl"] == "fla raw op")
            r["fwd_overhead"] = r["fwd_ms"] / raw["fwd_ms"] - 1
            r["fwd_bwd_overhead"] = r["fwd_bwd_ms"] / raw["fwd_bwd_ms"] - 1
    print("\nsummary")
    for r in rows:
        show(r)
    if args.out:
        commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                               text=True).stdout.strip()
        record = dict(command="python benchmarks/mixers.py --T " + " ".join(map(str, args.T))
                      + (" --reversed" if args.reversed else ""),
                      device=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit or None,
                      seed=0, date=time.strftime("%Y-%m-%d"), rows=rows)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
