"""One-token attention over a static KV cache: split-K flash decoding with fp32 scores.

What it computes, for each row b, KV head h and the G query heads that share it (GQA):

    o[b, h, g] = softmax_j( scale * q[b, h, g] . K[b, h, j] ) V[b, h, j],  over the slots j < pos + 1 that are
                 valid[b, j] (left padding is not), and always slot pos (the new token sees itself)

`pos` is a device tensor (the new token's slot), so the step has the same shapes at every position and can be
captured in a CUDA graph; the kernel reads it and touches only the slots written so far, not the whole buffer.
The reference is `reference_decode_attention` below (fp32 scores, fp32 softmax), equal to the masked SDPA call the
attention mixer makes on the CPU.

Why a kernel of our own: on an H100 the masked SDPA kernel took ~170 us per layer at 8K for ~11 us of memory
traffic, and bf16 matrix-vector products round the scores to bf16 (which changed greedy tokens of a bf16 model).
Here each program streams a contiguous range of K and V once: scores q.K are fp32 (products of bf16 values are
exact in fp32 and in tf32), the online softmax is fp32, and P.V accumulates in fp32 (P enters tf32, 10 mantissa
bits, finer than bf16). A second small kernel merges the splits' partial (max, sum, output).

Splits: the key range is cut into `num_splits` pieces so that B x Hkv x splits programs fill the GPU (B x Hkv alone
is 8 at batch 1 for Qwen3-1.7B); each piece is a multiple of BLOCK_N keys of the *current* length, so work follows
the context, not the buffer size. Empty pieces write a neutral partial.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .fused import _act, _round

Tensor = torch.Tensor
BLOCK_N = 64


@triton.jit
def _split_kernel(Q, K, V, VALID, POS, O_PART, M_PART, L_PART,
                  s_qb, s_qh, s_qg, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_valid_b,
                  scale, G, Hkv,
                  HAS_VALID: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                  D: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // Hkv).to(tl.int64)  # b * s_kb passes 2**31 elements at 64 rows x 32K x 8 heads x 128
    h = (bh % Hkv).to(tl.int64)
    pos = tl.load(POS).to(tl.int32)
    length = pos + 1
    per_split = tl.cdiv(tl.cdiv(length, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, length)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < G
    d_ok = offs_d < D
    q = tl.load(Q + b * s_qb + h * s_qh + offs_g[:, None] * s_qg + offs_d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + offs_n
        n_ok = n < hi
        k = tl.load(k_base + n[:, None] * s_kn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        else:  # bf16/fp16 values are exact in tf32, so the products are exact; the scale comes after, in fp32
            s = tl.dot(q, tl.trans(k)) * scale
        ok = n_ok
        if HAS_VALID:
            valid = tl.load(VALID + b * s_valid_b + n, mask=n_ok, other=0)
            ok = ok & ((valid != 0) | (n == pos))
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing to attend to leaves no NaN
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * s_vn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p, v)
        m = m_new

    part = bh * NUM_SPLITS + split
    tl.store(M_PART + part * BLOCK_G + offs_g, m)
    tl.store(L_PART + part * BLOCK_G + offs_g, l)
    tl.store(O_PART + (part * BLOCK_G + offs_g[:, None]) * BLOCK_D + offs_d[None, :], acc,
             mask=g_ok[:, None] & d_ok[None, :])


@triton.jit
def _combine_kernel(O_PART, M_PART, L_PART, OUT, GATE, s_ob, s_oh, s_og, s_gb, Hkv, G,
                    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
                    BLOCK_D: tl.constexpr, HAS_GATE: tl.constexpr = False, INTERPRETER: tl.constexpr = False):
    """One program per (row, KV head, query head of the group): all splits' partials loaded at once (a serial loop
    over them measured 10 us per layer at 8K on an H100, a third of the attention step)."""
    bh = tl.program_id(0)
    g = tl.program_id(1)
    b = (bh // Hkv).to(tl.int64)
    h = (bh % Hkv).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    part = (bh * NUM_SPLITS + offs_s) * BLOCK_G + g  # (BLOCK_S,) index of each split's row for this head
    m = tl.load(M_PART + part, mask=s_ok, other=float("-inf"))
    l = tl.load(L_PART + part, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp(m - m_max)  # 0 for an empty split
    denom = tl.sum(w * l, 0)
    o = tl.load(O_PART + part[:, None] * BLOCK_D + offs_d[None, :], mask=s_ok[:, None] & (offs_d[None, :] < D),
                other=0.0)
    out = tl.sum(w[:, None] * o, 0) / denom
    if HAS_GATE:  # the attention's output gate, o * sigmoid(gate) rounded as torch rounds each step
        odt = OUT.dtype.element_ty
        gt = tl.load(GATE + b * s_gb + (h * G + g) * D + offs_d, mask=offs_d < D, other=0.0)
        a = _round(_act(gt.to(tl.float32), 1, INTERPRETER), odt, INTERPRETER)
        out = _round(_round(out, odt, INTERPRETER) * a, odt, INTERPRETER)
    tl.store(OUT + b * s_ob + h * s_oh + g * s_og + offs_d, out.to(OUT.dtype.element_ty), mask=offs_d < D)


def num_splits_for(batch: int, kv_heads: int, max_len: int, device: torch.device) -> int:
    """Enough splits that B x Hkv x splits programs cover the GPU about twice, never more than the buffer's blocks.
    A function of the cache's shape only, so one captured graph serves every position."""
    sms = _multiprocessors(device)
    want = -(-2 * sms // (batch * kv_heads))
    return max(1, min(want, -(-max_len // BLOCK_N), 128))


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # Triton's interpreter: a few splits exercise the merge


def decode_attention(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None, scale: float,
                     num_splits: int | None = None, block_n: int | None = None, num_warps: int = 4,
                     gate: Tensor | None = None) -> Tensor:
    """q: (B, Hkv, G, D), the G query heads of each KV head; k, v: (B, Hkv, N, D) cache buffers (last dim
    contiguous); pos: (1,) or 0-d long, the new token's slot (< N); valid: (B, N) bool or None (every slot < pos is
    real). gate: (B, 1, Hkv * G * D) in q's dtype (last dim contiguous) or None: the output times sigmoid(gate), the
    attention's output gate, in the merge. Returns (B, Hkv, G, D) in q's dtype. `num_splits`, `block_n`,
    `num_warps`: tuning knobs (benchmarks)."""
    B, Hkv, G, D = q.shape
    N = k.shape[2]
    if k.shape != (B, Hkv, N, D) or v.shape != k.shape:
        raise ValueError(f"k and v must be (B, Hkv, N, D) = {(B, Hkv, N, D)}, got {tuple(k.shape)}, {tuple(v.shape)}")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v need a contiguous last dimension")
    q = q.contiguous()
    splits = num_splits or num_splits_for(B, Hkv, N, q.device)
    # H100, Qwen3-1.7B shape (results/gpu/decode-attention-8f5daba.json): 64-key blocks are best at
    # B x Hkv = 8, 32-key blocks at 64 and more (1.13x instead of 1.40x the bound at B = 8, 128K)
    block_n = block_n or (BLOCK_N if B * Hkv < 64 else 32)
    BLOCK_G = max(16, triton.next_power_of_2(G))
    BLOCK_D = max(16, triton.next_power_of_2(D))
    parts = B * Hkv * splits
    o_part = torch.empty(parts, BLOCK_G, BLOCK_D, dtype=torch.float32, device=q.device)
    m_part = torch.empty(parts, BLOCK_G, dtype=torch.float32, device=q.device)
    l_part = torch.empty(parts, BLOCK_G, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    if valid is not None:
        if valid.shape != (B, N):
            raise ValueError(f"valid must be (B, N) = {(B, N)}, got {tuple(valid.shape)}")
        valid_arg, s_valid = valid.view(torch.uint8) if valid.dtype == torch.bool else valid, valid.stride(0)
    else:
        valid_arg, s_valid = pos, 0  # unused
    ieee = q.dtype == torch.float32
    _split_kernel[(B * Hkv, splits)](
        q, k, v, valid_arg, pos.reshape(-1), o_part, m_part, l_part,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), s_valid,
        scale, G, Hkv,
        HAS_VALID=valid is not None, NUM_SPLITS=splits, BLOCK_G=BLOCK_G, BLOCK_N=block_n, D=D, BLOCK_D=BLOCK_D,
        IEEE=ieee, num_warps=num_warps,
    )
    if gate is not None and (gate.shape != (B, 1, Hkv * G * D) or gate.dtype != q.dtype or gate.stride(-1) != 1):
        raise ValueError(f"gate must be ({B}, 1, {Hkv * G * D}) in {q.dtype}, last dim contiguous, got "
                         f"{tuple(gate.shape)} {gate.dtype}")
    _combine_kernel[(B * Hkv, G)](
        o_part, m_part, l_part, out, out if gate is None else gate, out.stride(0), out.stride(1), out.stride(2),
        0 if gate is None else gate.stride(0), Hkv, G,
        NUM_SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits), BLOCK_G=BLOCK_G, D=D, BLOCK_D=BLOCK_D,
        HAS_GATE=gate is not None, INTERPRETER=not q.is_cuda, num_warps=4,
        enable_fp_fusion=False,  # the gate's products as torch rounds them
    )
    return out


def reference_decode_attention(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None,
                               scale: float) -> Tensor:
    """The same in PyTorch, in fp32 (what the kernel is tested against)."""
    N = k.shape[2]
    j = torch.arange(N, device=q.device)
    p = int(pos.reshape(-1)[0])
    allowed = (j <= p)[None, :]  # (1, N)
    if valid is not None:
        allowed = allowed & (valid | (j == p)[None, :])
    s = torch.einsum("bhgd,bhnd->bhgn", q.float(), k.float()) * scale
    s = s.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return torch.einsum("bhgn,bhnd->bhgd", s.softmax(-1), v.float()).to(q.dtype)
