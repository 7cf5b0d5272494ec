"""Fused inference kernels for the small elementwise ops of a decoder layer: RMSNorm, RoPE, SiLU(gate) * up.

In eager PyTorch each of these is a handful of kernels (RMSNorm alone: to(float), pow, mean, add, rsqrt, mul,
to(dtype), mul weight); at decode, where every tensor is a few KB, the step is bound by those launches. Each kernel
here is one launch that reads its inputs once and writes its output once. Inference only: no backward.

References (the PyTorch code they replace; `hybridize.mixers.kernels` chooses between the two):
* `rms_norm`: `hybridize.mixers.reference.rms_norm` (`RMSNorm.forward`).
* `apply_rope`: `hybridize.mixers.reference.apply_rope` (rotate-half RoPE on q and k, one launch for both).
* `silu_mul`: `F.silu(gate) * up` (`HybridMLP` with hidden_act="silu").
* `add_rms_norm`: the residual add and the next RMSNorm (`s = x + h; rms_norm(s, w, eps)`, `HybridBlock`).

Rounding follows the references step by step: every intermediate torch rounds to the tensor dtype (bf16 / fp16) is
rounded here too, so outputs agree bit for bit except where the fp32 arithmetic itself differs: the order of the
RMSNorm sum and the rsqrt / exp implementations (an fp32 ulp, which at times flips one bf16 rounding).

Importing this module imports Triton; only `kernels.py` imports it, on first use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

Tensor = torch.Tensor


@triton.jit
def _round(x, dtype: tl.constexpr, INTERPRETER: tl.constexpr):
    """fp32 x rounded to `dtype` (to nearest, ties to even, as torch rounds), returned as fp32.

    On the GPU that is `.to(dtype)`. Triton's CPU interpreter (INTERPRETER: the kernel runs on CPU tensors) truncates
    fp32 -> bf16 instead, so there the rounding is done on the bits: the interpreter then rounds as the GPU does, and
    the CPU tests can hold the kernels to the reference's exact roundings. (fp32 -> fp16 it rounds correctly.)"""
    if INTERPRETER and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(dtype).to(tl.float32)


