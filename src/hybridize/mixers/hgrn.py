"""HGRN (Qin et al. 2023, "Hierarchically Gated Recurrent Neural Network for Sequence Modeling"), with fla's
`HGRNAttention` layer (expand_ratio 1) as the reference:

    i, f = x Wi, x Wf                                   (B, T, D), D = linear_num_heads * linear_value_head_dim
    [short conv over i|f, no activation]
    f_t = lb + (1 - lb) * sigmoid(f)                    forget gate above a learned lower bound (`LowerBound`)
    h_t = f_t * h_{t-1} + (1 - f_t) * SiLU(i_t)         a vector state: one number per channel
    y = (RMSNorm(h) * SiLU(x Wg)) Wo                    (norm over all D channels)
No query-key product, no heads and no position encoding: the state is D numbers per sequence (fp32), the
smallest of all our mixers. fla's kernels `chunk_hgrn` / `fused_recurrent_hgrn`.

Conversion (`hybridize.convert.transfer`): HGRN has no query or key, so only the value path transfers: i from the
teacher's Wv (and its bias; K/V heads repeated per query head), the output projection from Wo. The forget gate's
projection, the lower bound, the output gate and the output norm start fresh (with a short convolution, its taps
start as the identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .base import RMSNorm, SeqInfo, Tensor
from .fusion import project
from .linear import LowerBound, RecurrentMixer, ShortConv, lower_bounded_log_forget, masked, read_state


class HGRN(RecurrentMixer):
    fused_projections = ("i_proj", "f_proj", "g_proj")  # what reads x; fusion.py
    from_attention = {"i_proj.weight": "v_proj.weight", "i_proj.bias": "v_proj.bias",
                      "o_proj.weight": "o_proj.weight"}

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx)
        self.dim = D = config.linear_num_heads * config.linear_value_head_dim
        hidden = config.hidden_size
        self.i_proj = nn.Linear(hidden, D, bias=config.linear_qkv_bias)
        self.f_proj = nn.Linear(hidden, D, bias=False)
        self.g_proj = nn.Linear(hidden, D, bias=False)  # output gate
        self.o_proj = nn.Linear(D, hidden, bias=False) if project_output else None
        self.o_norm = RMSNorm(D, config.rms_norm_eps)
        self.lower_bound = LowerBound(D, layer_idx, config.num_hidden_layers) if layer_idx > 0 else None
        self.conv = ShortConv(self._conv_channels, self._conv_size, activation=None) if self._conv_size else None

    @classmethod
    def state_shape(cls, config) -> tuple[int, ...]:
        return (config.linear_num_heads * config.linear_value_head_dim,)

    @classmethod
    def conv_segments(cls, config) -> tuple[int, ...]:
        return (config.linear_value_head_dim, config.linear_value_head_dim)  # i | f, V channels per head

    def fresh_parameters(self) -> dict[str, Tensor]:
        return {} if self.lower_bound is None else {"lower_bound.logit": self.lower_bound.fresh()}

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        mask = info.token_mask  # (B, T) or None
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        rec, conv_state = read_state(state)
        i, f, gate = project(self, x, self.fused_projections)  # one matmul once fused
        if mask is not None and self.i_proj.bias is not None:  # a bias would make padded inputs non-zero
            i = i * mask.unsqueeze(-1).to(i.dtype)
        if self.conv is not None:
            i_f, conv_state = self.conv(torch.cat([i, f], dim=-1), conv_state, info.cu_seqlens)
            i, f = i_f.split([self.dim, self.dim], dim=-1)
        g = lower_bounded_log_forget(f, None if self.lower_bound is None else self.lower_bound())  # (B, T, D) fp32
        g = masked(g, mask)  # log f = 0 where padded: the state is kept as it is
        i = F.silu(i.float()) * -torch.expm1(g)  # (1 - f) SiLU(i); 0 where padded
        o, rec = kernels.hgrn(i.to(x.dtype), g, initial_state=rec, cu_seqlens=info.cu_seqlens)
        if state is not None:
            state.update_recurrent_state(rec)
            if conv_state is not None:
                state.update_conv_state(conv_state)
        o = kernels.rms_norm_gated(o.to(x.dtype), self.o_norm.weight, self.o_norm.eps, gate, "silu")
        return (o if self.o_proj is None else self.o_proj(o)), state
