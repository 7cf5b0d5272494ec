"""Lightning attention (HypeNet, METHODS.md): linear attention with a fixed per-head decay.

    q = RMSNorm(x Wq), k = RMSNorm(x Wk), v = x Wv, RoPE on q and k, k scaled by 1/sqrt(d)
    S_t = gamma_h S_{t-1} + k_t^T v_t,  o_t = q_t S_t,  y = (RMSNorm(o) * sigmoid(x Wz)) Wo
    gamma_h = exp(-2^(-8h/H)), h = 1..H: head 1 forgets fastest, head H keeps a ~256-token memory.
No feature map and no short convolution by default (HALO: short conv did not converge at 1.7B).
"""

from __future__ import annotations

import torch

from . import kernels
from .linear import LinearMixer, fixed_log_decay, masked


def lightning_log_decay(num_heads: int, device=None) -> torch.Tensor:
    """(H,) log gamma_h = -2^(-8h/H), h = 1..H. Computed, not stored: it is a pure function of H."""
    h = torch.arange(1, num_heads + 1, dtype=torch.float32, device=device)
    return -torch.exp2(-8.0 * h / num_heads)


class Lightning(LinearMixer):
    gate_activation = "sigmoid"
    always_qk_norm = True

    def _log_decay(self, device):
        return fixed_log_decay(lightning_log_decay, self.num_heads, device)

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens):
        log_gamma = self._log_decay(q.device)
        if mask is None:
            return kernels.gla(q, k, v, g_gamma=log_gamma, scale=self.scale, initial_state=initial_state,
                               cu_seqlens=cu_seqlens)
        g = masked(log_gamma.expand(*q.shape[:3]), mask)  # padded steps do not decay the state
        return kernels.gla(q, k, v, g=g, scale=self.scale, initial_state=initial_state, cu_seqlens=cu_seqlens)