def _warps(elements: int) -> int:
    """Warps for a program that handles `elements` values: ~8-16 values a thread, 1 to 8 warps."""
    return max(1, min(8, triton.next_power_of_2(elements) // 512))


# ---------------------------------------------------------------------------------------------------------------------
# One head's q or k in a decode step: its RMSNorm (times the weight) and RoPE, as `rms_norm` then `apply_rope` round


@triton.jit
def _rope_halves(COS, SIN, b, sc_b, ss_b, half, h_ok, HALF: tl.constexpr, HAS_ROPE: tl.constexpr,
                 BLOCK_HALF: tl.constexpr):
    """The token's rotary table of row b as fp32 halves (c1, c2, s1, s2); zeros without RoPE."""
    c1 = tl.zeros([BLOCK_HALF], tl.float32)
    c2 = c1
    s1 = c1
    s2 = c1
    if HAS_ROPE:
        c1 = tl.load(COS + b * sc_b + half, mask=h_ok, other=0.0).to(tl.float32)
        c2 = tl.load(COS + b * sc_b + HALF + half, mask=h_ok, other=0.0).to(tl.float32)
        s1 = tl.load(SIN + b * ss_b + half, mask=h_ok, other=0.0).to(tl.float32)
        s2 = tl.load(SIN + b * ss_b + HALF + half, mask=h_ok, other=0.0).to(tl.float32)
    return c1, c2, s1, s2


@triton.jit
def _keep(MASK, b, HAS_MASK: tl.constexpr):
    """1.0, or 0.0 where the row's token is padding (MASK[b] == 0): its inputs count as zero."""
    keep = 1.0
    if HAS_MASK:
        keep = tl.where(tl.load(MASK + b) != 0, 1.0, 0.0)
    return keep


@triton.jit
def _norm_rope(X, W, c1, c2, s1, s2, half, h_ok, keep, inv_D, eps,
               HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr, HALF: tl.constexpr, INTERPRETER: tl.constexpr,
               ACT: tl.constexpr = 0):
    """One head vector at X (contiguous D = 2 * HALF values) as two fp32 halves, normed and rotated as the reference
    rounds: each half's values are representable in X's dtype. keep 0: a padded token, whose vector is zero;
    ACT: an activation first (`_act`)."""
    dt = X.dtype.element_ty
    x1 = tl.load(X + half, mask=h_ok, other=0.0).to(tl.float32) * keep
    x2 = tl.load(X + HALF + half, mask=h_ok, other=0.0).to(tl.float32) * keep
    if ACT != 0:  # the mixer's activation on its q / k projection (ACT 2: SiLU), rounded as F.silu rounds
        x1 = _round(_act(x1, ACT, INTERPRETER), dt, INTERPRETER)
        x2 = _round(_act(x2, ACT, INTERPRETER), dt, INTERPRETER)
    if HAS_NORM:
        r = tl.math.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) * inv_D + eps)
        w1 = tl.load(W + half, mask=h_ok, other=0.0).to(tl.float32)
        w2 = tl.load(W + HALF + half, mask=h_ok, other=0.0).to(tl.float32)
        x1 = _round(w1 * _round(x1 * r, dt, INTERPRETER), dt, INTERPRETER)
        x2 = _round(w2 * _round(x2 * r, dt, INTERPRETER), dt, INTERPRETER)
    if HAS_ROPE:
        a1 = _round(x1 * c1, dt, INTERPRETER)
        b1 = _round(-x2 * s1, dt, INTERPRETER)
        a2 = _round(x2 * c2, dt, INTERPRETER)
        b2 = _round(x1 * s2, dt, INTERPRETER)
        x1 = _round(a1 + b1, dt, INTERPRETER)
        x2 = _round(a2 + b2, dt, INTERPRETER)
    return x1, x2


# ---------------------------------------------------------------------------------------------------------------------
# RMSNorm: y = weight * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)


@triton.jit
def _act(g, ACT: tl.constexpr, INTERPRETER: tl.constexpr):
    """fp32 sigmoid (ACT 1) or SiLU (ACT 2) as torch's CUDA kernels compute them (expf, IEEE division)."""
    if INTERPRETER:  # no libdevice in the interpreter: numpy's exp there
        e = tl.exp(-g)
    else:
        e = libdevice.exp(-g)
    if ACT == 1:
        return tl.div_rn(tl.full(g.shape, 1.0, tl.float32), 1.0 + e)
    return tl.div_rn(g, 1.0 + e)


@triton.jit
def _softplus(x, INTERPRETER: tl.constexpr):
    """fp32 softplus as torch computes it (threshold 20: x itself above it, else log1p(exp(x)))."""
    if INTERPRETER:  # no libdevice in the interpreter
        sp = tl.log(1.0 + tl.exp(tl.minimum(x, 20.0)))
    else:
        sp = libdevice.log1p(libdevice.exp(tl.minimum(x, 20.0)))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _logsigmoid(x, INTERPRETER: tl.constexpr):
    """fp32 logsigmoid as torch computes it: min(x, 0) - log1p(exp(-|x|))."""
    if INTERPRETER:  # no libdevice in the interpreter
        t = tl.log(1.0 + tl.exp(-tl.abs(x)))
    else:
        t = libdevice.log1p(libdevice.exp(-tl.abs(x)))
    return tl.minimum(x, 0.0) - t


