"""Softmax attention: the mixer whose state is a KV cache.

Covers the Llama / Qwen2 / Qwen3 / Mistral attention (GQA, q/k/v bias, q/k RMSNorm, head_dim independent of
hidden_size, RoPE with any transformers scaling, sliding window) and HypeNet's HyPE variant (NoPE, query scaling
log(t + a) / log(a), sigmoid output gate). The product runs through `scaled_dot_product_attention`, the one-token
step over a static cache on the GPU through our split-K kernel (`kernels.decode_attention`), and a prefill chunk over a
long cached prefix, where SDPA would build tensors as long as the context, through `blocked_attention` (bounded
memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import CausalBias, causal_lower_right
from transformers.cache_utils import StaticLayer

from . import blocked_attention, kernels
from .base import DocumentSegments, Mixer, RMSNorm, SeqInfo, Tensor, dtype_bytes, hype_scale, qk_prep
from .state import StaticKV
from .fusion import project


class Attention(Mixer):
    fused_projections = ("q_proj", "k_proj", "v_proj", "g_proj")  # what reads x (g_proj: HyPE's gate); fusion.py

    def __init__(self, config, layer_idx: int, project_output: bool = True):
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
        self.o_proj = nn.Linear(H * D, hidden, bias=config.attention_out_bias) if project_output else None
        self.q_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        self.g_proj = nn.Linear(hidden, H * D, bias=False) if config.attention_output_gate else None

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        B, T, _ = x.shape
        q, k, v, gate = project(self, x, self.fused_projections)  # one matmul once fused
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        if self._one_kernel_prologue(q, k, v, info, state):
            # the decode step on a GPU: norms, RoPE and the cache write in one kernel, then the split-K attention
            q_pos = info.query_positions(q.device)
            q = kernels.attention_decode_prologue(
                q, k, v, state.keys, state.values, q_pos, hype_a=self.hype_a,
                position_ids=None if self.hype_a is None else info.position_ids,
                **qk_prep(self.q_norm, self.k_norm, self.use_rope, info))
            fold = gate is not None and gate.dtype == q.dtype and gate.stride(-1) == 1  # the gate in the merge
            o = kernels.decode_attention(q.view(B, self.num_kv_heads, -1, self.head_dim), state.keys, state.values,
                                         q_pos, info.padding_mask, self.scaling, gate=gate if fold else None)
            return self._out(o.reshape(B, 1, self.num_heads * self.head_dim), None if fold else gate), state
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = kernels.rope(q, k, info.cos, info.sin)
        if self.hype_a is not None:
            q = q * hype_scale(info.position_ids, self.hype_a).to(q.dtype)[..., None, None]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, D)
        q_pos = info.query_positions(q.device)  # (T,) index of each query in the token stream
        past = info.past_length
        contiguous = True  # keys are the tokens past + T - Lk .. past + T - 1, in order
        if (isinstance(state, StaticKV) and T == 1 and state.window is None and info.cu_seqlens is None
                and kernels.decode_attention_ok(q)):
            # the decode step on a GPU: our split-K kernel reads the slots written so far, fp32 scores
            state.store(k, v, q_pos)
            o = kernels.decode_attention(q.reshape(B, self.num_kv_heads, -1, self.head_dim), state.keys,
                                         state.values, q_pos, info.padding_mask, self.scaling)
            return self._out(o.reshape(B, 1, self.num_heads * self.head_dim), gate), state
        if isinstance(state, StaticKV):
            k, v, k_pos = state.write(k, v, q_pos, past)
            contiguous = T > 1 and (self.sliding_window is None or past == 0)
        else:
            if state is not None:
                _refuse_transformers_static(state)
                k, v = state.update(k, v)  # dynamic layers return the tokens they kept, ending with the new ones
            k_pos = None
        key_start = past + T - k.shape[2]  # where k_pos is None: the keys are the tokens key_start .. past + T - 1
        if k_pos is None and self._bounded(q, k, v, info):
            o = blocked_attention.attend(q, k, v, past, key_start, self.scaling, info.padding_mask)
            return self._out(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim), gate), state
        if k_pos is None and info.cu_seqlens is not None and past == 0 and k.shape[2] == T:
            segments = info.document_segments()
            if segments is not None:
                o = self._attend_segments(q, k, v, segments)
                return self._out(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim), gate), state
        if k_pos is None:
            k_pos = torch.arange(key_start, past + T, device=q.device)
        mask = self._mask(info, q_pos, k_pos, contiguous)
        o = self._attend(q, k, v, mask)
        return self._out(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim), gate), state

    def _one_kernel_prologue(self, q: Tensor, k: Tensor, v: Tensor, info: SeqInfo, state) -> bool:
        """A one-token step over a full-attention static buffer whose norms, RoPE and cache write one kernel takes
        (`kernels.attention_decode_prologue`, HyPE's query scale too), and whose attention the decode kernel
        takes."""
        if not (kernels.steps_on() and q.shape[1] == 1 and isinstance(state, StaticKV) and state.window is None
                and info.cu_seqlens is None and kernels.decode_attention_ok(q)):
            return False
        prep = qk_prep(self.q_norm, self.k_norm, self.use_rope, info)
        return kernels.attention_prologue_ok(q, k, v, state.keys, prep["q_weight"], prep["cos"])

    def _bounded(self, q: Tensor, k: Tensor, v: Tensor, info: SeqInfo) -> bool:
        """Whether a chunk after a cached prefix runs `blocked_attention.attend`: SDPA would build a mask or K/V
        copies as long as the context (module doc there), more than `blocked_attention.WORKSPACE_BYTES` of them."""
        B, H, T, D = q.shape
        if T == 1 or info.past_length == 0 or info.cu_seqlens is not None or self.sliding_window is not None:
            return False
        if info.padding_mask is None and blocked_attention.native_lower_right(q, k, v):
            return False  # the flash / memory-efficient kernel takes the causal bias as it is
        return (blocked_attention.context_bytes(B, H, self.num_kv_heads, T, k.shape[2], D, k.element_size())
                > blocked_attention.WORKSPACE_BYTES)

    def _out(self, o: Tensor, gate: Tensor | None) -> Tensor:
        """(B, T, H*D) attention output -> (B, T, hidden): the optional sigmoid gate, then o_proj (if any)."""
        if gate is not None:  # g_proj(x), projected with q, k, v
            o = o * torch.sigmoid(gate)
        return o if self.o_proj is None else self.o_proj(o)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask) -> Tensor:
        """SDPA over q (B, H, T, D) and k, v (B, Hkv, Lk, D) -> (B, H, T, D)."""
        gqa = self.num_kv_heads != self.num_heads
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, scale=self.scaling,
                                                  enable_gqa=gqa)
        if isinstance(mask, CausalBias):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)
        B, H, T, D = q.shape
        groups = self.num_heads // self.num_kv_heads
        if T == 1 and groups > 1:
            # One query per head: the `groups` query heads of a KV head become `groups` queries of that head, so the
            # masked kernels need no copy of K/V per group; the (B, 1, 1, Lk) mask broadcasts over them.
            # On a GPU the static-cache step takes our split-K kernel instead (see forward); this is its reference.
            o = F.scaled_dot_product_attention(q.reshape(B, self.num_kv_heads, groups, D), k, v, attn_mask=mask,
                                               scale=self.scaling)
            return o.reshape(B, H, 1, D)
        if groups > 1:  # the masked kernels do not all take grouped heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)

    def _attend_segments(self, q: Tensor, k: Tensor, v: Tensor, segments: DocumentSegments) -> Tensor:
        """Packed documents (q (1, H, T, D), k, v (1, Hkv, T, D)) as a batch of segments, each a few whole documents
        (`SeqInfo.document_segments`): one SDPA over (segments, heads, S, D) with each segment's causal, same-document
        (and sliding-window) mask instead of one over the whole row with a (T, T) mask. Every query sees the same
        keys as there, so the result is the same up to summation order; the work is segments x S^2 instead of T^2."""
        n, S = segments.count, segments.size

        def gather(x: Tensor) -> Tensor:  # (1, h, T, D) -> (n, h, S, D); padding slots read a zero row
            x = F.pad(x[0], (0, 0, 0, 1)).index_select(1, segments.source)
            return x.view(x.shape[0], n, S, x.shape[-1]).transpose(0, 1)

        mask = segments.mask
        if self.sliding_window is not None:
            i = torch.arange(S, device=q.device)
            mask = mask & (i[:, None] - i[None, :] < self.sliding_window)  # slots of one document are its positions
        o = self._attend(gather(q), gather(k), gather(v), mask)  # (n, H, S, D)
        return o.transpose(0, 1).reshape(1, self.num_heads, n * S, -1).index_select(2, segments.slot)

    def _mask(self, info: SeqInfo, q_pos: Tensor, k_pos: Tensor, contiguous: bool):
        """Where each query (B or 1, 1, T, Lk) may attend: None when plain causal SDPA is exact, a lower-right
        `CausalBias` for a chunk after a cached prefix (no mask tensor of chunk x context), else a boolean mask built
        from tensors only (the captured decode step uses this one)."""
        T, Lk = q_pos.shape[0], k_pos.shape[0]
        past, window = info.past_length, self.sliding_window
        if contiguous and info.padding_mask is None and info.cu_seqlens is None:
            if past == 0 and (window is None or T <= window):
                return None  # ordinary causal attention over the new tokens
            if T == 1 and (window is None or Lk <= window):
                return None  # one query that sees every key the cache kept
            if window is None:
                return causal_lower_right(T, Lk)  # a chunk that sees the whole cached prefix and itself, causally
        allowed = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= 0)  # (T, Lk); -1 marks an empty slot
        if window is not None:
            allowed &= q_pos[:, None] - k_pos[None, :] < window
        allowed = allowed[None, None]  # (1, 1, T, Lk)
        if info.padding_mask is not None:
            valid = info.padding_mask.index_select(1, k_pos.clamp(min=0))  # (B, Lk)
            allowed = allowed & valid[:, None, None, :]
        if info.cu_seqlens is not None:
            doc = _document_ids(info.cu_seqlens, past + T)
            allowed = allowed & (doc[q_pos][:, None] == doc[k_pos.clamp(min=0, max=past + T - 1)][None, :])
        # Every query may see its own key: padded queries would otherwise have an empty row (NaN in softmax).
        return allowed | (k_pos[None, :] == q_pos[:, None])

    def state_size(self, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
        kept = context_len if self.sliding_window is None else min(context_len, self.sliding_window)
        return 2 * kept * self.num_kv_heads * self.head_dim * dtype_bytes(dtype)

    @classmethod
    def static_layer(cls, config, layer_idx, batch_size, max_cache_len, dtype, device) -> StaticKV:
        """K and V buffers of `max_cache_len` tokens (full attention) or a ring of `sliding_window` slots."""
        window = config.sliding_window if config.layer_types[layer_idx] == "sliding_attention" else None
        return StaticKV(batch_size, config.num_key_value_heads, max_cache_len, config.head_dim, dtype, device,
                        window=window)


def _refuse_transformers_static(layer) -> None:
    if isinstance(layer, StaticLayer):  # its own position counter would drift from the model's
        raise ValueError("transformers' StaticCache does not fit hybrid models; use hybridize.HybridStaticCache "
                         "(generate(..., cache_implementation='static') builds one)")


def _document_ids(cu_seqlens: Tensor, length: int) -> Tensor:
    """(length,) index of the packed document each position belongs to."""
    positions = torch.arange(length, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:], positions, right=True)
