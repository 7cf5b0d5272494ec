"""Kernel launches of one decode step, counted on the CPU: the step the GPU replays, with our fused kernels run in
Triton's interpreter, one count per Triton kernel and per PyTorch operator that launches a kernel on CUDA (views,
allocations and dtype queries launch none), split by layer.

    python benchmarks/decode_launches.py --model qwen3-1.7b --budget 0.25 --mixers lightning,retnet \
        --out results/decode-limit/launches.json

The layer pattern is the bench's (`hybridize bench`: the hybrid places attention like the uniform selector) at small
widths (the count does not depend on them): head dims of 8, hidden 64. Projections fused, static cache, batch 1, the
step after a 4-token prefill. What it does not see: cuBLAS's split-K reduce after some matmuls (the GPU profile in
`hybridize bench` counts those; `model.decode_gemv` runs none) and fla's kernels, which the GPU runs for the mixers
whose decode is not ours (here their PyTorch reference runs and its operators are counted: only Lightning and RetNet,
whose decode step is one kernel of ours, and attention layers count as on the GPU). It is an estimate for choosing
what to fuse, and a regression check (tests/test_decode_launches.py); issue 23's target (<= 300 kernels per step) is
checked by the GPU profile.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: our kernels run on CPU tensors

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

# operators that launch no kernel on CUDA: views, metadata, allocation without fill
NO_KERNEL = {"view", "_unsafe_view", "expand", "slice", "select", "split", "split_with_sizes", "unsqueeze", "squeeze",
             "permute", "transpose", "t", "as_strided", "detach", "alias", "unbind", "narrow", "empty", "empty_like",
             "empty_strided", "lift_fresh", "reshape", "_reshape_alias", "new_empty", "new_empty_strided",
             "promote_types", "result_type", "sym_size", "sym_stride", "sym_numel", "is_same_size"}


class _Launches(TorchDispatchMode):
    """Counts (where, operator) of the operators that launch a kernel; Triton launches are added by `count_step`."""

    def __init__(self):
        super().__init__()
        self.where = "model"
        self.counts = collections.Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and name not in NO_KERNEL:
            self.counts[(self.where, name)] += 1
        return func(*args, **(kwargs or {}))


def count_step(model, batch: int = 1, prefill: int = 4, fused: bool = True) -> dict:
    """Launches of one decode step of `model` (a HybridForCausalLM on the CPU) over a static cache, the fused kernels on
    (`fused` False: the PyTorch operators the CPU runs instead): {"total", "by_layer": [{"layer", "type", "mixer",
    "launches", "ops"}], "outside": {...}}."""
    from triton.runtime import interpreter

    from hybridize.mixers import kernels
    from hybridize.models.cache import HybridStaticCache

    config = model.config
    counter = _Launches()
    counting = [False]
    run = interpreter.InterpretedFunction.run

    def counted_run(self, *args, **kw):
        if not counting[0]:
            return run(self, *args, **kw)
        counter.counts[(counter.where, "triton:" + self.fn.__name__)] += 1
        counter.paused = True  # the interpreter's own tensor traffic is not the kernel's launches
        try:
            return run(self, *args, **kw)
        finally:
            counter.paused = False

    fused_inference = kernels.fused_inference
    interpreter.InterpretedFunction.run = counted_run
    kernels.fused_inference = lambda x: fused and not torch.is_grad_enabled()
    hooks = []
    try:
        model.fuse_projections()
        ids = torch.randint(1, config.vocab_size, (batch, prefill + 1))
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            cache = HybridStaticCache(config, max_cache_len=prefill + 4, batch_size=batch, dtype=dtype)
            model(ids[:, :prefill], past_key_values=cache, use_cache=True)
            for i, layer in enumerate(model.model.layers):  # wrapped, not hooked: hooks on a block change the step
                hooks.append(_attribute(layer, i, counter))
            counting[0] = True
            with counter, kernels.fused_steps(fused):
                model(ids[:, prefill:], past_key_values=cache, use_cache=True)
    finally:
        counting[0] = False
        for undo in hooks:
            undo()
        interpreter.InterpretedFunction.run = run
        kernels.fused_inference = fused_inference
    per = collections.defaultdict(collections.Counter)
    for (where, op), n in counter.counts.items():
        per[where][op] += n
    layers = []
    for i, layer_type in enumerate(config.layer_types):
        ops = per.get(i, collections.Counter())
        layers.append({"layer": i, "type": layer_type, "mixer": type(model.model.layers[i].mixer).__name__,
                       "launches": sum(ops.values()), "ops": dict(sorted(ops.items()))})
    outside = per.get("model", collections.Counter())
    return {"total": sum(counter.counts.values()), "by_layer": layers,
            "outside": {"launches": sum(outside.values()), "ops": dict(sorted(outside.items()))}}


def _attribute(layer, index: int, counter: _Launches):
    """Count what `layer` launches under `index`: its forward wrapped on the instance (a forward hook would make the
    model keep every block's output whole, a different step). Returns the undo."""
    forward = layer.forward

    def counted(*args, **kwargs):
        counter.where = index
        try:
            return forward(*args, **kwargs)
        finally:
            counter.where = "model"

    layer.forward = counted
    return lambda: delattr(layer, "forward")


def small_widths(config):
    """The same layers at small widths (head dims 8, hidden 64, vocab 128): launches do not depend on widths."""
    fields = config.to_diff_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        fields.pop(key, None)
    fields.update(hidden_size=64, intermediate_size=96, vocab_size=128, head_dim=8, max_position_embeddings=64,
                  pad_token_id=0)
    for key in ("linear_head_dim", "linear_value_head_dim"):
        if key in fields:
            fields[key] = 8
    return type(config)(**fields)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen3-1.7b", help="a built-in shape, as `hybridize bench --model`")
    p.add_argument("--budget", default="0.25", help="attention layers of the hybrid: a fraction or a count")
    p.add_argument("--mixers", default="lightning,retnet", help="comma-separated linear mixers")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", help="write the counts as JSON here")
    args = p.parse_args(argv)
    from hybridize import HybridForCausalLM
    from hybridize.bench.inference import build_models
    from hybridize.provenance import provenance

    torch.manual_seed(0)
    rows = []
    for mixer in args.mixers.split(","):
        models = build_models(args.model, args.budget, mixer)
        variants = [("hybrid", models.hybrid)] + ([("teacher-engine", models.teacher)] if not rows else [])
        for variant, config in variants:
            model = HybridForCausalLM(small_widths(config)).to(torch.bfloat16).eval()
            counted = count_step(model, batch=args.batch)
            kinds = collections.defaultdict(list)
            for layer in counted["by_layer"]:
                kinds[f"{layer['type']} ({layer['mixer']})"].append(layer["launches"])
            rows.append({"variant": variant, "mixer": mixer if variant == "hybrid" else None, "model": args.model,
                         "budget": args.budget, "batch": args.batch, "launches_per_step": counted["total"],
                         "per_layer": {k: sorted(set(v)) for k, v in kinds.items()}, **counted})
            per = ", ".join(f"{k}: {'/'.join(map(str, sorted(set(v))))} x {len(v)}" for k, v in kinds.items())
            print(f"{variant:15s} {rows[-1]['mixer'] or '':10s} {counted['total']:4d} launches per step "
                  f"({per}; outside the layers {counted['outside']['launches']})")
    if args.out:
        record = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), **provenance(),
                  "rows": rows}
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
