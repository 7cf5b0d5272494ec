"""Split-K matrix-vector products for decode steps: y = x @ W.T (+ b) for a few rows of x, in nn.Linear's layout.

What it computes, for x (M, K) with M <= MAX_ROWS (a decode step: batch x one token), W (N, K) with contiguous rows
and b (N,) or None:

    y[m, n] = sum_k x[m, k] W[n, k] (+ b[n])      accumulated in fp32, rounded once to x's dtype

The reference is `reference_gemv` below (an fp32 matmul, one rounding), which is what `F.linear` computes up to the
order of the sum.

Why a kernel of our own: at batch 1 a decode step of the Qwen3-1.7B shape reads ~3.4 GB of weights, and cuBLAS's
matrix-vector kernels read them at ~1.7 TB/s on an H100, 58% of the measured copy bandwidth (issue 23; the 4-8 MB
q/k/v/o projections lose the most). A GEMV is bound by reading W once; what decides its speed is how many bytes are
in flight. Here the N rows are cut into blocks of BLOCK_N and, when that gives too few programs to cover the GPU
(o_proj: N = 2048 is 32 blocks of 64 rows for 132 SMs), the K axis is split as well, so that every SM streams
several [BLOCK_N, BLOCK_K] tiles of W at once.

Structure: program (n-block, split) accumulates x @ W_tile^T in fp32 over its range of K. With one split it adds the
bias and writes y; with several it writes fp32 partials (split, M, N) and a second small kernel sums the splits in a
fixed order (deterministic: no atomics), adds the bias and rounds. The x rows are padded to 16 for `tl.dot`; they cost
no bandwidth (x is a few KB). Products: bf16 / fp16 tiles enter `tl.dot` as they are (their products are exact in the
fp32 accumulator); fp32 tiles in IEEE precision.

Tuning (`block_n`, `block_k`, `split_k`, `num_warps`, `num_stages`) defaults to `gemv_config`; `benchmarks/gemv.py`
sweeps them on a GPU against `F.linear` and the copy bandwidth. Inference only: no backward.

Importing this module imports Triton; only `hybridize.mixers.kernels` imports it, on first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .fused import _round

Tensor = torch.Tensor
MAX_ROWS = 16  # rows of x one program holds (the tl.dot tile); more rows are a GEMM, cuBLAS's business
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _gemv_kernel(X, W, BIAS, Y, PART, M, N, K, s_xm, s_wn, k_per_split,
                 HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr, INTERPRETER: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    x_rows = X + offs_m[:, None] * s_xm  # (BLOCK_M, 1)
    w_rows = W + offs_n.to(tl.int64)[:, None] * s_wn  # (BLOCK_N, 1)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + offs_k
        if EVEN_K:  # every split is whole tiles of K: no mask along K (vectorised loads)
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = k < k_hi
            x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        elif INTERPRETER:  # numpy has no bf16 product: fp32 tiles hold the same values, the products stay exact
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        y = _round(acc, Y.dtype.element_ty, INTERPRETER)
        tl.store(Y + offs_m[:, None] * N + offs_n[None, :], y.to(Y.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])
    else:
        rows = (split * M + offs_m).to(tl.int64)
        tl.store(PART + rows[:, None] * N + offs_n[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _sum_splits_kernel(PART, BIAS, Y, M, N, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_N: tl.constexpr, INTERPRETER: tl.constexpr):
    """One program per (n-block, row): the splits' fp32 partials summed in split order, the bias added, one
    rounding."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    n_ok = offs_n < N
    rows = (offs_s * M + m).to(tl.int64)
    p = tl.load(PART + rows[:, None] * N + offs_n[None, :], mask=(offs_s < SPLIT_K)[:, None] & n_ok[None, :],
                other=0.0)
    acc = tl.sum(p, 0)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    y = _round(acc, Y.dtype.element_ty, INTERPRETER)
    tl.store(Y + m * N + offs_n, y.to(Y.dtype.element_ty), mask=n_ok)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    split_k: int  # K is cut into this many ranges of whole BLOCK_K tiles (1: no second kernel)
    num_warps: int = 4
    num_stages: int = 3


