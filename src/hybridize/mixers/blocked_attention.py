"""A prefill chunk's attention over a long cached prefix in memory that does not grow with the context.

Where it runs (`Attention.forward`): T > 1 queries after `past` > 0 cached tokens of a full-attention layer, when the
SDPA call would build tensors as long as the context: a (B, 1, T, past + T) mask (left padding; or torch's
lower-right causal bias where no kernel takes it as it is and it is materialised: the CPU, and CUDA inputs that
neither the flash nor the memory-efficient kernel takes) and, under a mask with grouped heads, K and V repeated to
the query heads. At 512K tokens with 16K-token chunks one padded row's mask alone is 8 GiB, and the repeated K/V of a
Qwen3-1.7B layer 4 GiB. Those run here once they would pass `WORKSPACE_BYTES`; below it the SDPA call stays (faster).

What it computes, for each row b, query head h (KV head h // G) and query t at position q_start + t:

    o[b, h, t] = softmax_j( scale * q[b, h, t] . k[b, h // G, j] ) v[b, h // G, j]

over the keys j at positions key_start + j that are not after the query, are real (`valid[b, position]`; left
padding is not) or are the query's own position: `Attention._mask` and SDPA, which it is tested against.

How: the queries in tiles of tq, the keys in blocks of tk, B x H x tq x tk fp32 scores at most `WORKSPACE_BYTES`;
each tile keeps a running max, sum and fp32 output that every key block updates (the online softmax of flash
attention), and skips the blocks after its last query. What it allocates is a few score tiles and tiles of q, K, V
and the padding mask: bounded by the chunk and the workspace, whatever the context. It is plain PyTorch (fp32
matmuls): slower on a GPU than SDPA's kernels, which is why it only takes over past the workspace.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
WORKSPACE_BYTES = 1 << 29  # 512 MiB: the context-sized tensors SDPA may build, and the score tile here


def context_bytes(B: int, H: int, Hkv: int, T: int, Lk: int, D: int, element_size: int) -> int:
    """Bytes of the tensors as long as the context that the masked SDPA call builds for T queries over Lk keys: the
    (B, T, Lk) boolean mask, and K and V repeated to the H query heads when they are grouped."""
    repeated = 2 * B * H * Lk * D * element_size if H != Hkv else 0
    return B * T * Lk + repeated


def native_lower_right(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether SDPA runs a lower-right causal bias (`torch.nn.attention.bias.causal_lower_right`) without building
    it: a flash or memory-efficient kernel takes these CUDA inputs (the test torch's own dispatch makes)."""
    if not q.is_cuda:
        return False
    from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention

    params = SDPAParams(q, k, v, None, 0.0, False, q.shape[1] != k.shape[1])
    return can_use_flash_attention(params) or can_use_efficient_attention(params)


def tiles(B: int, H: int, T: int, workspace: int | None = None) -> tuple[int, int]:
    """(tq, tk): the query tile and key block, with B x H x tq x tk fp32 scores at most `workspace` (default
    `WORKSPACE_BYTES`) where tiles of 16 x 16 allow it; tq a power of two near the square root, at most T."""
    budget = max(1, (workspace or WORKSPACE_BYTES) // (4 * B * H))
    side = 1 << max(4, int(math.isqrt(budget)).bit_length() - 1)
    tq = min(T, side)
    return tq, max(16, budget // tq)


@torch.no_grad()
def attend(q: Tensor, k: Tensor, v: Tensor, q_start: int, key_start: int, scale: float, valid: Tensor | None = None,
           workspace: int | None = None) -> Tensor:
    """q (B, H, T, D) at positions q_start .. q_start + T - 1; k, v (B, Hkv, Lk, D) at positions key_start ..
    key_start + Lk - 1, with H a multiple of Hkv; valid (B, >= key_start + Lk) bool by position, or None when
    nothing is padded. Returns (B, H, T, D) in q's dtype. Inference only (no autograd graph is kept)."""
    B, H, T, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = H // Hkv
    tq, tk = tiles(B, H, T, workspace)
    qg = q.reshape(B, Hkv, G, T, D)
    out = torch.empty(B, Hkv, G, T, D, dtype=q.dtype, device=q.device)
    for qa in range(0, T, tq):
        qb = min(qa + tq, T)
        qt = qg[:, :, :, qa:qb].float()  # (B, Hkv, G, n, D)
        q_pos = torch.arange(q_start + qa, q_start + qb, device=q.device)
        m = torch.full(qt.shape[:-1], float("-inf"), device=q.device)  # (B, Hkv, G, n) running max
        l = torch.zeros_like(m)  # running sum of exp(s - m)
        acc = torch.zeros_like(qt)
        for ka in range(0, Lk, tk):
            if key_start + ka > q_start + qb - 1:  # every key from here on is after the tile's last query
                break
            kb = min(ka + tk, Lk)
            k_pos = torch.arange(key_start + ka, key_start + kb, device=q.device)
            allowed = k_pos[None, :] <= q_pos[:, None]  # (n, kn)
            if valid is not None:
                allowed = allowed[None] & valid[:, None, key_start + ka:key_start + kb]  # (B, n, kn)
            allowed = allowed | (k_pos[None, :] == q_pos[:, None])  # a padded query sees itself (no empty row)
            allowed = allowed.view(-1 if valid is not None else 1, 1, 1, *allowed.shape[-2:])
            s = torch.einsum("bhgnd,bhkd->bhgnk", qt, k[:, :, ka:kb].float()) * scale
            s.masked_fill_(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # nothing allowed yet in this row: no NaN
            s.sub_(m_safe[..., None]).exp_()
            alpha = torch.exp(m - m_safe)
            l = l * alpha + s.sum(-1)
            acc = acc * alpha[..., None] + torch.einsum("bhgnk,bhkd->bhgnd", s, v[:, :, ka:kb].float())
            m = m_new
        out[:, :, :, qa:qb] = (acc / l[..., None]).to(q.dtype)
    return out.view(B, H, T, D)
