"""Pure-PyTorch references for the linear-mixer recurrences, in two forms each.

* `*_recurrent`: the recurrence written step by step; the definition, used for decode on the CPU.
* `*_chunk`: the chunked parallel form (intra-chunk attention-like product + inter-chunk state passing), used for
  training and prefill on the CPU. The tests check it against the recurrent form: outputs, final states, gradients.

Conventions match fla's kernels so that the two are interchangeable behind `kernels.py`:
  q, k: (B, T, H, K); v: (B, T, H, V); state: (N, H, K, V) in fp32 (fla's default key-first layout);
  log decays are <= 0; `scale` multiplies q; with `cu_seqlens` (N + 1 offsets) B must be 1 and each of the N
  documents starts from its own row of `initial_state` (zeros if None) and never sees the others.

Three recurrences cover all our mixers:
  gla (Lightning, RetNet, GLA, HGRN-2, Mamba-2):
      S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,            o_t = scale * q_t S_t
      g: (B, T, H) one log decay per head and step, or (B, T, H, K) one per key channel (GLA, HGRN-2).
  gated delta rule (GatedDeltaNet; DeltaNet is g = 0):
      S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = scale * q_t S_t
      g, beta: (B, T, H); q and k are expected L2-normalised by the caller.
  hgrn (HGRN: a vector state, one number per channel, fla's `chunk_hgrn` conventions):
      h_t = exp(g_t) * h_{t-1} + x_t,   o_t = h_t;   x, g: (B, T, D); state (N, D) fp32.
Everything is computed in fp32; outputs come back in v's (x's) dtype.

Also here, as the references of the fused inference kernels `kernels.py` picks on a GPU: `rms_norm` (RMSNorm's
PyTorch form) and `apply_rope` (rotate-half RoPE).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

Tensor = torch.Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim, computed in fp32 and cast back before the weight, as Llama / Qwen do."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """q, k: (B, T, H, D); cos, sin: (B, T, D). The rotate-half convention of Llama / Qwen checkpoints."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _check_packed(x: Tensor) -> None:
    """Packed documents (cu_seqlens) lie along time in one row."""
    if x.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs batch size 1 (documents packed along time), got batch {x.shape[0]}")


def _per_document(fn: Callable) -> Callable:
    """Run `fn` once per document of a packed (cu_seqlens) batch, each from its own initial state. Every positional
    argument is a (B, T, ...) tensor, cut along T."""

    def wrapper(*tensors, initial_state=None, cu_seqlens=None, **kw):
        if cu_seqlens is None:
            return fn(*tensors, initial_state=initial_state, **kw)
        _check_packed(tensors[0])
        outs, states = [], []
        bounds = cu_seqlens.tolist()
        for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = None if initial_state is None else initial_state[n : n + 1]
            o, h = fn(*(t[:, s:e] for t in tensors), initial_state=h0, **kw)
            outs.append(o)
            states.append(h)
        return torch.cat(outs, dim=1), torch.cat(states, dim=0)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _zero_state(q: Tensor, v: Tensor) -> Tensor:
    B, _, H, K = q.shape
    return q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)


@_per_document
def gla_recurrent(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float, initial_state: Tensor | None = None):
    """Step-by-step gated linear attention. Returns (o (B,T,H,V), final state (B,H,K,V) fp32)."""
    S = _zero_state(q, v) if initial_state is None else initial_state.float()
    qf, kf, vf, gf = q.float() * scale, k.float(), v.float(), g.float()
    if gf.dim() == 3:  # per-head decay -> broadcast over the key channels
        gf = gf.unsqueeze(-1)
    outs = []
    for t in range(q.shape[1]):
        S = S * gf[:, t].exp().unsqueeze(-1) + kf[:, t].unsqueeze(-1) * vf[:, t].unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", qf[:, t], S))
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(v.shape)
    return o.to(v.dtype), S


