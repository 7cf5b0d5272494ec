"""One-token decode step of Gated DeltaNet (and of DeltaNet: no decay) in one kernel, its state updated in place in
the static cache:

    q, k, v = SiLU(q), SiLU(k), SiLU(v)                       (the mixer's q/k/v activation)
    q, k = RMSNorm(q) * wq, RMSNorm(k) * wk                   (optional q/k norm), RoPE(q), RoPE(k) (optional)
    q, k = q / |q|, k / |k|                                   (L2, fp32, as fla's `use_qk_l2norm_in_kernel`)
    g = -exp(A_log) softplus(a + dt_bias),  beta = sigmoid(b)  (a, b: the token's a_proj / b_proj outputs, per head)
    S = exp(g) S;  S = S + k^T (beta (v - k S));  o = (scale q) S

Per layer and token the eager step runs the three activations, the norms, RoPE, the gates' half-dozen small operators,
the masking of padded tokens, fla's `fused_recurrent_gated_delta_rule` (with the output and final state it allocates)
and the state's copy into the cache: twenty-odd launches. One program per (batch row, head, block of V) holds its
(K, BLOCK_V) block of the state; the k . S product it needs runs over the whole K within the program. Roundings as the
reference (`hybridize.mixers.reference.gdn_decode_step`, the ops the eager step runs): the activations, norms and RoPE
round to the model's dtype as torch does, beta is rounded to it as `kernels.gated_delta_rule` does, the rest is fp32.
Inference only.

Importing this module imports Triton; only `kernels.py` imports it, on first use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fused import _act, _keep, _norm_rope, _rope_halves, _round, _softplus
from .linear_decode import _head_program, _state_block, _Step

Tensor = torch.Tensor


@triton.jit
def _gdn_decode_kernel(Q, K, V, QW, KW, COS, SIN, A, BB, A_LOG, DT_BIAS, MASK, S, O,
                       H, HV_BLOCKS, sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sc_b, ss_b, sa_b, sb_b, scale, inv_D, eps,
                       HALF: tl.constexpr, DV: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_V: tl.constexpr,
                       HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr, HAS_MASK: tl.constexpr, ACT: tl.constexpr,
                       HAS_DECAY: tl.constexpr, INTERPRETER: tl.constexpr):
    b, h, half, h_ok, cols, v_ok = _head_program(H, HV_BLOCKS, HALF, DV, BLOCK_HALF, BLOCK_V)
    c1, c2, s1, s2 = _rope_halves(COS, SIN, b, sc_b, ss_b, half, h_ok, HALF, HAS_ROPE, BLOCK_HALF)
    keep = _keep(MASK, b, HAS_MASK)  # a padded token: q, k, v, a, b count as zero, the gates neutral
    q1, q2 = _norm_rope(Q + b * sq_b + h * sq_h, QW, c1, c2, s1, s2, half, h_ok, keep, inv_D, eps,
                        HAS_NORM, HAS_ROPE, HALF, INTERPRETER, ACT)
    k1, k2 = _norm_rope(K + b * sk_b + h * sk_h, KW, c1, c2, s1, s2, half, h_ok, keep, inv_D, eps,
                        HAS_NORM, HAS_ROPE, HALF, INTERPRETER, ACT)
    # L2 normalisation in fp32 (F.normalize: x / max(|x|, 1e-12))
    rq = 1.0 / tl.maximum(tl.sqrt(tl.sum(q1 * q1, axis=0) + tl.sum(q2 * q2, axis=0)), 1e-12)
    rk = 1.0 / tl.maximum(tl.sqrt(tl.sum(k1 * k1, axis=0) + tl.sum(k2 * k2, axis=0)), 1e-12)
    q1, q2, k1, k2 = q1 * rq * scale, q2 * rq * scale, k1 * rk, k2 * rk
    vdt = V.dtype.element_ty
    v = tl.load(V + b * sv_b + h * sv_h + cols, mask=v_ok, other=0.0).to(tl.float32) * keep
    if ACT == 2:
        v = _round(_act(v, 2, INTERPRETER), vdt, INTERPRETER)
    # gates: softplus as torch's (threshold 20), beta rounded to the model's dtype as the eager step does
    if HAS_DECAY:
        a = tl.load(A + b * sa_b + h).to(tl.float32) * keep + tl.load(DT_BIAS + h).to(tl.float32)
        sp = _softplus(a, INTERPRETER)
        g = -tl.exp(tl.load(A_LOG + h).to(tl.float32)) * sp * keep
    else:  # DeltaNet: no decay
        g = 0.0
    bt = tl.load(BB + b * sb_b + h).to(tl.float32) * keep
    beta = _round(_act(bt, 1, INTERPRETER), vdt, INTERPRETER) * keep
    p1, p2, m = _state_block(S, b, h, H, half, h_ok, cols, v_ok, HALF, DV)
    decay = tl.exp(g)
    s_1 = tl.load(p1, mask=m, other=0.0) * decay
    s_2 = tl.load(p2, mask=m, other=0.0) * decay
    kv = tl.sum(s_1 * k1[:, None], axis=0) + tl.sum(s_2 * k2[:, None], axis=0)
    delta = beta * (v - kv)
    s_1 = s_1 + k1[:, None] * delta[None, :]
    s_2 = s_2 + k2[:, None] * delta[None, :]
    tl.store(p1, s_1, mask=m)
    tl.store(p2, s_2, mask=m)
    o = tl.sum(s_1 * q1[:, None], axis=0) + tl.sum(s_2 * q2[:, None], axis=0)
    tl.store(O + (b * H + h) * DV + cols, o.to(O.dtype.element_ty), mask=v_ok)


def gdn_decode_step(q: Tensor, k: Tensor, v: Tensor, a: Tensor | None, b: Tensor, A_log: Tensor | None,
                    dt_bias: Tensor | None, state: Tensor, *, scale: float, activation: str | None = "silu",
                    q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                    cos: Tensor | None = None, sin: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """q, k: (B, 1, H, D), v: (B, 1, H, DV) raw projections (before the activation; any strides but the last), one
    dtype; a, b: (B, 1, H) the a_proj / b_proj outputs; A_log, dt_bias: (H,) (a, A_log, dt_bias all None: no
    decay, DeltaNet's step); state: (B, H, D, DV) fp32 contiguous, updated in place; activation "silu" or None;
    q_weight / k_weight: (D,) in q's dtype (both or neither); cos, sin: (B or 1, 1, D) (both or neither); mask: (B, 1)
    bool, False for a padded token. D even. Returns o (B, 1, H, DV) in v's dtype."""
    st = _Step(q, k, v, state, q_weight, k_weight, cos, sin, mask)
    B, H = st.B, st.H
    decay = a is not None
    if decay != (A_log is not None) or decay != (dt_bias is not None):
        raise ValueError("a, A_log and dt_bias go together: all three (Gated DeltaNet) or none (DeltaNet)")
    if b.shape != (B, 1, H) or (decay and (a.shape != (B, 1, H) or A_log.shape != (H,) or dt_bias.shape != (H,))):
        raise ValueError(f"a, b must be ({B}, 1, {H}) and A_log, dt_bias ({H},), got {tuple(b.shape)} for b"
                         + (f", {tuple(a.shape)}, {tuple(A_log.shape)}, {tuple(dt_bias.shape)}" if decay else ""))
    if not decay:
        a, A_log, dt_bias = b, b, b  # placeholders the kernel does not read
    if activation not in ("silu", None):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    a, b = (t if t.stride(-1) == 1 else t.contiguous() for t in (a, b))
    _gdn_decode_kernel[st.grid](
        st.q, st.k, st.v, st.q_weight, st.k_weight, st.cos, st.sin, a, b, A_log, dt_bias, st.mask_arg, state, st.out,
        H, st.blocks, *st.strides(), a.stride(0), b.stride(0), float(scale), 1.0 / st.D, float(eps),
        ACT=2 if activation == "silu" else 0, HAS_DECAY=decay, **st.meta())
    return st.out
