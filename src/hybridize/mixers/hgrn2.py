"""HGRN-2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion"), with fla's `HGRN2Attention` layer as the
reference: HGRN with a matrix state, i.e. gated linear attention whose key is tied to the forget gate.

    q, f, i = x Wq, x Wf, x Wi                         (B, T, H*K), (B, T, H*K), (B, T, H*V)
    [short conv over q|f|i, no activation]
    q = SiLU(q);  f_t = lb + (1 - lb) * sigmoid(f);  k_t = 1 - f_t      per key channel
    S_t = diag(f_t) S_{t-1} + k_t^T i_t,  o_t = q_t S_t / sqrt(K)       fla's `chunk_gla` with k = 1 - exp(g)
    y = RMSNorm(o) Wo                                   (norm over all H*V channels, no output gate)
K = `linear_head_dim` is HGRN-2's expansion ratio (fla's default 128, a Qwen3 head's size). No position encoding:
`linear_rope` and `linear_qk_norm` do not apply.

Conversion (`hybridize.convert.transfer`): the query from the teacher's Wq (and its bias), i from Wv (and its bias;
K/V heads repeated per query head), the output projection from Wo. HGRN-2 has no key projection (its key is 1 - f):
the teacher's Wk and q/k norms are not used. The forget gate's projection and lower bound and the output norm start
fresh (with a short convolution, its taps start as the identity).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from . import kernels
from .base import RMSNorm, SeqInfo, Tensor
from .fusion import project
from .linear import LowerBound, RecurrentMixer, ShortConv, lower_bounded_log_forget, masked, read_state


class HGRN2(RecurrentMixer):
    fused_projections = ("q_proj", "f_proj", "i_proj")  # what reads x; fusion.py
    from_attention = {"q_proj.weight": "q_proj.weight", "q_proj.bias": "q_proj.bias",
                      "i_proj.weight": "v_proj.weight", "i_proj.bias": "v_proj.bias",
                      "o_proj.weight": "o_proj.weight"}

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx)
        self.num_heads = H = config.linear_num_heads
        self.head_k_dim = K = config.linear_head_dim
        self.head_v_dim = V = config.linear_value_head_dim
        self.scale = K**-0.5
        hidden, bias = config.hidden_size, config.linear_qkv_bias
        self.q_proj = nn.Linear(hidden, H * K, bias=bias)
        self.f_proj = nn.Linear(hidden, H * K, bias=False)
        self.i_proj = nn.Linear(hidden, H * V, bias=bias)
        self.o_proj = nn.Linear(H * V, hidden, bias=False) if project_output else None
        self.o_norm = RMSNorm(H * V, config.rms_norm_eps)
        self.lower_bound = LowerBound(H * K, layer_idx, config.num_hidden_layers) if layer_idx > 0 else None
        self.conv = ShortConv(self._conv_channels, self._conv_size, activation=None) if self._conv_size else None

    @classmethod
    def state_shape(cls, config) -> tuple[int, ...]:
        return (config.linear_num_heads, config.linear_head_dim, config.linear_value_head_dim)

    @classmethod
    def conv_segments(cls, config) -> tuple[int, ...]:
        return (config.linear_head_dim, config.linear_head_dim, config.linear_value_head_dim)  # q | f | i

    def fresh_parameters(self) -> dict[str, Tensor]:
        return {} if self.lower_bound is None else {"lower_bound.logit": self.lower_bound.fresh()}

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        mask = info.token_mask  # (B, T) or None
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        rec, conv_state = read_state(state)
        q, f, i = project(self, x, self.fused_projections)  # one matmul once fused
        if mask is not None and self.i_proj.bias is not None:  # biases would make padded inputs non-zero
            keep = mask.unsqueeze(-1).to(x.dtype)
            q, i = q * keep, i * keep
        if self.conv is not None:
            qfi, conv_state = self.conv(torch.cat([q, f, i], dim=-1), conv_state, info.cu_seqlens)
            q, f, i = qfi.split([H * K, H * K, H * V], dim=-1)
        g = lower_bounded_log_forget(f, None if self.lower_bound is None else self.lower_bound())  # (B, T, H*K)
        g = masked(g, mask)  # log f = 0 where padded: no decay, and k = 1 - f = 0 adds nothing
        k = -torch.expm1(g)
        q, k, g = (t.reshape(B, T, H, K) for t in (F.silu(q), k, g))
        o, rec = kernels.gla(q, k, i.reshape(B, T, H, V), g=g, scale=self.scale, initial_state=rec,
                             cu_seqlens=info.cu_seqlens)
        if state is not None:
            state.update_recurrent_state(rec)
            if conv_state is not None:
                state.update_conv_state(conv_state)
        o = kernels.rms_norm(o.to(x.dtype).reshape(B, T, H * V), self.o_norm.weight, self.o_norm.eps)
        return (o if self.o_proj is None else self.o_proj(o)), state