def linear_decode_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Tensor | None, *, scale: float,
                       q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                       cos: Tensor | None = None, sin: Tensor | None = None, mask: Tensor | None = None,
                       gate_logits: Tensor | None = None, gate_normalizer: float = 1.0) -> Tensor:
    """One token of a linear mixer with a decay as the eager step computes it: q/k RMSNorm (with weights), RoPE,
    S = exp(g) S + k^T v, o = scale q S, where g is the fixed per-head `log_decay` (H,) (Lightning, RetNet) or, with
    `gate_logits` (B, 1, H, K) instead, GLA's per-key g = logsigmoid(gate_logits) / gate_normalizer (where `mask` (B,
    1) is False, q, k, v count as zero and the state is not decayed); `state` (B, H, K, V) fp32 updated in place. The
    reference of `triton/linear_decode.py`. Returns o (B, 1, H, V) in v's dtype."""
    if gate_logits is not None:
        g = F.logsigmoid(gate_logits.float()) / gate_normalizer
    else:
        g = log_decay.float().view(1, 1, -1).expand(*q.shape[:3])
    if mask is not None:  # a padded token: zero q, k, v (the eager step zeroes its input), no decay
        keep = mask.view(*mask.shape, 1, 1).to(q.dtype)
        q, k, v = q * keep, k * keep, v * keep
        g = torch.where(mask.view(*mask.shape, *[1] * (g.dim() - 2)), g, torch.zeros_like(g))
    if q_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    if cos is not None:
        q, k = apply_rope(q, k, cos, sin)
    o, new = gla_recurrent(q, k, v, g, scale=scale, initial_state=state)
    state.copy_(new)
    return o


def gdn_decode_step(q: Tensor, k: Tensor, v: Tensor, a: Tensor | None, b: Tensor, A_log: Tensor | None,
                    dt_bias: Tensor | None, state: Tensor, *, scale: float, activation: str | None = "silu",
                    q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                    cos: Tensor | None = None, sin: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """One token of Gated DeltaNet as the eager step computes it from the raw projections q, k (B, 1, H, K), v (B, 1,
    H, V), a, b (B, 1, H): SiLU, q/k RMSNorm, RoPE, the gates g = -exp(A_log) softplus(a + dt_bias) and beta =
    sigmoid(b) (rounded to v's dtype), L2-normalised q and k, the delta rule; a padded token (`mask` (B, 1) False)
    counts as zero input with neutral gates. a, A_log, dt_bias None: no decay (g = 0), DeltaNet's step. `state` (B,
    H, K, V) fp32 updated in place. The reference of `triton/gdn_decode.py`. Returns o (B, 1, H, V) in v's dtype."""
    if mask is not None:  # the eager step zeroes a padded token's input
        keep = mask.view(-1, 1, 1).to(q.dtype)
        q, k, v, b = q * keep[..., None], k * keep[..., None], v * keep[..., None], b * keep
        a = None if a is None else a * keep
    if activation == "silu":
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    if q_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    if cos is not None:
        q, k = apply_rope(q, k, cos, sin)
    if a is None:
        g = torch.zeros(b.shape, dtype=torch.float32, device=b.device)
    else:
        g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    beta = torch.sigmoid(b.float())
    if mask is not None:
        g = torch.where(mask.view(-1, 1, 1), g, torch.zeros_like(g))
        beta = torch.where(mask.view(-1, 1, 1), beta, torch.zeros_like(beta))
    qn, kn = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)
    o, new = gated_delta_rule_recurrent(qn, kn, v, g, beta.to(v.dtype), scale=scale, initial_state=state)
    state.copy_(new)
    return o


