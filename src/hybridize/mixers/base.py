"""The mixer contract and the pieces every mixer shares.

A mixer maps a sequence to a sequence of the same width and carries a state between calls:

    y, state = mixer(x, info, state)      # x, y: (B, T, hidden); T = 1 is the decode step

Built with `project_output=False` (`MIXERS[name](config, layer_idx, project_output=False)`), a mixer returns its
heads' output before the output projection instead, (B, T, heads x head dim) after its own output norm and gate: the
intra-layer block (`intra.py`) joins two such branches and projects them once.

`info` (`SeqInfo`) holds what the model computed once for all layers: positions, rotary tables, the padding mask,
packed-document boundaries. `state` is the layer's entry of a transformers cache (`DynamicLayer` /
`DynamicSlidingWindowLayer` / our `StaticKV` for attention: a KV cache; `LinearAttentionLayer` / our `StaticState`
for the others: a fixed-size recurrent state and, with a short convolution, its conv state), updated in place and
returned; None means "no cache" (training, or a forward without use_cache). `state_size(context_len)` says how
many bytes that state takes per sequence. The model never special-cases a mixer type: it builds
`MIXERS[config.mixer_name(i)]`, asks the class for its preallocated cache layer (`static_layer`, the static cache and
the CUDA-graph decode), and writes `fresh_parameters()` when it initialises weights (decays, gate biases: parameters
that `nn.Linear`'s init does not cover). `from_attention` names, for a conversion, which tensor of the teacher's
attention each transferred tensor of the mixer comes from (`hybridize.convert.transfer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import kernels
from .reference import apply_rope, rms_norm, rotate_half  # noqa: F401 (the layers' PyTorch forms, re-exported)

Tensor = torch.Tensor


@dataclass
class SeqInfo:
    """Per-forward facts shared by all layers.

    position_ids: (B, T) absolute positions of the new tokens (reset to 0 at each packed document start).
    cos, sin: (B, T, head_dim) rotary tables for those positions, or None when no layer uses RoPE.
    padding_mask: (B, past_length + T) bool, True for real tokens, over everything the cache has seen plus the new
        tokens; None when nothing is padded. Padding is expected on the left (the decoder-only convention).
        With a static cache (`cache_position` set and `static_mask` given) it is the cache's (B, max_len) buffer
        instead, one column per slot of the token stream.
    past_length: tokens already in the cache before this call.
    cu_seqlens: (N + 1,) document offsets for a packed batch of size 1, or None.
    cache_position: (T,) long, the index of each new token in the token stream, as a device tensor: where a static
        cache writes it. None: arange(past_length, past_length + T). A captured decode step reads positions only from
        tensors, since `past_length` is frozen into the graph.
    static_mask: (B, T) bool, which new tokens are real, when `padding_mask` is a static cache's whole buffer.
    """

    position_ids: Tensor
    cos: Tensor | None = None
    sin: Tensor | None = None
    padding_mask: Tensor | None = None
    past_length: int = 0
    cu_seqlens: Tensor | None = None
    cache_position: Tensor | None = None
    static_mask: Tensor | None = None
    _segments: Any = field(default=False, init=False, repr=False)  # document_segments(), once per forward

    def document_segments(self) -> DocumentSegments | None:
        """The packed documents of `cu_seqlens` grouped into segments for attention (`DocumentSegments`), computed
        once for all layers; None without cu_seqlens, inside torch.compile's tracing (the grouping reads the offsets
        on the host), or when the segments would hold no fewer query-key pairs than the whole row."""
        if self._segments is False:
            self._segments = None
            if self.cu_seqlens is not None and not torch.compiler.is_compiling():
                self._segments = DocumentSegments.build(self.cu_seqlens)
        return self._segments

    @property
    def token_mask(self) -> Tensor | None:
        """(B, T) bool: which of the new tokens are real."""
        if self.static_mask is not None:
            return self.static_mask
        if self.padding_mask is None:
            return None
        return self.padding_mask[:, -self.position_ids.shape[1] :]

    def query_positions(self, device) -> Tensor:
        """(T,) index of each new token in the token stream."""
        if self.cache_position is not None:
            return self.cache_position
        return torch.arange(self.past_length, self.past_length + self.position_ids.shape[1], device=device)


@dataclass
class DocumentSegments:
    """Packed documents (offsets `cu_seqlens` over a row of T tokens) grouped, in order, into `count` segments of
    `size` slots (the longest document's length), each holding whole documents, consecutive ones together while they
    fit, and padding: attention over (count, size) slots instead of over the whole row.

    source: (count * size,) the token each slot holds, T for a padding slot (a zero row the caller appends).
    slot: (T,) the slot of each token, the inverse of `source` on the real slots.
    mask: (count, 1, size, size) bool, slot i may attend slot j: the same document (padding counts as one more
        document, so its rows are never empty) and j <= i."""

    count: int
    size: int
    source: Tensor
    slot: Tensor
    mask: Tensor

    @classmethod
    def build(cls, cu_seqlens: Tensor) -> DocumentSegments | None:
        """The segments, or None when count x size^2 >= T^2 (one long document, say): the whole row is no dearer."""
        bounds = cu_seqlens.tolist()
        T = bounds[-1]
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        size = max(lengths)
        if size == 0:
            return None
        starts, segment, fill = [], 0, 0  # each document's first slot; the segment being filled, its slots used
        for n in lengths:
            if fill + n > size:
                segment, fill = segment + 1, 0
            starts.append(segment * size + fill)
            fill += n
        count = segment + 1
        if count * size * size >= T * T:
            return None
        device = cu_seqlens.device
        lengths_t = torch.tensor(lengths, device=device)
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths_t)  # (T,)
        shift = torch.tensor(starts, device=device) - cu_seqlens[:-1].to(device)  # slot - token, per document
        slot = torch.arange(T, device=device) + shift[doc]
        source = torch.full((count * size,), T, dtype=torch.long, device=device).index_copy(
            0, slot, torch.arange(T, device=device))
        owner = torch.full((count * size,), -1, dtype=torch.long, device=device).index_copy(0, slot, doc)
        owner = owner.view(count, size)
        causal = torch.ones(size, size, dtype=torch.bool, device=device).tril()
        mask = (owner[:, :, None] == owner[:, None, :]) & causal
        return cls(count, size, source, slot, mask[:, None])


class Mixer(nn.Module):
    """Base of all mixers: see the module docstring for the contract."""

    #: the transformers cache-layer kind this mixer's state lives in ("full_attention", "linear_attention", ...)
    layer_type: str = "linear_attention"

    def forward(self, x: Tensor, info: SeqInfo, state: Any = None) -> tuple[Tensor, Any]:
        raise NotImplementedError

    #: conversion: this mixer's tensor name -> the teacher attention's tensor it is copied from (GQA K/V heads are
    #: repeated per query head); every other tensor starts fresh
    from_attention: dict[str, str] = {}

    def state_size(self, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of decode state for one sequence that has seen `context_len` tokens."""
        raise NotImplementedError

    @classmethod
    def static_layer(cls, config, layer_idx: int, batch_size: int, max_cache_len: int, dtype: torch.dtype,
                     device) -> Any:
        """The preallocated cache layer of `hybridize.models.HybridStaticCache` for this mixer at `layer_idx`."""
        raise NotImplementedError

    def fresh_parameters(self) -> dict[str, Tensor]:
        """Initial values of the parameters that are not `nn.Linear` / norm weights (written by the model's
        `_init_weights`, so `from_pretrained` and `post_init` agree)."""
        return {}


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in fp32 and cast back before the weight, as Llama / Qwen do."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)


def qk_prep(q_norm: RMSNorm | None, k_norm: RMSNorm | None, rope: bool, info: SeqInfo) -> dict:
    """The keyword arguments a one-kernel decode step takes for a mixer's q/k norms and RoPE: q_weight, k_weight, eps
    (None, None, 1e-6 without norms) and cos, sin (None without RoPE)."""
    norm = q_norm is not None
    return dict(q_weight=q_norm.weight if norm else None, k_weight=k_norm.weight if norm else None,
                eps=q_norm.eps if norm else 1e-6, cos=info.cos if rope else None, sin=info.sin if rope else None)


def hype_scale(position_ids: Tensor, a: float) -> Tensor:
    """HyPE query scale s_t = log(t + a) / log(a), (B, T) fp32; s_0 = 1 and it grows slowly with t."""
    return torch.log(position_ids.float() + a) / math.log(a)


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
