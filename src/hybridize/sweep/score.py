"""Scoring one trained cell with the evaluation's own primitives (`hybridize.metrics`): held-out perplexity by context
length and synthetic recall (greedy generation, exact match) at multiples of the training length, each recall rate with
its Wilson 95% interval, and the decode state the model keeps.

Every cell of a sweep is scored on the same held-out windows and the same prompts (`EvalSet`, built once from the
shared tokenizer): the numbers differ only by the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.sources import iter_documents
from ..data.synthetic import FillerTokens
from ..metrics.perplexity import heldout_windows, perplexity_by_length
from ..metrics.recall import Cell as RecallCell
from ..metrics.recall import build_cells, evaluate_cells
from ..metrics.stats import wilson_interval

BATCH_TOKENS = 32768  # tokens per evaluation batch (prompt + answer, or one perplexity window)


def length_key(multiple: int) -> str:
    return f"{multiple}x"


@dataclass
class EvalSet:
    """What every cell is scored on: held-out windows of max(lengths) x train_len + 1 tokens and the recall prompts
    (`samples` per task and length, random depths, seed `eval_seed`), on held-out filler text."""

    train_len: int
    multiples: list[int]
    windows: torch.Tensor  # (n, max length + 1)
    prompts: list[RecallCell]

    @classmethod
    def build(cls, tokenizer, eval_data, train_len: int, multiples: list[int], tasks: list[str], samples: int,
              windows: int, seed: int) -> EvalSet:
        longest = max(multiples) * train_len
        ids = heldout_windows(tokenizer, eval_data, longest, windows, flag="--eval-data")
        filler = FillerTokens.build(tokenizer, iter_documents(eval_data))
        prompts = build_cells(tasks, [m * train_len for m in multiples], [None], samples, seed, tokenizer, filler)
        return cls(train_len, list(multiples), ids, prompts)


def score_model(model, tokenizer, evalset: EvalSet) -> dict:
    """The scores of one model (`sweep.json`'s per-cell fields): held-out loss and perplexity of the tokens with up to
    1x the training length of context (`heldout_loss`, `heldout_ppl`) and per bucket of context (1x: up to L tokens,
    2x: L+1 .. 2L, ...), each perplexity with its 95% bootstrap interval over the windows (`heldout_ppl_ci`,
    `heldout_ppl_by_length_ci`) and the windows' NLLs (`heldout_window_nll`: every cell scores the same windows, so
    two cells pair, `metrics.stats.paired_permutation_p`); recall per task and length (fraction of exact matches,
    `recall_correct` of `n`), with Wilson 95% intervals, and pooled over the tasks (`recall_mean`); the decode state
    in bytes (bf16) after each length."""
    t0 = time.perf_counter()
    L, multiples = evalset.train_len, evalset.multiples
    keys = [length_key(m) for m in multiples]
    bs = max(1, BATCH_TOKENS // evalset.windows.shape[1])
    ppl = perplexity_by_length(model, evalset.windows, [m * L for m in multiples], bs, progress=False)
    recall_rows, _ = evaluate_cells(model, tokenizer, evalset.prompts, BATCH_TOKENS, progress=False)
    by_length = {m * L: k for m, k in zip(multiples, keys)}
    correct: dict[str, dict[str, int]] = {}
    n = None
    for row in recall_rows:
        k = round(row["exact_match"] * row["samples"])
        correct.setdefault(row["task"], {})[by_length[row["length"]]] = k
        n = row["samples"]
    recall = {t: {k: c / n for k, c in v.items()} for t, v in correct.items()}
    recall_ci = {t: {k: list(wilson_interval(c, n)) for k, c in v.items()} for t, v in correct.items()}
    pooled = {k: sum(v[k] for v in correct.values()) for k in keys}
    total = n * len(correct)
    state = getattr(model, "state_size", None)
    ppl_ci = {k: [r["ci_low"], r["ci_high"]] for k, r in zip(keys, ppl)}
    return {
        "heldout_loss": ppl[0]["nll"], "heldout_ppl": ppl[0]["perplexity"], "heldout_ppl_ci": ppl_ci[keys[0]],
        "heldout_ppl_by_length_ci": ppl_ci, "heldout_windows": len(evalset.windows),
        "heldout_window_nll": {k: r["window_nll"] for k, r in zip(keys, ppl)},
        "heldout_loss_by_length": {k: r["nll"] for k, r in zip(keys, ppl)},
        "heldout_ppl_by_length": {k: r["perplexity"] for k, r in zip(keys, ppl)},
        "heldout_tokens": {k: r["tokens"] for k, r in zip(keys, ppl)},
        "recall": recall, "recall_ci": recall_ci, "recall_correct": correct, "n": n,
        "recall_mean": {k: pooled[k] / total for k in keys},
        "recall_mean_ci": {k: list(wilson_interval(pooled[k], total)) for k in keys},
        "state_bytes": (None if state is None else
                        {k: state(m * L, dtype=torch.bfloat16) for m, k in zip(multiples, keys)}),
        "eval_seconds": time.perf_counter() - t0,
    }


def score_checkpoint(path: str | Path, tokenizer, evalset: EvalSet, device: str | None = None) -> dict:
    """`score_model` of the checkpoint in `path`, loaded as a user loads it (`from_pretrained`): bf16 on CUDA, fp32 on
    the CPU."""
    from ..evaluation.loading import load_model, pick_device

    device, dtype = pick_device(device)
    model = load_model(path, device, dtype)
    try:
        return {**score_model(model, tokenizer, evalset), "eval_dtype": str(dtype).removeprefix("torch.")}
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["EvalSet", "length_key", "score_checkpoint", "score_model"]
