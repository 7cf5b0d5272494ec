"""What the linear mixers share: projections, optional short convolution, QK-norm, RoPE, the cache state, and the
output RMSNorm + gate. Each mixer file adds only its gates and its recurrence (`_recur`).

Data flow for x (B, T, hidden):
    q, k, v = x Wq, x Wk, x Wv                      (B, T, H*K), (B, T, H*K), (B, T, H*V)
    [short conv + SiLU on q|k|v]  or the mixer's own activation
    q, k -> heads, [RMSNorm per head], [RoPE]       (B, T, H, K)
    o, S = recurrence(q, k, v, gates(x), S)         (B, T, H, V), state (B, H, K, V) fp32
    y = (RMSNorm(o) * gate(x Wz)) Wo                 (B, T, hidden)
Padded positions (left padding) get zero k and v and neutral gates, so they never touch the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, RMSNorm, SeqInfo, Tensor, dtype_bytes
from . import kernels
from .fusion import project


class ShortConv(nn.Conv1d):
    """Depthwise causal convolution over q|k|v; the weights of an `nn.Conv1d`, the computation in `kernels`."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: Tensor, state: Tensor | None, cu_seqlens: Tensor | None) -> tuple[Tensor, Tensor]:
        return kernels.short_conv(x, self.weight.squeeze(1), None, state, cu_seqlens)


class LinearMixer(Mixer):
    layer_type = "linear_attention"
    fused_projections = ("q_proj", "k_proj", "v_proj", "g_proj")  # what reads x (g_proj: the output gate); fusion.py
    #: activation applied to q, k, v when there is no short convolution (fla: SiLU for GatedDeltaNet)
    qkv_activation: str | None = None
    #: output gate nonlinearity: "sigmoid" (Lightning) or "silu" (fla's swish gate for GatedDeltaNet and GLA)
    gate_activation: str = "silu"
    always_qk_norm: bool = False

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = H = config.linear_num_heads
        self.head_k_dim = K = config.linear_head_dim
        self.head_v_dim = V = config.linear_value_head_dim
        self.scale = K**-0.5
        self.use_rope = config.linear_rope
        hidden = config.hidden_size
        bias = config.linear_qkv_bias
        self.q_proj = nn.Linear(hidden, H * K, bias=bias)
        self.k_proj = nn.Linear(hidden, H * K, bias=bias)
        self.v_proj = nn.Linear(hidden, H * V, bias=bias)
        self.g_proj = nn.Linear(hidden, H * V, bias=False)  # output gate
        self.o_proj = nn.Linear(H * V, hidden, bias=False)
        qk_norm = self.always_qk_norm or config.linear_qk_norm
        self.q_norm = RMSNorm(K, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(K, config.rms_norm_eps) if qk_norm else None
        self.o_norm = RMSNorm(V, config.rms_norm_eps)
        self.conv = ShortConv(H * (2 * K + V), config.linear_conv_size) if config.linear_conv_size else None

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        mask = info.token_mask  # (B, T) or None
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        rec, conv_state = _read(state)
        q, k, v, gate = project(self, x, self.fused_projections)  # one matmul once fused
        if mask is not None and self.v_proj.bias is not None:  # biases would make padded k, v non-zero
            keep = mask.unsqueeze(-1).to(x.dtype)
            q, k, v = q * keep, k * keep, v * keep
        if self.conv is not None:
            qkv, conv_state = self.conv(torch.cat([q, k, v], dim=-1), conv_state, info.cu_seqlens)
            q, k, v = qkv.split([H * K, H * K, H * V], dim=-1)
        elif self.qkv_activation == "silu":
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = kernels.rope(q, k, info.cos, info.sin)
        o, rec = self._recur(x, q, k, v, mask, rec, info.cu_seqlens)
        if state is not None:
            state.update_recurrent_state(rec)
            if conv_state is not None:
                state.update_conv_state(conv_state)  # given a full (N, D, W) window, this stores it as is
        gate = gate.view(B, T, H, V)
        o = kernels.rms_norm_gated(o.to(x.dtype), self.o_norm.weight, self.o_norm.eps, gate, self.gate_activation)
        return self.o_proj(o.reshape(B, T, H * V)), state

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def state_size(self, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
        recurrent = self.num_heads * self.head_k_dim * self.head_v_dim * 4  # fp32
        conv = 0 if self.conv is None else self.conv.in_channels * self.conv.kernel_size[0] * dtype_bytes(dtype)
        return recurrent + conv


def _read(layer) -> tuple[Tensor | None, Tensor | None]:
    """(recurrent state, conv state) held by a transformers `LinearAttentionLayer`, None where not yet written."""
    if layer is None:
        return None, None
    rec = layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None
    conv = layer.conv_states[0] if layer.is_conv_states_initialized[0] else None
    return rec, conv


def masked(gate: Tensor, mask: Tensor | None, neutral: float = 0.0) -> Tensor:
    """Set a (B, T, ...) gate to its neutral value at padded positions."""
    if mask is None:
        return gate
    shape = mask.shape + (1,) * (gate.dim() - 2)
    return torch.where(mask.view(shape), gate, torch.full_like(gate, neutral))
