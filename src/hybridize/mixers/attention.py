"""Softmax attention: the mixer whose state is a KV cache.

Covers the Llama / Qwen2 / Qwen3 / Mistral attention (GQA, q/k/v bias, q/k RMSNorm, head_dim independent of
hidden_size, RoPE with any transformers scaling, sliding window) and HypeNet's HyPE variant (NoPE, query scaling
log(t + a) / log(a), sigmoid output gate). The product runs through `scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

from .base import Mixer, RMSNorm, SeqInfo, Tensor, apply_rope, dtype_bytes, hype_scale


class Attention(Mixer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None
        self.use_rope = config.attention_rope
        self.hype_a = config.hype_a
        H, Hkv, D, hidden = self.num_heads, self.num_kv_heads, self.head_dim, config.hidden_size
        self.q_proj = nn.Linear(hidden, H * D, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden, Hkv * D, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden, Hkv * D, bias=config.attention_bias)
        self.o_proj = nn.Linear(H * D, hidden, bias=config.attention_out_bias)
        self.q_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        self.g_proj = nn.Linear(hidden, H * D, bias=False) if config.attention_output_gate else None

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = apply_rope(q, k, info.cos, info.sin)
        if self.hype_a is not None:
            q = q * hype_scale(info.position_ids, self.hype_a).to(q.dtype)[..., None, None]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, D)
        kv_start = info.past_length
        if state is not None:
            k, v = state.update(k, v)
            # Dynamic layers return the tokens they kept, ending with the new ones; static layers their whole buffer.
            kv_start = 0 if _is_static(state) else info.past_length + T - k.shape[2]
        mask = self._mask(info, T, k.shape[2], kv_start, q.device)
        if mask is None:
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=T > 1, scale=self.scaling, enable_gqa=self.num_kv_heads != self.num_heads
            )
        else:
            groups = self.num_heads // self.num_kv_heads
            if groups > 1:  # the masked kernels do not all take grouped heads
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        o = o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        if self.g_proj is not None:
            o = o * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o), state

    def _mask(self, info: SeqInfo, T: int, Lk: int, kv_start: int, device) -> Tensor | None:
        """Boolean (B or 1, 1, T, Lk) mask, True where a query may attend; None when plain causal is exact."""
        past, window = info.past_length, self.sliding_window
        if info.padding_mask is None and info.cu_seqlens is None and kv_start + Lk == past + T:
            if past == 0 and (window is None or T <= window):
                return None  # ordinary causal attention over the new tokens
            if T == 1 and (window is None or Lk <= window):
                return None  # one query that sees every key the cache kept
        q_idx = torch.arange(past, past + T, device=device)  # index of each query in the token stream
        k_idx = torch.arange(kv_start, kv_start + Lk, device=device)
        allowed = k_idx[None, :] <= q_idx[:, None]
        if self.sliding_window is not None:
            allowed &= q_idx[:, None] - k_idx[None, :] < self.sliding_window
        allowed = allowed[None, None]  # (1, 1, T, Lk)
        if info.padding_mask is not None:
            valid = info.padding_mask
            if valid.shape[1] < kv_start + Lk:  # a static buffer longer than what has been seen
                valid = F.pad(valid, (0, kv_start + Lk - valid.shape[1]), value=False)
            allowed = allowed & valid[:, None, None, kv_start : kv_start + Lk]
        if info.cu_seqlens is not None:
            doc = _document_ids(info.cu_seqlens, past + T)
            allowed = allowed & (doc[q_idx][:, None] == doc[k_idx.clamp(max=past + T - 1)][None, :])
        # Every query may see its own key: padded queries would otherwise have an empty row (NaN in softmax).
        return allowed | (k_idx[None, :] == q_idx[:, None])

    def state_size(self, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
        kept = context_len if self.sliding_window is None else min(context_len, self.sliding_window)
        return 2 * kept * self.num_kv_heads * self.head_dim * dtype_bytes(dtype)


def _is_static(layer) -> bool:
    if isinstance(layer, StaticSlidingWindowLayer):
        raise NotImplementedError("a static cache with sliding-window layers is not supported; use the dynamic cache")
    return isinstance(layer, StaticLayer)


def _document_ids(cu_seqlens: Tensor, length: int) -> Tensor:
    """(length,) index of the packed document each position belongs to."""
    positions = torch.arange(length, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:], positions, right=True)
