"""Gated linear attention (Yang et al. 2023), with fla's `GatedLinearAttention` layer as the reference:

    q, k, v = x Wq, x Wk, x Wv                          (or short conv + SiLU)
    g_t = logsigmoid(x W_1 W_2 + b) / 16                per key channel, a low-rank gate (rank 16)
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,  o_t = q_t S_t / sqrt(d)
    y = (RMSNorm(o) * SiLU(x Wz)) Wo
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from . import kernels
from .base import qk_prep
from .linear import LinearMixer, masked


class GLA(LinearMixer):
    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx, project_output)
        r = config.gla_gate_low_rank_dim
        self.gk_proj = nn.Sequential(
            nn.Linear(config.hidden_size, r, bias=False),
            nn.Linear(r, self.num_heads * self.head_k_dim, bias=True),
        )
        self.gate_logit_normalizer = config.gla_gate_logit_normalizer

    def _decode_plan(self, device):
        return True if self.qkv_activation is None else None

    def _decode_step(self, x, q, k, v, rec, info, mask, plan, extra):
        """One kernel after the gate's two small matmuls: norms, RoPE, the per-channel decay from the gate's logits,
        the state update in place, the output."""
        B, H, K = x.shape[0], self.num_heads, self.head_k_dim
        return kernels.linear_decode_step(q, k, v, rec, None, scale=self.scale, mask=mask,
                                          gate_logits=self.gk_proj(x).view(B, 1, H, K),
                                          gate_normalizer=self.gate_logit_normalizer,
                                          **qk_prep(self.q_norm, self.k_norm, self.use_rope, info))

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens):
        B, T = x.shape[:2]
        gk = F.logsigmoid(self.gk_proj(x).float()).view(B, T, self.num_heads, self.head_k_dim)
        gk = masked(gk / self.gate_logit_normalizer, mask)
        return kernels.gla(q, k, v, g=gk, scale=self.scale, initial_state=initial_state, cu_seqlens=cu_seqlens)