def attention_decode_prologue(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor, pos: Tensor, *,
                              q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                              cos: Tensor | None = None, sin: Tensor | None = None, hype_a: float | None = None,
                              position_ids: Tensor | None = None) -> Tensor:
    """One decode token of an attention layer between its projection and the attention: q/k RMSNorm (with
    weights), RoPE, HyPE's query scale (`hype_a`, positions (B, 1)), k and v (B, 1, Hk, D) written into the cache
    buffers keys / values (B, Hk, slots, D) at slot `pos` (1,). The reference of `triton/attention_prologue.py`.
    Returns q (B, 1, H, D)."""
    if q_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    if cos is not None:
        q, k = apply_rope(q, k, cos, sin)
    if hype_a is not None:
        q = q * (torch.log(position_ids.float() + hype_a) / math.log(hype_a)).to(q.dtype)[..., None, None]
    keys.index_copy_(2, pos.view(1), k.transpose(1, 2))
    values.index_copy_(2, pos.view(1), v.transpose(1, 2))
    return q


@_per_document
def gated_delta_rule_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *, scale: float, initial_state: Tensor | None = None
):
    """Step-by-step gated delta rule. Returns (o (B,T,H,V), final state (B,H,K,V) fp32)."""
    S = _zero_state(q, v) if initial_state is None else initial_state.float()
    qf, kf, vf = q.float() * scale, k.float(), v.float()
    gf, bf = g.float(), beta.float()
    outs = []
    for t in range(q.shape[1]):
        S = S * gf[:, t].exp()[..., None, None]
        k_t = kf[:, t]  # (B, H, K)
        delta = bf[:, t].unsqueeze(-1) * (vf[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, S))  # (B, H, V)
        S = S + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", qf[:, t], S))
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(v.shape)
    return o.to(v.dtype), S


def _chunked(x: Tensor, C: int) -> Tensor:
    """(B, T, H, ...) -> (B, H, N, C, ...), zero-padding T up to a multiple of C.

    Zero padding is neutral for every recurrence here: k = v = 0, log decay 0 and beta 0 leave the state as is."""
    pad = (-x.shape[1]) % C
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
    return rearrange(x, "b (n c) h ... -> b h n c ...", c=C)


def _unchunk(o: Tensor, T: int) -> Tensor:
    """(B, H, N, C, V) -> (B, T, H, V)."""
    return rearrange(o, "b h n c v -> b (n c) h v")[:, :T]


def gla_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
):
    """Chunked gated linear attention; same results as `gla_recurrent`.

    Inside a chunk, with G the inclusive cumulative log decay from the chunk start:
        o_i = scale * [ (q_i * exp(G_i)) S_0 + sum_{j<=i} (q_i . k_j exp(G_i - G_j)) v_j ]
        S_C = exp(G_C) S_0 + sum_j (k_j exp(G_C - G_j))^T v_j
    The pairwise exp(G_i - G_j) is only ever taken for j <= i, where it is <= 1, so no overflow.
    Packed documents (`cu_seqlens`) run together: every document is cut into its own chunks (its last one
    zero-padded, as a document run alone is), all chunks of all documents make one batch for the within-chunk products,
    and the state passing runs over the documents side by side (`_PackedChunks`)."""
    if cu_seqlens is not None:
        return _gla_chunk_packed(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)
    T, C = q.shape[1], chunk_size
    qc = _chunked(q.float() * scale, C)  # (B, H, N, C, K)
    kc = _chunked(k.float(), C)
    vc = _chunked(v.float(), C)  # (B, H, N, C, V)
    G = _chunked(g.float(), C).cumsum(dim=3)  # (B, H, N, C[, K])
    o_intra, kv, q_in, g_last = _gla_within_chunks(qc, kc, vc, G)
    S = _zero_state(q, v) if initial_state is None else initial_state.float()
    o_inter = []
    for n in range(qc.shape[2]):
        o_inter.append(q_in[:, :, n] @ S)
        S = S * g_last[:, :, n].exp().unsqueeze(-1) + kv[:, :, n]
    o = o_intra + torch.stack(o_inter, dim=2)
    return _unchunk(o, T).to(v.dtype), S


