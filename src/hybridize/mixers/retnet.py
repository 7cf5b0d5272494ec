"""Multi-scale retention (RetNet, Sun et al. 2023), with fla's `MultiScaleRetention` layer as the reference:

    q, k, v = x Wq, x Wk, x Wv;  RoPE on q and k (fla's stand-in for xPos)
    S_t = gamma_h S_{t-1} + k_t^T v_t,  o_t = q_t S_t / sqrt(d)
    gamma_h = 1 - 2^(-5-h), h = 0..H-1: fixed per head, from a ~32-token memory (head 0) to a long one
    y = (RMSNorm(o) * SiLU(x Wz)) Wo                     (per-head norm, swish output gate)
The same recurrence as Lightning (fla's `chunk_simple_gla` with `g_gamma`); Lightning differs by its decays
(exp(-2^(-8h/H))), its always-on QK-norm and its sigmoid gate. Here QK-norm follows `linear_qk_norm` (off in RetNet;
a conversion keeps a Qwen3 teacher's q/k norms) and RoPE follows `linear_rope`.

Conversion (`hybridize.convert.transfer`): q, k, v, o (and q/k/v biases, q/k norms) from the teacher's attention,
K/V heads repeated per query head; the output gate and output norm start fresh; the decays have no parameters.
"""

from __future__ import annotations

import torch

from . import kernels
from .linear import LinearMixer, fixed_log_decay, masked


def retnet_log_decay(num_heads: int, device=None) -> torch.Tensor:
    """(H,) log gamma_h = log(1 - 2^(-5-h)), h = 0..H-1 (fla's `chunk_retention`)."""
    h = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h))


class RetNet(LinearMixer):
    gate_activation = "silu"

    def _log_decay(self, device):
        return fixed_log_decay(retnet_log_decay, self.num_heads, device)

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens):
        log_gamma = self._log_decay(q.device)
        if mask is None:
            return kernels.gla(q, k, v, g_gamma=log_gamma, scale=self.scale, initial_state=initial_state,
                               cu_seqlens=cu_seqlens)
        g = masked(log_gamma.expand(*q.shape[:3]), mask)  # padded steps do not decay the state
        return kernels.gla(q, k, v, g=g, scale=self.scale, initial_state=initial_state, cu_seqlens=cu_seqlens)
