"""Gated DeltaNet (Yang et al. 2024), with fla's `GatedDeltaNet` layer as the reference for the math:

    q, k, v = SiLU(x Wq), SiLU(x Wk), SiLU(x Wv)       (or short conv + SiLU)
    g_t = -exp(A_log) * softplus(x W_a + dt_bias)      per head, log decay
    beta_t = sigmoid(x W_b)                            per head
    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t   on L2-normalised q, k
    y = (RMSNorm(o) * SiLU(x Wz)) Wo
Short convolution is off by default (our conversions start from attention weights) and on with linear_conv_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .base import qk_prep
from .linear import LinearMixer, masked


class GatedDeltaNet(LinearMixer):
    qkv_activation = "silu"
    # the gate inputs read x too: one matmul with q|k|v|gate in the one-kernel decode step
    fused_projections = LinearMixer.fused_projections + ("a_proj", "b_proj")

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx, project_output)
        H = self.num_heads
        self.a_proj = nn.Linear(config.hidden_size, H, bias=False)
        self.b_proj = nn.Linear(config.hidden_size, H, bias=False)
        fresh = self.gate_init(H)
        self.A_log = nn.Parameter(fresh["A_log"])
        self.dt_bias = nn.Parameter(fresh["dt_bias"])

    def fresh_parameters(self) -> dict[str, torch.Tensor]:
        return self.gate_init(self.num_heads)

    @staticmethod
    def gate_init(num_heads: int) -> dict[str, torch.Tensor]:
        """fla's initialisation: A ~ U(0, 16); dt log-uniform in [1e-3, 1e-1], stored through inverse softplus."""
        A_log = torch.empty(num_heads).uniform_(0, 16).log()
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        return {"A_log": A_log, "dt_bias": dt + torch.log(-torch.expm1(-dt))}

    def _decode_plan(self, device):
        return True if self.qkv_activation in (None, "silu") else None

    def _decode_step(self, x, q, k, v, rec, info, mask, plan, extra):
        """One kernel from the raw projections: activations, norms, RoPE, gates, L2 norm, the delta rule in place."""
        a, b = extra if extra else (self.a_proj(x), self.b_proj(x))
        return kernels.gdn_decode_step(q, k, v, a, b, self.A_log, self.dt_bias, rec, scale=self.scale,
                                       activation=self.qkv_activation, mask=mask,
                                       **qk_prep(self.q_norm, self.k_norm, self.use_rope, info))

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens):
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta = torch.sigmoid(self.b_proj(x).float())
        g, beta = masked(g, mask), masked(beta, mask)
        return kernels.gated_delta_rule(q, k, v, g, beta.to(q.dtype), scale=self.scale,
                                        initial_state=initial_state, cu_seqlens=cu_seqlens)