def _gla_within_chunks(qc: Tensor, kc: Tensor, vc: Tensor, G: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What each chunk computes on its own (`gla_chunk`): qc, kc (B, H, N, C, K) (q scaled), vc (B, H, N, C, V), G the
    inclusive cumulative log decay (B, H, N, C) per head or (B, H, N, C, K) per key channel. Returns (o_intra, each
    chunk's output from its own tokens (B, H, N, C, V); kv, each chunk's contribution to the state (B, H, N, K, V);
    q_in, the queries decayed from the chunk start (B, H, N, C, K); g_last, the chunk's total log decay (B, H, N, K))."""
    C = qc.shape[3]
    causal = torch.ones(C, C, dtype=torch.bool, device=qc.device).tril()
    diff = G.unsqueeze(4) - G.unsqueeze(3)  # (B, H, N, C_i, C_j[, K])
    if G.dim() == 5:  # one decay per key channel
        decay = diff.masked_fill(~causal[..., None], float("-inf")).exp()
        A = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", qc, kc, decay)
        q_in = qc * G.exp()  # decay from the chunk start to i
        k_out = kc * (G[:, :, :, -1:] - G).exp()  # decay from j to the chunk end
        g_last = G[:, :, :, -1]  # (B, H, N, K)
    else:
        A = (qc @ kc.transpose(-1, -2)) * diff.masked_fill(~causal, float("-inf")).exp()
        q_in = qc * G.exp().unsqueeze(-1)
        k_out = kc * (G[:, :, :, -1:] - G).exp().unsqueeze(-1)
        g_last = G[:, :, :, -1].unsqueeze(-1).expand(*G.shape[:3], qc.shape[-1])
    o_intra = A @ vc  # (B, H, N, C, V)
    kv = k_out.transpose(-1, -2) @ vc  # (B, H, N, K, V): each chunk's own contribution to the state
    return o_intra, kv, q_in, g_last


class _PackedChunks:
    """The chunks of packed documents (offsets `cu_seqlens` over T tokens) laid out for a batched chunked recurrence.

    Document d of n_d tokens has ceil(n_d / C) chunks, its last one zero-padded. The documents are ranked by their
    number of chunks (most first) and the chunks ordered by (index within the document, rank): the documents that
    still have a chunk j are then a prefix of the ranking, and their j-th chunks the consecutive slots
    `offsets[j] : offsets[j] + counts[j]`.

    source: (chunks * C,) the token each chunk slot holds, T for padding (a zero row the caller appends).
    slot: (T,) the chunk slot of each token. order: (D,) the documents by rank; rank: (D,) each document's rank."""

    def __init__(self, cu_seqlens: Tensor, C: int):
        device = cu_seqlens.device
        cu = cu_seqlens.to(torch.long)
        T = int(cu[-1])
        lengths = cu.diff()
        n = (lengths + C - 1) // C  # chunks per document
        self.order = torch.argsort(n, descending=True, stable=True)
        self.rank = torch.empty_like(self.order).index_copy_(0, self.order, torch.arange(len(n), device=device))
        longest = int(n.max()) if len(n) else 0
        counts = (n[:, None] > torch.arange(longest, device=device)).sum(0)  # (longest,) documents with a chunk j
        self.counts = counts.tolist()
        self.offsets = [0, *counts.cumsum(0).tolist()]
        self.chunks, self.C = self.offsets[-1], C
        doc = torch.repeat_interleave(torch.arange(len(n), device=device), n)  # (chunks,) in document order
        first = torch.cumsum(n, 0) - n
        j = torch.arange(self.chunks, device=device) - first[doc]  # index of each chunk within its document
        where = torch.tensor(self.offsets[:-1], device=device, dtype=torch.long)[j] + self.rank[doc]
        tokens = cu[doc, None] + j[:, None] * C + torch.arange(C, device=device)  # (chunks, C)
        real = tokens < cu[doc + 1, None]
        slots = where[:, None] * C + torch.arange(C, device=device)
        self.source = torch.full((self.chunks * C,), T, dtype=torch.long, device=device)
        self.source[slots[real]] = tokens[real]
        self.slot = torch.empty(T, dtype=torch.long, device=device)
        self.slot[tokens[real]] = slots[real]

    def gather(self, x: Tensor) -> Tensor:
        """(1, T, ...) -> (1, chunks * C, ...) in chunk-slot order, zeros in the padding."""
        x = x[0]
        return torch.cat([x, x.new_zeros(1, *x.shape[1:])]).index_select(0, self.source).unsqueeze(0)

    def run(self, q: Tensor, v: Tensor, initial_state: Tensor | None, step: Callable, within: Tensor | None = None):
        """The state passing of a packed chunked form, the documents side by side: each starts from its row of
        `initial_state` (zeros if None); step(chunks, S) -> (o (m, H, C, V), S after) for the j-th chunks (a slice of
        chunk slots) of the first m documents and their states S (m, H, K, V). `within` (1, H, chunks, C, V), each
        chunk's output from its own tokens, is added. Returns (o (1, T, H, V) in v's dtype, final states
        (D, H, K, V))."""
        D = len(self.order)
        S = q.new_zeros(D, q.shape[2], q.shape[3], v.shape[-1], dtype=torch.float32) if initial_state is None \
            else initial_state.float()
        S = S.index_select(0, self.order)  # by rank: the documents still running are a prefix
        outs = []
        for start, m in zip(self.offsets, self.counts):
            o, ran = step(slice(start, start + m), S[:m])
            outs.append(o)
            S = torch.cat([ran, S[m:]]) if m < D else ran
        if not outs:  # no tokens
            return v.new_zeros(v.shape), S.index_select(0, self.rank)
        o = torch.cat(outs).transpose(0, 1).unsqueeze(0)  # (1, H, chunks, C, V)
        if within is not None:
            o = within + o
        o = _unchunk(o, self.chunks * self.C).index_select(1, self.slot)  # (1, T, H, V)
        return o.to(v.dtype), S.index_select(0, self.rank)


def _gla_chunk_packed(q, k, v, g, scale, initial_state, cu_seqlens, C):
    """`gla_chunk` over packed documents (batch 1), each from its own row of `initial_state` (zeros if None)."""
    _check_packed(q)
    packed = _PackedChunks(cu_seqlens, C)
    qc = _chunked(packed.gather(q.float() * scale), C)  # (1, H, chunks, C, K)
    kc = _chunked(packed.gather(k.float()), C)
    vc = _chunked(packed.gather(v.float()), C)
    G = _chunked(packed.gather(g.float()), C).cumsum(dim=3)
    o_intra, kv, q_in, g_last = _gla_within_chunks(qc, kc, vc, G)
    q_in, kv, decay = (x[0].transpose(0, 1) for x in (q_in, kv, g_last.exp()))  # (chunks, H, ...)

    def step(chunks: slice, S: Tensor) -> tuple[Tensor, Tensor]:
        return q_in[chunks] @ S, S * decay[chunks].unsqueeze(-1) + kv[chunks]

    return packed.run(q, v, initial_state, step, within=o_intra)


def gated_delta_rule_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
):
    """Chunked gated delta rule (WY form); same results as `gated_delta_rule_recurrent`.

    Within a chunk (G: inclusive cumulative log decay, S_0 the entering state) the per-step corrections
    u_i = beta_i (v_i - k_i exp(G_i) S_0 - sum_{j<i} exp(G_i - G_j) (k_i . k_j) u_j) solve a unit lower-triangular
    system (I + L) u = beta v - (beta exp(G) k) S_0, with L_ij = beta_i exp(G_i - G_j) k_i . k_j for j < i. Then
        o_i = scale * [ exp(G_i) q_i S_0 + sum_{j<=i} exp(G_i - G_j) (q_i . k_j) u_j ]
        S_C = exp(G_C) S_0 + sum_j exp(G_C - G_j) k_j^T u_j
    Packed documents (`cu_seqlens`) run together as in `gla_chunk`: each document cut into its own chunks, all chunks
    in one batch for the within-chunk products, the state passed over the documents side by side."""
    if cu_seqlens is not None:
        return _gated_delta_chunk_packed(q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size)
    T, C = q.shape[1], chunk_size
    qc = _chunked(q.float() * scale, C)  # (B, H, N, C, K)
    kc = _chunked(k.float(), C)
    vc = _chunked(v.float(), C)
    bc = _chunked(beta.float(), C).unsqueeze(-1)  # (B, H, N, C, 1)
    G = _chunked(g.float(), C).cumsum(dim=3)  # (B, H, N, C)
    U, W, Aqk, q_in, k_out, decay = _gdn_within_chunks(qc, kc, vc, bc, G)
    S = _zero_state(q, v) if initial_state is None else initial_state.float()
    outs = []
    for n in range(qc.shape[2]):
        u = U[:, :, n] - W[:, :, n] @ S  # (B, H, C, V)
        outs.append(q_in[:, :, n] @ S + Aqk[:, :, n] @ u)
        S = S * decay[:, :, n, None, None] + k_out[:, :, n].transpose(-1, -2) @ u
    o = torch.stack(outs, dim=2)
    return _unchunk(o, T).to(v.dtype), S


def _gdn_within_chunks(qc: Tensor, kc: Tensor, vc: Tensor, bc: Tensor, G: Tensor) -> tuple[Tensor, ...]:
    """What each chunk of `gated_delta_rule_chunk` computes on its own: qc, kc (B, H, N, C, K) (q scaled), vc
    (B, H, N, C, V), bc (B, H, N, C, 1) beta, G (B, H, N, C) the inclusive cumulative log decay. Returns U and W (the
    corrections u = U - W S_0), Aqk (the decayed q . k products, j <= i), q_in (the queries decayed from the chunk
    start), k_out (the keys decayed to the chunk end) and the chunk's total decay exp(G_C) (B, H, N)."""
    C = qc.shape[3]
    eye = torch.eye(C, dtype=torch.bool, device=qc.device)
    causal = torch.ones_like(eye).tril()
    diff = G.unsqueeze(-1) - G.unsqueeze(-2)  # (B, H, N, C_i, C_j)
    decay_incl = diff.masked_fill(~causal, float("-inf")).exp()  # j <= i
    decay_strict = decay_incl.masked_fill(eye, 0.0)  # j < i
    kk = kc @ kc.transpose(-1, -2)
    system = torch.eye(C, dtype=torch.float32, device=qc.device) + bc * decay_strict * kk  # I + L
    U = torch.linalg.solve_triangular(system, bc * vc, upper=False, unitriangular=True)  # (B, H, N, C, V)
    W = torch.linalg.solve_triangular(system, bc * kc * G.exp().unsqueeze(-1), upper=False, unitriangular=True)
    Aqk = (qc @ kc.transpose(-1, -2)) * decay_incl  # (B, H, N, C, C)
    q_in = qc * G.exp().unsqueeze(-1)
    k_out = kc * (G[:, :, :, -1:] - G).exp().unsqueeze(-1)
    return U, W, Aqk, q_in, k_out, G[:, :, :, -1].exp()


def _gated_delta_chunk_packed(q, k, v, g, beta, scale, initial_state, cu_seqlens, C):
    """`gated_delta_rule_chunk` over packed documents (batch 1), each from its own row of `initial_state` (zeros if
    None). A document's zero-padded last chunk (k = v = 0, beta = 0, log decay 0) leaves its state as it was."""
    _check_packed(q)
    packed = _PackedChunks(cu_seqlens, C)
    qc = _chunked(packed.gather(q.float() * scale), C)  # (1, H, chunks, C, K)
    kc = _chunked(packed.gather(k.float()), C)
    vc = _chunked(packed.gather(v.float()), C)
    bc = _chunked(packed.gather(beta.float()), C).unsqueeze(-1)
    G = _chunked(packed.gather(g.float()), C).cumsum(dim=3)
    U, W, Aqk, q_in, k_out, decay = (x[0].transpose(0, 1) for x in _gdn_within_chunks(qc, kc, vc, bc, G))

    def step(chunks: slice, S: Tensor) -> tuple[Tensor, Tensor]:
        u = U[chunks] - W[chunks] @ S  # (m, H, C, V)
        ran = S * decay[chunks, :, None, None] + k_out[chunks].transpose(-1, -2) @ u
        return q_in[chunks] @ S + Aqk[chunks] @ u, ran

    return packed.run(q, v, initial_state, step)


@_per_document
def hgrn_recurrent(x: Tensor, g: Tensor, *, initial_state: Tensor | None = None):
    """Step-by-step HGRN recurrence h_t = exp(g_t) * h_{t-1} + x_t. Returns (o = h (B,T,D), final state (B,D) fp32)."""
    h = x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32) if initial_state is None else initial_state.float()
    xf, gf = x.float(), g.float()
    outs = []
    for t in range(x.shape[1]):
        h = gf[:, t].exp() * h + xf[:, t]
        outs.append(h)
    o = torch.stack(outs, dim=1) if outs else xf.new_zeros(x.shape)
    return o.to(x.dtype), h


