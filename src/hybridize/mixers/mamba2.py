"""Mamba-2 (SSD, Dao and Gu 2024), with the `Mamba2` mixer of mamba_ssm / fla as the reference for the math:

    x, B, C = SiLU(conv(x Wx | x WB | x WC))       (short causal conv over x|B|C; SiLU alone without one)
    dt_t = softplus(x W_dt + dt_bias)               (B, T, H), one step size per head
    a_t = exp(dt_t * A_h),  A_h = -exp(A_log_h)     a scalar decay per head and step
    S_t = a_t S_{t-1} + dt_t B_t^T x_t,  y_t = C_t S_t + D_h x_t
    out = RMSNorm(y * SiLU(x Wz)) Wo                the gated norm (norm after the gate), per head
The state-space recurrence is gated linear attention with a per-head decay: q = C, k = dt * B, v = x, g = dt * A,
scale 1, so it runs on the same kernels (fla's `chunk_simple_gla` / `fused_recurrent_simple_gla`), and D x is added
after. Shapes follow our linear mixers: H heads with state size N = `linear_head_dim` and head dim P =
`linear_value_head_dim`; B and C are per head (Mamba-2's ngroups = H, as after a GQA -> MHA transfer), and the gated
norm normalises each head (group size P). With `linear_rope` (HyPE, on in conversions) C and B are rotated like q and
k; with `linear_qk_norm` they are RMS-normed per head like a Qwen3 teacher's q and k.

The projections keep the names of the attention they come from, so a conversion reads as Mamba-in-the-Llama's:
C = q_proj (from Wq), B = k_proj (from Wk), x = v_proj (from Wv), out = o_proj (from Wo), K/V heads repeated per
query head; z = g_proj (the gate), dt_proj, dt_bias, A_log and D start fresh (mamba_ssm's init: A ~ U(1, 16), dt
log-uniform in [1e-3, 1e-1], D = 1), and with a short convolution its taps start as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .linear import LinearMixer, masked


class Mamba2(LinearMixer):
    qkv_activation = "silu"
    gate_before_norm = True

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx, project_output)
        H = self.num_heads
        self.dt_proj = nn.Linear(config.hidden_size, H, bias=False)
        fresh = self.ssm_init(H)
        self.A_log = nn.Parameter(fresh["A_log"])
        self.dt_bias = nn.Parameter(fresh["dt_bias"])
        self.D = nn.Parameter(fresh["D"])

    def fresh_parameters(self) -> dict[str, torch.Tensor]:
        return self.ssm_init(self.num_heads)

    @staticmethod
    def ssm_init(num_heads: int) -> dict[str, torch.Tensor]:
        """mamba_ssm's initialisation: A ~ U(1, 16) stored as log; dt log-uniform in [1e-3, 1e-1] stored through the
        inverse softplus; the skip D = 1."""
        A_log = torch.empty(num_heads).uniform_(1, 16).log()
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        return {"A_log": A_log, "dt_bias": dt + torch.log(-torch.expm1(-dt)), "D": torch.ones(num_heads)}

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens):
        dt = masked(F.softplus(self.dt_proj(x).float() + self.dt_bias.float()), mask)  # (B, T, H); 0 where padded
        g = -self.A_log.float().exp() * dt  # log decay dt * A
        k = (k.float() * dt.unsqueeze(-1)).to(k.dtype)  # the input's step: dt B
        o, state = kernels.gla(q, k, v, g=g, scale=1.0, initial_state=initial_state, cu_seqlens=cu_seqlens)
        o = o + (self.D.float()[:, None] * v.float()).to(o.dtype)  # (B, T, H, P) skip
        return o, state