@triton.jit
def _rms_norm_kernel(X, W, Y, G, n_rows, n_inner, stride_outer, stride_inner, D, inv_D, eps,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETER: tl.constexpr,
                     ACT: tl.constexpr = 0):
    # Rows are x viewed as (outer, inner, D): row r sits at (r // n_inner) * stride_outer + (r % n_inner) *
    # stride_inner, so a strided view (a slice of a fused projection split into heads) needs no copy.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    offs = (rows // n_inner).to(tl.int64) * stride_outer + (rows % n_inner).to(tl.int64) * stride_inner
    x = tl.load(X + offs[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    ms = tl.sum(x * x, axis=1) * inv_D  # torch's CUDA mean multiplies the sum by 1 / D
    r = tl.math.rsqrt(ms + eps)
    n = _round(x * r[:, None], X.dtype.element_ty, INTERPRETER)  # the reference's .to(x.dtype)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = _round(w[None, :] * n, Y.dtype.element_ty, INTERPRETER)  # one product in fp32, rounded once, as torch's mul
    if ACT != 0:  # the output gate of the linear mixers: y * act(g), g contiguous rows like y
        g = tl.load(G + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        a = _round(_act(g, ACT, INTERPRETER), G.dtype.element_ty, INTERPRETER)
        y = _round(y * a, Y.dtype.element_ty, INTERPRETER)
    tl.store(Y + rows.to(tl.int64)[:, None] * D + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def rms_norm(x: Tensor, weight: Tensor, eps: float, gate: Tensor | None = None, activation: str | None = None
             ) -> Tensor:
    """RMSNorm over the last dim of x (any leading shape, any row strides); weight: (D,). Returns a contiguous tensor
    of x's shape in torch's promotion of (weight.dtype, x.dtype).

    With `gate` (x's shape, the output's dtype) and `activation` ("sigmoid" or "silu"): RMSNorm(x) * act(gate), the
    linear mixers' output norm and gate in one kernel (reference: `rms_norm(x, w, eps) * torch.sigmoid(gate)`)."""
    D = x.shape[-1]
    act = 0
    if gate is not None:
        act = {"sigmoid": 1, "silu": 2}.get(activation, 0)
        if not act:
            raise ValueError(f"activation must be 'sigmoid' or 'silu' with a gate, got {activation!r}")
        if gate.shape != x.shape or gate.dtype != torch.promote_types(weight.dtype, x.dtype):
            raise ValueError(f"gate must have x's shape {tuple(x.shape)} and the output dtype, got "
                             f"{tuple(gate.shape)} {gate.dtype}")
        gate = gate.contiguous()
    if weight.shape != (D,):
        raise ValueError(f"weight must have shape ({D},), got {tuple(weight.shape)}")
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if x.numel() == 0:
        return out
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        x = x.view(1, D)
    try:  # (outer, inner, D) without a copy when the leading dims but the last collapse into one stride
        x3 = x.view(-1, x.shape[-2], D)
    except RuntimeError:
        x3 = x.contiguous().view(-1, x.shape[-2], D)
    n_rows = x3.shape[0] * x3.shape[1]
    BLOCK_D = triton.next_power_of_2(D)
    BLOCK_R = max(1, min(triton.next_power_of_2(n_rows), 4096 // BLOCK_D))
    _rms_norm_kernel[(triton.cdiv(n_rows, BLOCK_R),)](
        x3, weight.contiguous(), out, out if gate is None else gate, n_rows, x3.shape[1], x3.stride(0), x3.stride(1),
        D, 1.0 / D, float(eps),
        BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, INTERPRETER=not x.is_cuda, ACT=act, num_warps=_warps(BLOCK_R * BLOCK_D),
        enable_fp_fusion=False,  # x * x summed as torch does: each square rounded, no fma
    )
    return out


@triton.jit
def _add_rms_norm_kernel(X, H, W, S, Y, n_rows, D, inv_D, eps,
                         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRETER: tl.constexpr):
    # s = x + h (the residual stream, rounded to its dtype as torch's add rounds), y = RMSNorm(s) * w: contiguous rows
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    sdt = S.dtype.element_ty
    s = _round(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
               + tl.load(H + offs, mask=mask, other=0.0).to(tl.float32), sdt, INTERPRETER)
    tl.store(S + offs, s.to(sdt), mask=mask)
    r = tl.math.rsqrt(tl.sum(s * s, axis=1) * inv_D + eps)
    n = _round(s * r[:, None], sdt, INTERPRETER)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(Y + offs, _round(w[None, :] * n, Y.dtype.element_ty, INTERPRETER).to(Y.dtype.element_ty), mask=mask)


def add_rms_norm(x: Tensor, h: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(s, y): s = x + h, y = RMSNorm(s) * weight (reference: `s = x + h; rms_norm(s, weight, eps)`), one kernel that
    reads x and h once. x, h: one shape and dtype (any leading shape, last dim D); weight: (D,). s in x's dtype, y in
    torch's promotion of (weight.dtype, x.dtype), both contiguous."""
    D = x.shape[-1]
    if h.shape != x.shape or h.dtype != x.dtype:
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} and h {tuple(h.shape)} {h.dtype} must match")
    if weight.shape != (D,):
        raise ValueError(f"weight must have shape ({D},), got {tuple(weight.shape)}")
    x, h = x.contiguous(), h.contiguous()
    s = torch.empty_like(x)
    y = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    n_rows = x.numel() // D if D else 0
    if n_rows:
        BLOCK_D = triton.next_power_of_2(D)
        BLOCK_R = max(1, min(triton.next_power_of_2(n_rows), 4096 // BLOCK_D))
        _add_rms_norm_kernel[(triton.cdiv(n_rows, BLOCK_R),)](
            x, h, weight.contiguous(), s, y, n_rows, D, 1.0 / D, float(eps), BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D,
            INTERPRETER=not x.is_cuda, num_warps=_warps(BLOCK_R * BLOCK_D),
            enable_fp_fusion=False,  # s * s summed as torch does: each square rounded, no fma
        )
    return s, y


# ---------------------------------------------------------------------------------------------------------------------
# RoPE (rotate half): out = x * cos + cat(-x2, x1) * sin, for q and k in one launch.


@triton.jit
def _rope_heads(X, O, stride_h, n_heads, c1, c2, s1, s2, half, h_mask,
                HALF: tl.constexpr, BLOCK_H: tl.constexpr, INTERPRETER: tl.constexpr):
    """Rotate the n_heads head vectors of one token: X + h * stride_h -> O + h * 2 * HALF (contiguous)."""
    heads = tl.arange(0, BLOCK_H)
    mask = (heads < n_heads)[:, None] & h_mask[None, :]
    src = X + heads.to(tl.int64)[:, None] * stride_h + half[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    odt = O.dtype.element_ty
    # The reference rounds x * cos, rotate_half(x) * sin and their sum to the output dtype, each on its own.
    a1 = _round(x1 * c1[None, :], odt, INTERPRETER)
    b1 = _round(-x2 * s1[None, :], odt, INTERPRETER)
    a2 = _round(x2 * c2[None, :], odt, INTERPRETER)
    b2 = _round(x1 * s2[None, :], odt, INTERPRETER)
    o1 = _round(a1 + b1, odt, INTERPRETER)
    o2 = _round(a2 + b2, odt, INTERPRETER)
    dst = O + heads.to(tl.int64)[:, None] * (2 * HALF) + half[None, :]
    tl.store(dst, o1.to(odt), mask=mask)
    tl.store(dst + HALF, o2.to(odt), mask=mask)


@triton.jit
def _rope_kernel(Q, K, COS, SIN, QO, KO, T, H, HK,
                 sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sc_b, sc_t, ss_b, ss_t,
                 HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HK: tl.constexpr,
                 INTERPRETER: tl.constexpr):
    tok = tl.program_id(0)  # one program per token (b, t): all its q heads and k heads
    b = (tok // T).to(tl.int64)
    t = (tok % T).to(tl.int64)
    half = tl.arange(0, BLOCK_HALF)
    h_mask = half < HALF
    c = COS + b * sc_b + t * sc_t + half
    s = SIN + b * ss_b + t * ss_t + half
    c1 = tl.load(c, mask=h_mask, other=0.0).to(tl.float32)
    c2 = tl.load(c + HALF, mask=h_mask, other=0.0).to(tl.float32)
    s1 = tl.load(s, mask=h_mask, other=0.0).to(tl.float32)
    s2 = tl.load(s + HALF, mask=h_mask, other=0.0).to(tl.float32)
    tok64 = tok.to(tl.int64)
    _rope_heads(Q + b * sq_b + t * sq_t, QO + tok64 * H * (2 * HALF), sq_h, H, c1, c2, s1, s2, half, h_mask,
                HALF, BLOCK_H, INTERPRETER)
    _rope_heads(K + b * sk_b + t * sk_t, KO + tok64 * HK * (2 * HALF), sk_h, HK, c1, c2, s1, s2, half, h_mask,
                HALF, BLOCK_HK, INTERPRETER)


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """q: (B, T, H, D), k: (B, T, Hk, D) (any strides but the last); cos, sin: (B or 1, T or 1, D), broadcast over
    heads as the reference's `unsqueeze(2)` does. D even. Returns new contiguous (q, k), each in torch's promotion
    of its dtype with cos's."""
    B, T, H, D = q.shape
    HK = k.shape[2]
    if k.dim() != 4 or k.shape[:2] != (B, T) or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, T, heads, D) alike")
    if D % 2:
        raise ValueError(f"rotate-half RoPE needs an even head dim, got {D}")
    if cos.dim() != 3 or sin.shape != cos.shape or cos.dtype != sin.dtype:
        raise ValueError(f"cos {tuple(cos.shape)} / sin {tuple(sin.shape)} must be (B, T, D) alike, one dtype")
    cos, sin = cos.expand(B, T, D), sin.expand(B, T, D)  # stride 0 where they broadcast
    q, k, cos, sin = (a if a.stride(-1) == 1 else a.contiguous() for a in (q, k, cos, sin))
    qo = torch.empty(q.shape, dtype=torch.promote_types(q.dtype, cos.dtype), device=q.device)
    ko = torch.empty(k.shape, dtype=torch.promote_types(k.dtype, cos.dtype), device=k.device)
    if B * T == 0:
        return qo, ko
    half = D // 2
    BLOCK_HALF = triton.next_power_of_2(half)
    BLOCK_H, BLOCK_HK = triton.next_power_of_2(max(H, 1)), triton.next_power_of_2(max(HK, 1))
    _rope_kernel[(B * T,)](
        q, k, cos, sin, qo, ko, T, H, HK,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        HALF=half, BLOCK_HALF=BLOCK_HALF, BLOCK_H=BLOCK_H, BLOCK_HK=BLOCK_HK, INTERPRETER=not q.is_cuda,
        num_warps=_warps(2 * BLOCK_HALF * max(BLOCK_H, BLOCK_HK)),
        enable_fp_fusion=False,  # in fp32, x * cos + rot * sin as torch computes it: two rounded products, no fma
    )
    return qo, ko


# ---------------------------------------------------------------------------------------------------------------------
# The rotary tables of a step: cos / sin of position x inv_freq, times the scaling, in the model's dtype.


@triton.jit
def _rope_tables_kernel(P, INV, COS, SIN, scaling, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
                        INTERPRETER: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # one token (b, t)
    half = tl.arange(0, BLOCK_HALF)
    ok = half < HALF
    f = tl.load(P + row).to(tl.float32) * tl.load(INV + half, mask=ok, other=0.0)
    odt = COS.dtype.element_ty
    c = _round(tl.cos(f) * scaling, odt, INTERPRETER).to(odt)
    s = _round(tl.sin(f) * scaling, odt, INTERPRETER).to(odt)
    base = row * (2 * HALF)
    tl.store(COS + base + half, c, mask=ok)
    tl.store(COS + base + HALF + half, c, mask=ok)
    tl.store(SIN + base + half, s, mask=ok)
    tl.store(SIN + base + HALF + half, s, mask=ok)


def rope_tables(position_ids: Tensor, inv_freq: Tensor, scaling: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin (B, T, 2 * len(inv_freq)) in `dtype` of positions (B, T): one launch for what
    `HybridRotaryEmbedding.forward` computes in nine (cast, product, concatenation, cos, sin, scalings, casts)."""
    B, T = position_ids.shape
    half = inv_freq.numel()
    cos = torch.empty((B, T, 2 * half), dtype=dtype, device=position_ids.device)
    sin = torch.empty_like(cos)
    if B * T:
        BLOCK_HALF = triton.next_power_of_2(half)
        _rope_tables_kernel[(B * T,)](position_ids.contiguous(), inv_freq.float().contiguous(), cos, sin,
                                      float(scaling), HALF=half, BLOCK_HALF=BLOCK_HALF,
                                      INTERPRETER=not position_ids.is_cuda, num_warps=1)
    return cos, sin


# ---------------------------------------------------------------------------------------------------------------------
# A decode step's bookkeeping in the static cache: the new token's slot, padding mask and position.


@triton.jit
def _decode_begin_kernel(LENGTH, VALID, valid_stride, REAL, MASK, mask_stride, POS, NEW, CACHE_POS, B,
                         HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    slot = tl.load(LENGTH)  # tokens in the buffer before this one: the new token's slot
    for start in range(0, B, BLOCK):
        b = start + tl.arange(0, BLOCK)
        ok = b < B
        if HAS_MASK:
            new = (tl.load(MASK + b * mask_stride, mask=ok, other=0) != 0).to(tl.int64)
        else:
            new = tl.full((BLOCK,), 1, tl.int64)
        real = tl.load(REAL + b, mask=ok, other=0)
        tl.store(VALID + b * valid_stride + slot, new.to(tl.uint8), mask=ok)
        tl.store(NEW + b, new.to(tl.uint8), mask=ok)
        tl.store(POS + b, tl.maximum(real + new - 1, 0), mask=ok)
        tl.store(REAL + b, real + new, mask=ok)
    tl.store(CACHE_POS, slot)
    tl.store(LENGTH, slot + 1)


def decode_begin(length: Tensor, valid: Tensor, real: Tensor, mask: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """`HybridStaticCache.begin` for one new token in one launch (its PyTorch form is ~12 small operators): mark
    the token's slot `length` in `valid` (B, N) bool with its padding bit (mask (B,), any integer or bool dtype;
    None: every row real), position = real tokens so far (clamped at 0 for a padded row), then advance `real` (B,)
    and `length` (a 0-d int64), all on the device. Returns (cache_position (1,), new (B, 1) bool, positions (B, 1))."""
    B = valid.shape[0]
    pos = torch.empty((B, 1), dtype=torch.long, device=valid.device)
    new = torch.empty((B, 1), dtype=torch.bool, device=valid.device)
    cache_pos = torch.empty(1, dtype=torch.long, device=valid.device)
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    _decode_begin_kernel[(1,)](length, valid.view(torch.uint8), valid.stride(0), real,
                               mask if mask is not None else real, mask.stride(0) if mask is not None else 0,
                               pos, new.view(torch.uint8), cache_pos, B, HAS_MASK=mask is not None,
                               BLOCK=min(1024, triton.next_power_of_2(max(B, 1))), num_warps=1)
    return cache_pos, new, pos


# ---------------------------------------------------------------------------------------------------------------------
# SwiGLU's elementwise part: silu(gate) * up.


@triton.jit
def _silu_mul_kernel(G, U, O, n, BLOCK: tl.constexpr, INTERPRETER: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    s = _round(_act(g, 2, INTERPRETER), G.dtype.element_ty, INTERPRETER)  # F.silu, rounded to gate's dtype
    tl.store(O + offs, _round(s * u, O.dtype.element_ty, INTERPRETER).to(O.dtype.element_ty), mask=mask)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """F.silu(gate) * up for gate and up of one shape; returns a contiguous tensor in their promoted dtype."""
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    n = gate.numel()
    if n:
        BLOCK = 1024
        _silu_mul_kernel[(triton.cdiv(n, BLOCK),)](gate, up, out, n, BLOCK=BLOCK, INTERPRETER=not gate.is_cuda,
                                                     num_warps=4)
    return out