def _hgrn_within_chunks(xc: Tensor, G: Tensor) -> Tensor:
    """Each chunk's HGRN output from a zero state: xc, G (inclusive cumulative log decay) (..., C) -> (..., C)."""
    C = xc.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=xc.device).tril()
    decay = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()  # (..., C_i, C_j)
    return (decay @ xc.unsqueeze(-1)).squeeze(-1)


def hgrn_chunk(x: Tensor, g: Tensor, *, initial_state: Tensor | None = None, cu_seqlens: Tensor | None = None,
               chunk_size: int = 64):
    """Chunked HGRN recurrence; same results as `hgrn_recurrent`. Inside a chunk, with G the inclusive cumulative
    log decay from the chunk start: h_i = exp(G_i) h_0 + sum_{j<=i} exp(G_i - G_j) x_j (exp only of values <= 0).
    Packed documents (cu_seqlens) run side by side, each from its own row of `initial_state`."""
    if cu_seqlens is not None:
        return _hgrn_chunk_packed(x, g, initial_state, cu_seqlens, chunk_size)
    B, T, D = x.shape
    C = chunk_size
    xc = _chunked(x.float().unsqueeze(-1), C).squeeze(-1)  # (B, D, N, C)
    G = _chunked(g.float().unsqueeze(-1), C).squeeze(-1).cumsum(dim=3)  # (B, D, N, C)
    intra = _hgrn_within_chunks(xc, G)  # (B, D, N, C): each chunk from a zero state
    h = x.new_zeros(B, D, dtype=torch.float32) if initial_state is None else initial_state.float()
    outs = []
    for n in range(xc.shape[2]):
        o = intra[:, :, n] + G[:, :, n].exp() * h.unsqueeze(-1)  # (B, D, C)
        outs.append(o)
        h = o[:, :, -1]
    # the zero-padded tail (x = 0, g = 0) leaves the state as it was at the last real step
    o = torch.stack(outs, dim=2).flatten(2)[:, :, :T].transpose(1, 2) if outs else x.float()  # (B, T, D)
    return o.to(x.dtype), h


