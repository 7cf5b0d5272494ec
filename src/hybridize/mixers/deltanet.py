"""DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length"), with fla's `DeltaNet` layer (its defaults) as the reference:

    q, k, v = SiLU(x Wq), SiLU(x Wk), SiLU(x Wv)          (or short conv + SiLU, as the paper trains it)
    beta_t = sigmoid(x W_b)                                 per head
    S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,  o_t = q_t S_t / sqrt(d)   on L2-normalised q, k
    y = RMSNorm(o) Wo                                       per-head norm, no output gate (fla: use_gate=False)
GatedDeltaNet is this rule with a decay per head and step, and an output gate. The paper's short convolution
(size 4) is `linear_conv_size=4`; our conversions start without one (they start from attention weights).

Conversion (`hybridize.convert.transfer`): q, k, v, o (and q/k/v biases, q/k norms) from the teacher's attention,
K/V heads repeated per query head; beta's projection and the output norm start fresh (with a short convolution, its
taps start as the identity: the newest input passes through).
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .base import qk_prep
from .linear import LinearMixer, masked


class DeltaNet(LinearMixer):
    qkv_activation = "silu"
    output_gate = False
    # beta's input reads x too: one matmul with q|k|v in the one-kernel decode step
    fused_projections = LinearMixer.fused_projections + ("b_proj",)

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx, project_output)
        self.b_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)

    def _decode_plan(self, device):
        return True if self.qkv_activation in (None, "silu") else None

    def _decode_step(self, x, q, k, v, rec, info, mask, plan, extra):
        """One kernel from the raw projections (Gated DeltaNet's without its decay): activations, norms, RoPE, beta,
        L2 norm, the delta rule in place."""
        b = extra[0] if extra else self.b_proj(x)
        return kernels.gdn_decode_step(q, k, v, None, b, None, None, rec, scale=self.scale,
                                       activation=self.qkv_activation, mask=mask,
                                       **qk_prep(self.q_norm, self.k_norm, self.use_rope, info))

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens):
        beta = masked(torch.sigmoid(self.b_proj(x).float()), mask)  # beta 0: a padded step leaves the state alone
        return kernels.delta_rule(q, k, v, beta.to(q.dtype), scale=self.scale, initial_state=initial_state,
                                  cu_seqlens=cu_seqlens)
