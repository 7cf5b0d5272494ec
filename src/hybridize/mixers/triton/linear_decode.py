"""One-token decode step of the fixed-decay linear mixers (Lightning, RetNet) in one kernel, state updated in place.

Per layer and token the eager step is: RMSNorm of q, RMSNorm of k, RoPE of both, then fla's `fused_recurrent_simple_gla`
(which allocates its output and a new final state around its kernel), the copy of that state into the cache's buffer
and a cast of the output: about eight launches for a few KB of activations and the (B, H, K, V) state. Here:

    q, k = RMSNorm(q) * wq, RMSNorm(k) * wk          (optional: the mixer's q/k norm)
    q, k = RoPE(q), RoPE(k)                          (optional: rotate-half, cos / sin of the token's position)
    S = exp(log_decay_h) S + k^T v                   (S: (K, V) fp32 per (batch, head), written back in place)
    o = (scale q) S                                  (in v's dtype)

one program per (batch, head, block of V), each holding its (K, BLOCK_V) block of the state. The norms and the
rotation of one head's q and k are recomputed by each of its V blocks (a few hundred flops, no second launch).
Roundings follow the reference (`hybridize.mixers.reference.linear_decode_step`, the ops the eager step runs): q and
k rounded to their dtype after the norm, after the weight and after each RoPE product and sum, as those ops round;
the recurrence in fp32 as fla's kernel and `reference.gla_recurrent` compute it. Inference only.

Importing this module imports Triton; only `kernels.py` imports it, on first use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fused import _keep, _logsigmoid, _norm_rope, _rope_halves, _warps

Tensor = torch.Tensor


@triton.jit
def _head_program(H, HV_BLOCKS, HALF: tl.constexpr, DV: tl.constexpr, BLOCK_HALF: tl.constexpr,
                  BLOCK_V: tl.constexpr):
    """This program's batch row b and head h (one program per (row, head, block of V)), the head's half range
    (`half`, `h_ok`) and its block of V columns (`cols`, `v_ok`)."""
    pid = tl.program_id(0)
    bh = pid // HV_BLOCKS
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    half = tl.arange(0, BLOCK_HALF)
    cols = (pid % HV_BLOCKS) * BLOCK_V + tl.arange(0, BLOCK_V)
    return b, h, half, half < HALF, cols, cols < DV


@triton.jit
def _state_block(S, b, h, H, half, h_ok, cols, v_ok, HALF: tl.constexpr, DV: tl.constexpr):
    """Pointers to the (b, h) state's rows 0 .. HALF - 1 and HALF .. 2 HALF - 1 at this block's columns, and the
    mask of both."""
    p1 = S + (b * H + h) * (2 * HALF) * DV + half.to(tl.int64)[:, None] * DV + cols[None, :]
    return p1, p1 + HALF * DV, h_ok[:, None] & v_ok[None, :]


@triton.jit
def _linear_decode_kernel(Q, K, V, QW, KW, COS, SIN, G, GK, MASK, S, O,
                          H, HV_BLOCKS, sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sc_b, ss_b, sg_b, sg_h, scale, inv_D, eps,
                          g_norm, HALF: tl.constexpr, DV: tl.constexpr, BLOCK_HALF: tl.constexpr,
                          BLOCK_V: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
                          HAS_MASK: tl.constexpr, GATE_K: tl.constexpr, INTERPRETER: tl.constexpr):
    b, h, half, h_ok, cols, v_ok = _head_program(H, HV_BLOCKS, HALF, DV, BLOCK_HALF, BLOCK_V)
    c1, c2, s1, s2 = _rope_halves(COS, SIN, b, sc_b, ss_b, half, h_ok, HALF, HAS_ROPE, BLOCK_HALF)
    keep = _keep(MASK, b, HAS_MASK)  # a padded token: q, k, v count as zero (the eager step zeroes its input)
    q1, q2 = _norm_rope(Q + b * sq_b + h * sq_h, QW, c1, c2, s1, s2, half, h_ok, keep, inv_D, eps,
                        HAS_NORM, HAS_ROPE, HALF, INTERPRETER)
    k1, k2 = _norm_rope(K + b * sk_b + h * sk_h, KW, c1, c2, s1, s2, half, h_ok, keep, inv_D, eps,
                        HAS_NORM, HAS_ROPE, HALF, INTERPRETER)
    v = tl.load(V + b * sv_b + h * sv_h + cols, mask=v_ok, other=0.0).to(tl.float32) * keep
    if GATE_K:  # GLA: a decay per key channel, logsigmoid(logits) / normaliser
        gk = GK + b * sg_b + h * sg_h + half
        d1 = tl.exp(_logsigmoid(tl.load(gk, mask=h_ok, other=0.0).to(tl.float32), INTERPRETER) / g_norm * keep)
        d2 = tl.exp(_logsigmoid(tl.load(gk + HALF, mask=h_ok, other=0.0).to(tl.float32), INTERPRETER) / g_norm
                    * keep)
        d1 = d1[:, None]
        d2 = d2[:, None]
    else:
        d1 = tl.exp(tl.load(G + h).to(tl.float32) * keep)
        d2 = d1
    p1, p2, m = _state_block(S, b, h, H, half, h_ok, cols, v_ok, HALF, DV)
    s_1 = tl.load(p1, mask=m, other=0.0) * d1 + k1[:, None] * v[None, :]
    s_2 = tl.load(p2, mask=m, other=0.0) * d2 + k2[:, None] * v[None, :]
    tl.store(p1, s_1, mask=m)
    tl.store(p2, s_2, mask=m)
    o = tl.sum(s_1 * (q1 * scale)[:, None], axis=0) + tl.sum(s_2 * (q2 * scale)[:, None], axis=0)
    tl.store(O + (b * H + h) * DV + cols, o.to(O.dtype.element_ty), mask=v_ok)


class _Step:
    """A one-token recurrent step's checked inputs and launch layout, shared by the linear mixers' decode kernels:
    q, k: (B, 1, H, D), v: (B, 1, H, DV) (any strides but the last: slices of a fused projection), one dtype; state:
    (B, H, D, DV) fp32 contiguous; q_weight / k_weight both or neither; cos, sin: (B or 1, 1, D) both or neither; mask
    (B, 1) or None. D even. One program per (row, head, block of V)."""

    def __init__(self, q, k, v, state, q_weight, k_weight, cos, sin, mask):
        B, T, H, D = q.shape
        DV = v.shape[-1]
        if T != 1 or k.shape != q.shape or v.shape[:3] != (B, 1, H) or D % 2:
            raise ValueError(f"one token of q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, even head "
                             f"dim")
        if not q.dtype == k.dtype == v.dtype:
            raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        if state.shape != (B, H, D, DV) or state.dtype != torch.float32 or not state.is_contiguous():
            raise ValueError(f"state must be ({B}, {H}, {D}, {DV}) fp32 contiguous, got {tuple(state.shape)} "
                             f"{state.dtype}")
        if (q_weight is None) != (k_weight is None) or (cos is None) != (sin is None):
            raise ValueError("give both q_weight and k_weight or neither, both cos and sin or neither")
        self.rope = cos is not None
        if self.rope:
            if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[0] not in (1, B) or cos.shape[1:] != (1, D):
                raise ValueError(f"cos / sin must be (B or 1, 1, {D}), got {tuple(cos.shape)} / {tuple(sin.shape)}")
            cos, sin = cos.expand(B, 1, D), sin.expand(B, 1, D)
        self.B, self.H, self.D, self.DV = B, H, D, DV
        self.q, self.k, self.v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        self.norm = q_weight is not None
        self.q_weight, self.k_weight = (q_weight, k_weight) if self.norm else (q, k)  # unread placeholders
        self.cos, self.sin = (cos, sin) if self.rope else (q, q)
        self.mask = mask is not None
        # bool as bytes (a view), which Triton loads as integers
        self.mask_arg = q if mask is None else (mask.reshape(B).view(torch.uint8) if mask.dtype == torch.bool
                                                else mask.reshape(B))
        self.out = torch.empty((B, 1, H, DV), dtype=v.dtype, device=q.device)
        self.half = D // 2
        self.BLOCK_HALF = triton.next_power_of_2(self.half)
        self.BLOCK_V = min(triton.next_power_of_2(DV), max(16, 4096 // (2 * self.BLOCK_HALF)))
        self.blocks = triton.cdiv(DV, self.BLOCK_V)
        self.grid = (B * H * self.blocks,)

    def strides(self) -> tuple:
        """q, k, v row and head strides, then cos and sin row strides."""
        q, k, v = self.q, self.k, self.v
        return (q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2),
                self.cos.stride(0) if self.rope else 0, self.sin.stride(0) if self.rope else 0)

    def meta(self) -> dict:
        return dict(HALF=self.half, DV=self.DV, BLOCK_HALF=self.BLOCK_HALF, BLOCK_V=self.BLOCK_V, HAS_NORM=self.norm,
                    HAS_ROPE=self.rope, HAS_MASK=self.mask, INTERPRETER=not self.q.is_cuda,
                    num_warps=_warps(2 * self.BLOCK_HALF * self.BLOCK_V),
                    enable_fp_fusion=False)  # the norm's sum of squares and RoPE's products as torch does: no fma


def linear_decode_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Tensor | None, *, scale: float,
                       q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                       cos: Tensor | None = None, sin: Tensor | None = None, mask: Tensor | None = None,
                       gate_logits: Tensor | None = None, gate_normalizer: float = 1.0) -> Tensor:
    """q, k: (B, 1, H, D), v: (B, 1, H, DV) (any strides but the last: slices of a fused projection); state: (B, H, D,
    DV) fp32 contiguous, updated in place; log_decay: (H,) fp32; q_weight / k_weight: (D,) q/k RMSNorm weights (both
    or neither, in q's dtype); cos, sin: (B or 1, 1, D) (both or neither); mask: (B, 1) bool, False for a padded token
    (its q, k, v count as zero, no decay: the state stays as it is, the output is zero); gate_logits (B, 1, H, D)
    instead of log_decay: GLA's decay per key channel, logsigmoid(gate_logits) / gate_normalizer. D even. Returns o
    (B, 1, H, DV) in v's dtype."""
    st = _Step(q, k, v, state, q_weight, k_weight, cos, sin, mask)
    if (log_decay is None) == (gate_logits is None):
        raise ValueError("give log_decay (H,) or gate_logits (B, 1, H, D), one of them")
    if gate_logits is not None:
        if gate_logits.shape != (st.B, 1, st.H, st.D) or gate_logits.stride(-1) != 1:
            raise ValueError(f"gate_logits must be ({st.B}, 1, {st.H}, {st.D}) with unit last stride, got "
                             f"{tuple(gate_logits.shape)}")
        g, gk, g_strides = q, gate_logits, (gate_logits.stride(0), gate_logits.stride(2))
    else:
        if log_decay.shape != (st.H,):
            raise ValueError(f"log_decay must be ({st.H},), got {tuple(log_decay.shape)}")
        g, gk, g_strides = log_decay.float().contiguous(), q, (0, 0)
    _linear_decode_kernel[st.grid](
        st.q, st.k, st.v, st.q_weight, st.k_weight, st.cos, st.sin, g, gk, st.mask_arg, state, st.out, st.H,
        st.blocks, *st.strides(), *g_strides, float(scale), 1.0 / st.D, float(eps), float(gate_normalizer),
        GATE_K=gate_logits is not None, **st.meta())
    return st.out