def _hgrn_chunk_packed(x, g, initial_state, cu_seqlens, C):
    """`hgrn_chunk` over packed documents (batch 1): the channels as heads with a one-wide state, so that the
    documents' chunks share `_PackedChunks`' batched state passing."""
    _check_packed(x)
    packed = _PackedChunks(cu_seqlens, C)
    x4 = x.unsqueeze(-1)  # (1, T, D, 1)
    xc = _chunked(packed.gather(x4.float()), C)[..., 0]  # (1, D, chunks, C)
    G = _chunked(packed.gather(g.float().unsqueeze(-1)), C)[..., 0].cumsum(dim=3)
    intra = _hgrn_within_chunks(xc, G)
    enter, last = (t[0].transpose(0, 1) for t in (G.exp(), intra[..., -1]))  # (chunks, D, C), (chunks, D)

    def step(chunks: slice, S: Tensor) -> tuple[Tensor, Tensor]:  # S (m, D, 1, 1): each document's h
        h = S[..., 0, 0]
        ran = last[chunks] + enter[chunks][..., -1] * h
        return (enter[chunks] * h.unsqueeze(-1)).unsqueeze(-1), ran[..., None, None]

    h0 = None if initial_state is None else initial_state[..., None, None]
    o, h = packed.run(x4, x4, h0, step, within=intra.unsqueeze(-1))
    return o[..., 0], h[..., 0, 0]


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[Tensor, Tensor]:
    """Depthwise causal convolution over time, fla's `causal_conv1d` conventions.

    x: (B, T, D); weight: (D, W); state: (N, D, W), the last W inputs (zeros before the start).
    Returns (y (B, T, D), final state (N, D, W))."""
    if cu_seqlens is not None:
        return _causal_conv1d_packed(x, weight, bias, initial_state, cu_seqlens, activation)
    B, T, D = x.shape
    W = weight.shape[-1]
    xt = x.transpose(1, 2)  # (B, D, T)
    if initial_state is None:
        initial_state = xt.new_zeros(B, D, W)
    full = torch.cat([initial_state.to(xt.dtype), xt], dim=-1)  # (B, D, W + T)
    y = F.conv1d(full[..., 1:], weight.unsqueeze(1), bias, groups=D)  # output t sees inputs t-W+1 .. t
    y = _conv_activation(y, activation)
    return y.transpose(1, 2), full[..., -W:]


