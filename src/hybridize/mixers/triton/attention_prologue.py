"""What an attention layer does to one decode token between its projection and the attention kernel, in one kernel:

    q, k = RMSNorm(q) * wq, RMSNorm(k) * wk          (optional: the q/k norm of Qwen3-style attention)
    q, k = RoPE(q), RoPE(k)                          (optional)
    q = q * log(t + a) / log(a)                      (optional: HyPE's query scale at the token's position t)
    K[:, :, pos], V[:, :, pos] = k, v                (the static cache's full-attention buffers, written in place)

returning the new q. The eager step runs two norms, RoPE, HyPE's scale (five small operators) and two `index_copy_`s
for it (up to ten launches per attention layer). One program per (batch row, head) over the q heads and the KV heads;
a KV head's program writes both its k and its v. Roundings as the reference
(`hybridize.mixers.reference.attention_decode_prologue`, the ops the eager step runs): see `fused._norm_rope`.
Inference only.

Importing this module imports Triton; only `kernels.py` imports it, on first use.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .fused import _norm_rope, _rope_halves, _round, _warps

Tensor = torch.Tensor


@triton.jit
def _prologue_kernel(Q, K, V, QW, KW, COS, SIN, KC, VC, POS, QO, TPOS,
                     H, HK, sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sc_b, ss_b, skc_b, skc_h, skc_n, svc_b, svc_h, svc_n,
                     inv_D, eps, stp_b, hype_a, log_a,
                     HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
                     HAS_HYPE: tl.constexpr, INTERPRETER: tl.constexpr):
    pid = tl.program_id(0)  # (batch row, head): the H q heads, then the HK KV heads
    b = (pid // (H + HK)).to(tl.int64)
    j = pid % (H + HK)
    half = tl.arange(0, BLOCK_HALF)
    h_ok = half < HALF
    c1, c2, s1, s2 = _rope_halves(COS, SIN, b, sc_b, ss_b, half, h_ok, HALF, HAS_ROPE, BLOCK_HALF)
    if j < H:
        x1, x2 = _norm_rope(Q + b * sq_b + j * sq_h, QW, c1, c2, s1, s2, half, h_ok, 1.0, inv_D, eps,
                            HAS_NORM, HAS_ROPE, HALF, INTERPRETER)
        if HAS_HYPE:  # torch.log(t.float() + a) / log(a), rounded to q's dtype, then the rounded product
            t = tl.load(TPOS + b * stp_b).to(tl.float32)
            sc = _round(tl.div_rn(tl.log(t + hype_a), log_a), QO.dtype.element_ty, INTERPRETER)
            x1 = _round(x1 * sc, QO.dtype.element_ty, INTERPRETER)
            x2 = _round(x2 * sc, QO.dtype.element_ty, INTERPRETER)
        dst = QO + (b * H + j) * (2 * HALF)
        tl.store(dst + half, x1.to(QO.dtype.element_ty), mask=h_ok)
        tl.store(dst + HALF + half, x2.to(QO.dtype.element_ty), mask=h_ok)
    else:
        hk = (j - H).to(tl.int64)
        slot = tl.load(POS).to(tl.int64)
        x1, x2 = _norm_rope(K + b * sk_b + hk * sk_h, KW, c1, c2, s1, s2, half, h_ok, 1.0, inv_D, eps,
                            HAS_NORM, HAS_ROPE, HALF, INTERPRETER)
        dst = KC + b * skc_b + hk * skc_h + slot * skc_n
        tl.store(dst + half, x1.to(KC.dtype.element_ty), mask=h_ok)
        tl.store(dst + HALF + half, x2.to(KC.dtype.element_ty), mask=h_ok)
        src = V + b * sv_b + hk * sv_h
        vdst = VC + b * svc_b + hk * svc_h + slot * svc_n
        tl.store(vdst + half, tl.load(src + half, mask=h_ok, other=0.0).to(VC.dtype.element_ty), mask=h_ok)
        tl.store(vdst + HALF + half, tl.load(src + HALF + half, mask=h_ok, other=0.0).to(VC.dtype.element_ty),
                 mask=h_ok)


def attention_decode_prologue(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor, pos: Tensor, *,
                              q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                              cos: Tensor | None = None, sin: Tensor | None = None, hype_a: float | None = None,
                              position_ids: Tensor | None = None) -> Tensor:
    """q: (B, 1, H, D), k, v: (B, 1, Hk, D) (any strides but the last: slices of a fused projection), one dtype;
    keys, values: (B, Hk, slots, D) cache buffers in that dtype (last dim contiguous), written at slot `pos` (a (1,)
    long device tensor); q_weight / k_weight: (D,) in q's dtype (both or neither); cos, sin: (B or 1, 1, D) in q's dtype
    (both or neither); hype_a with position_ids (B, 1): HyPE's query scale. D even. Returns the normed, rotated
    (and scaled) q (B, 1, H, D), contiguous."""
    B, T, H, D = q.shape
    HK = k.shape[2]
    if T != 1 or k.shape != (B, 1, HK, D) or v.shape != k.shape or D % 2:
        raise ValueError(f"one token of q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, even head dim")
    if not q.dtype == k.dtype == v.dtype == keys.dtype == values.dtype:
        raise ValueError("q, k, v and the cache buffers must share a dtype")
    if keys.shape[:2] != (B, HK) or keys.shape[3] != D or values.shape != keys.shape or pos.numel() != 1:
        raise ValueError(f"keys / values must be ({B}, {HK}, slots, {D}), pos one slot; got {tuple(keys.shape)}, "
                         f"{tuple(values.shape)}, {tuple(pos.shape)}")
    if keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("the cache buffers' last dim must be contiguous")
    if (q_weight is None) != (k_weight is None) or (cos is None) != (sin is None):
        raise ValueError("give both q_weight and k_weight or neither, both cos and sin or neither")
    has_rope = cos is not None
    if has_rope:
        if cos.shape != sin.shape or cos.dim() != 3 or cos.shape[0] not in (1, B) or cos.shape[1:] != (1, D):
            raise ValueError(f"cos / sin must be (B or 1, 1, {D}), got {tuple(cos.shape)} / {tuple(sin.shape)}")
        cos, sin = cos.expand(B, 1, D), sin.expand(B, 1, D)
    if (hype_a is None) != (position_ids is None):
        raise ValueError("give both hype_a and position_ids or neither")
    if hype_a is not None:
        if position_ids.dim() != 2 or position_ids.shape[1] != 1 or position_ids.shape[0] not in (1, B):
            raise ValueError(f"position_ids must be (B or 1, 1), got {tuple(position_ids.shape)}")
        position_ids = position_ids.expand(B, 1)
    q, k, v = (a if a.stride(-1) == 1 else a.contiguous() for a in (q, k, v))
    out = torch.empty((B, 1, H, D), dtype=q.dtype, device=q.device)
    norm = q_weight is not None
    half = D // 2
    BLOCK_HALF = triton.next_power_of_2(half)
    _prologue_kernel[(B * (H + HK),)](
        q, k, v, q_weight if norm else q, k_weight if norm else k, cos if has_rope else q, sin if has_rope else q,
        keys, values, pos, out, q if hype_a is None else position_ids,
        H, HK, q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2),
        cos.stride(0) if has_rope else 0, sin.stride(0) if has_rope else 0,
        keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
        1.0 / D, float(eps), 0 if hype_a is None else position_ids.stride(0), float(hype_a or 2.0),
        math.log(hype_a or 2.0),
        HALF=half, BLOCK_HALF=BLOCK_HALF, HAS_NORM=norm, HAS_ROPE=has_rope, HAS_HYPE=hype_a is not None,
        INTERPRETER=not q.is_cuda,
        num_warps=_warps(2 * BLOCK_HALF),
        enable_fp_fusion=False,  # the norm's sum of squares and RoPE's products as torch computes them: no fma
    )
    return out
