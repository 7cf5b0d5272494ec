"""The losses of the three stages.

* `layer_alignment_loss` (stage 1): teacher-forced, per layer, MSE between the teacher attention's output and the
  student mixer's output on the same (detached) input; summed over layers.
* `chunked_kl` (stage 2): KL(teacher || student) over the full vocabulary, token chunk by token chunk, each chunk
  checkpointed, so that fp32 logits exist for one chunk at a time (B x T x 150K fp32 would not fit).
* `chunked_ce` (stage 3): next-token cross-entropy computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor


def layer_alignment_loss(teacher: nn.Module, student_mixers: nn.ModuleList, input_ids: Tensor,
                         cu_seqlens: Tensor | None = None,
                         checkpointing: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Sum over layers of MSE(student mixer_i(a_i), teacher attention_i(a_i)), a_i the teacher's own normed input
    to layer i. The teacher runs on (its outputs flow on), only the student mixers get gradients.
    Returns (loss, per-layer losses as detached 0-d tensors: reading them is left to the caller, once per step).

    The teacher runs as one forward of its decoder, each attention's input and output kept by a hook: what FSDP
    gathers a sharded teacher's blocks in (its decoder is the root, see `pipeline.stages.Conversion`). With
    `checkpointing` each mixer keeps only its input for backward and runs again there: the L mixers' activations
    are what stage 1 holds at its peak."""
    kept = []  # per layer: (a_i (B, T, hidden), target_i (B, T, hidden), the SeqInfo every layer shares)

    def keep(attention, args, output):
        kept.append((args[0], output[0], args[1]))

    handles = [block.mixer.register_forward_hook(keep) for block in teacher.model.layers]
    try:
        with torch.no_grad():
            teacher.model(input_ids, cu_seqlens=cu_seqlens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    total, per_layer = 0.0, []
    for mixer in student_mixers:
        a, target, info = kept.pop(0)
        if checkpointing and torch.is_grad_enabled():
            out = checkpoint(lambda x, m=mixer, i=info: m(x, i)[0], a, use_reentrant=False)
        else:
            out, _ = mixer(a, info)
        loss = F.mse_loss(out.float(), target.float())
        total = total + loss
        per_layer.append(loss.detach())
    return total, per_layer


def _over_chunks(fn: Callable, chunk_tokens: int, *tensors: Tensor) -> Tensor:
    """Sum of fn over row chunks of the (N, ...) tensors, each chunk checkpointed (recomputed in backward)."""
    N = tensors[0].shape[0]
    total = tensors[0].new_zeros((), dtype=torch.float32)
    for start in range(0, N, chunk_tokens):
        parts = [t[start : start + chunk_tokens] for t in tensors]
        if torch.is_grad_enabled() and any(t.requires_grad for t in parts):
            total = total + checkpoint(fn, *parts, use_reentrant=False)
        else:
            total = total + fn(*parts)
    return total


def chunked_kl(student_hidden: Tensor, teacher_hidden: Tensor, student_head: nn.Linear, teacher_head: nn.Linear,
               chunk_tokens: int = 1024) -> Tensor:
    """Mean over tokens of KL(teacher || student), both distributions from final hidden states (..., hidden)."""
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()

    def kl(hs_c: Tensor, ht_c: Tensor) -> Tensor:
        return _kl_sum(student_head(hs_c).float().log_softmax(-1), teacher_head, ht_c)

    return _over_chunks(kl, chunk_tokens, hs, ht) / hs.shape[0]


def _kl_sum(log_ps: Tensor, teacher_head: nn.Linear, ht_c: Tensor) -> Tensor:
    """Summed KL(teacher || student) of a chunk: the student's log-probabilities against the teacher's from its
    hidden states (no gradient to the teacher)."""
    with torch.no_grad():
        log_pt = teacher_head(ht_c).float().log_softmax(-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="sum")


def chunked_ce(hidden: Tensor, head: nn.Linear, labels: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """Mean next-token CE; labels follow transformers' convention (label[t] is predicted from position t - 1,
    -100 = ignored). hidden: (B, T, h); labels: (B, T)."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    count = (y != -100).sum().clamp(min=1)

    def ce(h_c: Tensor, y_c: Tensor) -> Tensor:
        return F.cross_entropy(head(h_c).float(), y_c, ignore_index=-100, reduction="sum")

    return _over_chunks(ce, chunk_tokens, h, y) / count


def chunked_kl_ce(student_hidden: Tensor, teacher_hidden: Tensor, student_head: nn.Linear, teacher_head: nn.Linear,
                  labels: Tensor, chunk_tokens: int = 1024) -> tuple[Tensor, Tensor]:
    """`chunked_kl` and `chunked_ce` of the same batch from one pass of the student's head per chunk: (mean KL over
    tokens, mean next-token CE over labelled positions). hidden: (B, T, h); labels: (B, T) as in `chunked_ce`."""
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    y = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)  # position t predicts label t + 1; the last nothing
    count = (y != -100).sum().clamp(min=1)

    def both(hs_c: Tensor, ht_c: Tensor, y_c: Tensor) -> Tensor:
        log_ps = student_head(hs_c).float().log_softmax(-1)
        ce = F.nll_loss(log_ps, y_c, ignore_index=-100, reduction="sum")
        return torch.stack([_kl_sum(log_ps, teacher_head, ht_c), ce])

    kl, ce = _over_chunks(both, chunk_tokens, hs, ht, y)
    return kl / hs.shape[0], ce / count

