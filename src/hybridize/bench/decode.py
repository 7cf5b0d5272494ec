"""Decode cost at a long context, measured on the machine at hand: the time of a one-token step with N tokens
already in the cache, and the bytes that cache holds. `hybridize demo` shows it for the teacher and its hybrid.

The cache is a `HybridStaticCache` marked as holding N tokens without running a prompt through the model (its keys,
values and states stay zero): a step's time depends on how many tokens it attends over, not on their values, and a
prompt of 128K tokens would cost a 4-layer teacher minutes of prefill on two CPU cores. On CUDA the step is timed
eagerly too (no CUDA graph), so the two models are compared on the same code path.
"""

from __future__ import annotations

import time

import torch

from ..models import HybridStaticCache


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def cache_bytes(cache: HybridStaticCache) -> int:
    """Bytes of every tensor the cache's layers hold (KV buffers, recurrent and conv states, in attributes or in the
    dicts transformers' linear-attention layer keeps them in)."""
    return sum(_tensor_bytes(v) for layer in cache.layers for v in vars(layer).values())


@torch.no_grad()
def decode_at_context(model, context: int, steps: int = 8, warmup: int = 2, repeats: int = 3) -> dict:
    """{context, ms_per_token (median over `repeats` runs of `steps` one-token steps), cache_bytes} for batch 1."""
    if not isinstance(context, int) or context <= 0:
        raise ValueError(f"context must be a positive number of tokens, got {context!r}")
    model.eval()
    device = model.device
    cache = HybridStaticCache(model.config, context + warmup + steps * repeats, 1, dtype=model.dtype, device=device)
    cache.begin(1, context, None)  # slots 0..context-1 count as filled
    cache.advance(context)
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    for _ in range(warmup):
        model(ids, past_key_values=cache, use_cache=True)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(ids, past_key_values=cache, use_cache=True)
        _sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return {"context": context, "ms_per_token": 1000 * sorted(times)[len(times) // 2], "cache_bytes": cache_bytes(cache)}