def _conv_activation(y: Tensor, activation: str | None) -> Tensor:
    if activation in ("silu", "swish"):
        return F.silu(y)
    if activation is not None:
        raise ValueError(f"activation must be 'silu', 'swish' or None, got {activation!r}")
    return y


def _causal_conv1d_packed(x, weight, bias, initial_state, cu_seqlens, activation):
    """`causal_conv1d` over packed documents (batch 1), each from its own row of `initial_state`, as one convolution:
    every document is laid out behind its own W state columns ([state_n, x_n], what a document run alone convolves),
    so that no window reaches into another document, and the outputs at the documents' tokens are picked out."""
    _check_packed(x)
    _, T, D = x.shape
    W = weight.shape[-1]
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    N = cu.numel() - 1
    lengths = cu.diff()
    doc = torch.repeat_interleave(torch.arange(N, device=x.device), lengths, output_size=T)  # (T,)
    at = torch.arange(T, device=x.device) + (doc + 1) * W  # each token's column in the laid-out row
    state_at = (cu[:-1] + torch.arange(N, device=x.device) * W)[:, None] + torch.arange(W, device=x.device)  # (N, W)
    states = x.new_zeros(N, D, W) if initial_state is None else initial_state.to(x.dtype)
    row = x.new_zeros(D, T + N * W)
    row = row.index_copy(1, state_at.flatten(), states.permute(1, 0, 2).reshape(D, N * W))
    row = row.index_copy(1, at, x[0].transpose(0, 1))
    y = F.conv1d(row[None], weight.unsqueeze(1), bias, groups=D)[0]  # column i: the window ending at i + W - 1
    y = y.index_select(1, at - (W - 1))
    y = _conv_activation(y, activation)
    final = row.index_select(1, (state_at + lengths[:, None]).flatten()).view(D, N, W).permute(1, 0, 2)
    return y.transpose(0, 1)[None], final
