"""Roofline bounds beside every measured figure: what the device could do at best.

* compute: the peak matmul rate, measured at startup (a large bf16 matmul on CUDA, the run's dtype on the CPU);
  prefill bound = prefill FLOPs / that rate.
* memory: the device copy bandwidth, measured at startup (bytes read + written by a large `copy_`);
  decode bound = bytes one decode step must move (weights + KV read + linear states read and written) / that rate.

FLOPs and bytes are counted from the config (`prefill_flops`, `decode_bytes`), so they say what the model needs, not
what our kernels happen to do (e.g. the static step reads the whole KV buffer: the bound counts the context only).
"""

from __future__ import annotations

import time

import torch

from ..mixers import MIXERS
from ..mixers.intra import branch_configs
from ..models import HybridConfig

# Chunk length of the linear mixers' chunked kernels (fla and our reference use 64): sets their intra-chunk FLOPs.
LINEAR_CHUNK = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """{"matmul_flops": FLOP/s of a square matmul, "copy_bytes": bytes/s of a device copy (read + write)}."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    mm_dtype = torch.bfloat16 if cuda else dtype
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)
    t = _best_time(lambda: torch.mm(a, b), device, repeats=10 if cuda else 3)
    flops = 2 * n**3 / t
    del a, b
    numel = (1 << 29 if cuda else 1 << 23) // 2  # 512 MiB (GPU) / 8 MiB (CPU) of bf16-sized elements
    src = torch.empty(numel, device=device, dtype=torch.float16).normal_()
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), device, repeats=20 if cuda else 5)
    copy = 2 * src.numel() * src.element_size() / t
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return {"matmul_flops": flops, "copy_bytes": copy}


def _mixer_matrices(config: HybridConfig, layer_idx: int) -> int:
    """Matrix weights of a layer's mixer (its projections, gates included), counted on a copy built on the meta
    device: exact for every mixer and for intra-layer blocks, with no memory."""
    with torch.device("meta"):
        mixer = MIXERS[config.mixer_name(layer_idx)](config, layer_idx)
    return sum(p.numel() for p in mixer.parameters() if p.dim() == 2)


def _parts(config: HybridConfig, layer_idx: int) -> tuple[tuple | None, tuple | None]:
    """What a layer computes per token: (attention: (query heads, its window or None), linear: (mixer class, the
    config its state shape is read from)); either is None where the layer has none. An intra-layer block has both."""
    kind = config.layer_types[layer_idx]
    if kind == "linear_attention":
        return None, (MIXERS[config.mixer_name(layer_idx)], config)
    window = config.sliding_window if kind in ("sliding_attention", "hybrid_sliding") else None
    if kind in ("hybrid", "hybrid_sliding"):
        attention_config, linear_config = branch_configs(config, layer_idx)
        return ((attention_config.num_attention_heads, window),
                (MIXERS[config.linear_mixers[layer_idx]], linear_config))
    return (config.num_attention_heads, window), None


def _recurrence_flops(cls, config, T: int) -> float:
    """FLOPs per token of a linear recurrence in its chunked form: for a (H, K, V) matrix state the state update
    + readout (4 H K V) and the intra-chunk products (2 H C (K + V)); for HGRN's vector of D channels, the decayed sums
    inside a chunk (2 C D) and the update (4 D)."""
    shape = cls.state_shape(config)
    C = min(LINEAR_CHUNK, T)
    if len(shape) == 1:
        return shape[0] * (2 * C + 4)
    H, K, V = shape
    return H * (4 * K * V + 2 * C * (K + V))


def _matmul_params(config: HybridConfig) -> int:
    """Weights multiplied per token in the blocks (embedding lookup and lm_head excluded)."""
    mlp = 3 * config.hidden_size * config.intermediate_size
    return sum(_mixer_matrices(config, layer) + mlp for layer in range(config.num_hidden_layers))


def prefill_flops(config: HybridConfig, batch: int, context: int, all_logits: bool = False) -> float:
    """Forward FLOPs of a prefill of `batch` x `context` tokens: 2 x weights per token, causal attention
    (2 x H x D x T^2 per sequence for QK^T and PV together), the linear recurrences in their chunked form, and the
    lm_head for the last position (or every position with `all_logits`)."""
    T = context
    flops = 2.0 * _matmul_params(config) * batch * T
    for layer in range(config.num_hidden_layers):
        attention, linear = _parts(config, layer)
        if linear is not None:
            flops += batch * T * _recurrence_flops(*linear, T)
        if attention is not None:
            heads, window = attention
            # causal: each query sees ~half the keys (or the window); QK^T and PV are 2 D FLOPs per pair each
            pairs = T * T / 2 if window is None else T * min(T, window)
            flops += 4.0 * batch * heads * config.head_dim * pairs
    flops += 2.0 * config.hidden_size * config.vocab_size * batch * (T if all_logits else 1)
    return flops


def decode_bytes(config: HybridConfig, batch: int, context: int, weight_bytes: int, dtype: torch.dtype) -> float:
    """Bytes one decode step must move at `context` tokens of cache: every weight once (lm_head included, the
    embedding rows of the batch only), each attention layer's K and V (the window for sliding layers), each linear
    layer's fp32 state read and written (and its conv window); an intra-layer block both, for its own heads. The
    buffers are the static cache's own, allocated on the meta device."""
    total = float(weight_bytes)
    for layer in range(config.num_hidden_layers):
        with torch.device("meta"):
            cache = MIXERS[config.mixer_name(layer)].static_layer(config, layer, batch, context, dtype, "meta")
        kv = [t for t in (getattr(cache, "keys", None), getattr(cache, "values", None)) if t is not None]
        states = [*getattr(cache, "recurrent_states", {}).values(), *getattr(cache, "conv_states", {}).values()]
        total += sum(t.numel() * t.element_size() for t in kv)
        total += 2 * sum(t.numel() * t.element_size() for t in states if isinstance(t, torch.Tensor))
    return total


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights a decode step reads: all parameters except the input embedding table (a row gather),
    counted once when it is tied to the lm_head."""
    seen, total = set(), 0
    embed = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embed
    for p in model.parameters():
        if p.data_ptr() in seen or (p is embed and not tied):
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total
