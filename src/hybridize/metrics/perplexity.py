"""Perplexity by context length, with every model scored on the same token windows.

Windows of `max(lengths) + 1` tokens are cut one after another from the documents of a data spec (each document
followed by the tokenizer's EOS); token t of a window (t = 1 .. max(lengths)) is predicted from the t tokens before
it. The bucket of an edge b (previous edge a, 0 for the first) holds the tokens with a < t <= b, so its perplexity
says how well a model predicts with between a + 1 and b tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .stats import mean_interval


def _token_stream(tokenizer, documents: Iterable[str], need: int) -> list[int]:
    """The documents' tokens, each followed by EOS, read until `need` tokens are there (or the text ends)."""
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for doc in documents:
        stream.extend(tokenizer.encode(doc, add_special_tokens=False) + eos)
        if len(stream) >= need:
            break
    return stream


def perplexity_windows(tokenizer, documents: Iterable[str], max_length: int, samples: int) -> torch.Tensor:
    """(samples, max_length + 1) token ids: consecutive windows of the documents' token stream."""
    need = samples * (max_length + 1)
    stream = _token_stream(tokenizer, documents, need)
    if len(stream) < need:
        raise ValueError(
            f"the perplexity data holds {len(stream)} tokens, but {samples} windows of {max_length + 1} tokens need "
            f"{need}: give more text (--data) or fewer --samples or shorter --lengths"
        )
    return torch.tensor(stream[:need], dtype=torch.long).view(samples, max_length + 1)


def heldout_windows(tokenizer, data, seq_len: int, windows: int, flag: str = "--eval-data") -> torch.Tensor:
    """(n, seq_len + 1) token ids of `data` for a training run's held-out evaluation: as many consecutive windows as
    the text holds, up to `windows` (at least one, or a ValueError naming `flag`)."""
    from ..data.sources import iter_documents

    stream = _token_stream(tokenizer, iter_documents(data), windows * (seq_len + 1))
    n = min(windows, len(stream) // (seq_len + 1))
    if n == 0:
        raise ValueError(f"{flag} {data} holds {len(stream)} tokens, fewer than one window of {seq_len + 1}; give "
                         f"more held-out text, or {flag} none")
    return torch.tensor(stream[:n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def heldout_lm(model, ids: torch.Tensor) -> dict[str, float]:
    """{"heldout_loss", "heldout_ppl"}: the model's mean next-token loss on held-out windows (`heldout_windows`)."""
    loss = token_nll(model, ids.to(next(model.parameters()).device)).mean().item()
    return {"heldout_loss": loss, "heldout_ppl": math.exp(min(loss, 50.0))}


@torch.inference_mode()
def token_nll(model, input_ids: torch.Tensor, chunk: int = 1024, entropy: bool = False):
    """(B, T - 1) fp32 negative log-likelihood of tokens 1 .. T - 1; with `entropy`, also the (B, T - 1) entropy of
    the model's predictive distribution at each of those positions (nats), as a pair (nll, entropy).

    Runs the decoder once and the output head `chunk` positions at a time, so that the (B, T, vocab) fp32 logits
    never exist at once (150K vocab x 16K tokens would be 10 GB per row). Works for models whose logits are
    `lm_head(decoder(x))` (Llama / Qwen / Mistral families and ours)."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None:
        raise ValueError(f"{type(model).__name__} exposes no decoder / output embeddings to score perplexity with")
    h = decoder(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
    B, T = input_ids.shape
    out = torch.empty(B, T - 1, dtype=torch.float32, device=input_ids.device)
    ent = torch.empty_like(out) if entropy else None
    for s in range(0, T - 1, chunk):
        e = min(s + chunk, T - 1)
        logp = F.log_softmax(head(h[:, s:e]).float(), dim=-1)  # (B, c, V)
        out[:, s:e] = -logp.gather(-1, input_ids[:, s + 1:e + 1, None]).squeeze(-1)
        if entropy:
            ent[:, s:e] = -logp.exp().mul_(logp).sum(-1)  # in place: one (B, c, V) temporary, not two
    return (out, ent) if entropy else out


def perplexity_by_length(model, windows: torch.Tensor, lengths: Sequence[int], batch_size: int = 1,
                         progress: bool = True, desc: str = "perplexity") -> list[dict]:
    """One entry per length bucket: {"length": b, "length_from": a, "perplexity", "ci_low", "ci_high", "nll",
    "entropy", "tokens", "window_nll"}; `window_nll` is each window's mean NLL over the bucket's positions (their mean
    is `nll`): the independent values the perplexity's 95% interval (`ci_low`, `ci_high`: bootstrap of the mean NLL
    over windows, `stats.mean_interval`) and a paired test of two models on the same windows rest on.

    `entropy` is the mean entropy of the model's predictive distribution over the bucket's positions (nats). Beside
    `nll` it says how sure the model was against how right: nll - entropy > 0 means more confident than its errors
    warrant (overconfident), < 0 less."""
    edges = sorted(set(lengths))
    if windows.shape[1] != edges[-1] + 1:
        raise ValueError(f"windows hold {windows.shape[1]} tokens; the longest length {edges[-1]} needs "
                         f"{edges[-1] + 1}")
    device = next(model.parameters()).device
    nll = torch.zeros(len(windows), windows.shape[1] - 1, dtype=torch.float64)  # per window and predicted position
    total_ent = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for s in tqdm(range(0, len(windows), batch_size), desc=desc, disable=not progress, unit="batch"):
        n, ent = token_nll(model, windows[s:s + batch_size].to(device), entropy=True)
        nll[s:s + batch_size] = n.double().cpu()
        total_ent += ent.double().sum(0).cpu()
    rows, prev = [], 0
    for b in edges:
        # token t (1-based position in the window) has t tokens of context; it is column t - 1 of `nll`
        n = (b - prev) * len(windows)
        mean = float(nll[:, prev:b].sum()) / n
        per_window = nll[:, prev:b].mean(1).tolist()
        lo, hi = mean_interval(per_window)
        rows.append({"length": b, "length_from": prev, "nll": mean, "perplexity": math.exp(mean),
                     "ci_low": math.exp(lo), "ci_high": math.exp(hi),
                     "entropy": float(total_ent[prev:b].sum()) / n, "tokens": n, "window_nll": per_window})
        prev = b
    return rows


def windows_fingerprint(windows: torch.Tensor) -> str:
    """A short hash of the token windows: two reports' perplexities pair only over the same windows."""
    import hashlib

    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