def gemv_config(M: int, N: int, K: int, element_size: int, device: torch.device) -> GemvConfig:
    """The default tiles: 64 rows of W by 512 bytes of each row, and enough K splits that the programs cover the
    GPU's multiprocessors ~4 times over, each split keeping at least two tiles of K. A starting point, not a
    measurement: benchmarks/gemv.py sweeps the alternatives on a GPU."""
    block_n = 64 if N >= 64 else max(16, triton.next_power_of_2(N))
    block_k = min(512 // element_size, max(16, triton.next_power_of_2(K)))
    n_blocks = triton.cdiv(N, block_n)
    k_tiles = triton.cdiv(K, block_k)
    want = triton.cdiv(4 * _multiprocessors(device), n_blocks)
    split_k = max(1, min(want, k_tiles // 2))
    return GemvConfig(block_n, block_k, split_k)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # Triton's interpreter: small shapes still take the split-K path


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, block_n: int | None = None,
         block_k: int | None = None, split_k: int | None = None, num_warps: int | None = None,
         num_stages: int | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` for x (..., K) of at most MAX_ROWS rows (the product of the leading dims); weight
    (N, K) with a contiguous last dim; bias (N,) or None; all of one dtype (bf16, fp16 or fp32). Returns a contiguous
    (..., N) tensor in that dtype. The keyword arguments override `gemv_config` (benchmarks)."""
    if weight.dim() != 2 or x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x (..., K) and weight (N, K) must share K, got x {tuple(x.shape)} and weight "
                         f"{tuple(weight.shape)}")
    if x.dtype not in _DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"x, weight and bias must be of one dtype among {[str(d) for d in _DTYPES]}, got x "
                         f"{x.dtype}, weight {weight.dtype}, bias {None if bias is None else bias.dtype}")
    N, K = weight.shape
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("weight needs a contiguous last dimension (nn.Linear's layout)")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows of x (batch x tokens), got {M}")
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.view(*lead, N)
    if K == 0:
        return (y.zero_() if bias is None else y.copy_(bias.expand(M, N))).view(*lead, N)
    c = gemv_config(M, N, K, x.element_size(), x.device)
    block_n, block_k = block_n or c.block_n, block_k or c.block_k
    k_tiles = triton.cdiv(K, block_k)
    k_per_split = triton.cdiv(k_tiles, min(split_k or c.split_k, k_tiles)) * block_k
    splits = triton.cdiv(K, k_per_split)  # no empty split
    bias_arg = bias.contiguous() if bias is not None else y
    part = torch.empty(splits, M, N, dtype=torch.float32, device=x.device) if splits > 1 else y
    interpreter = not x.is_cuda
    _gemv_kernel[(triton.cdiv(N, block_n), splits)](
        x2, weight, bias_arg, y, part, M, N, K, x2.stride(0), weight.stride(0), k_per_split,
        HAS_BIAS=bias is not None and splits == 1, SPLIT_K=splits, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        EVEN_K=K % block_k == 0, IEEE=x.dtype == torch.float32, INTERPRETER=interpreter,
        num_warps=num_warps or c.num_warps, num_stages=num_stages or c.num_stages,
    )
    if splits > 1:
        sum_block = min(256, max(16, triton.next_power_of_2(N)))
        _sum_splits_kernel[(triton.cdiv(N, sum_block), M)](
            part, bias_arg, y, M, N, HAS_BIAS=bias is not None, SPLIT_K=splits,
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_N=sum_block, INTERPRETER=interpreter, num_warps=4,
        )
    return y.view(*lead, N)


def reference_gemv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The same in PyTorch: fp32 products and sums, one rounding to x's dtype (what the kernel is tested against)."""
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
