"""HALO's selection (arXiv 2601.22156, METHODS.md): swap one layer at a time, score what it costs.

For each layer i alone, the teacher gets layer i's stage-1 mixer in place of its attention (every other layer keeps
the teacher's attention: the setting stage 1 aligned the mixers in) and two evaluations run:

    R_i: recall of the swapped model        C_i: language-modelling quality of the swapped model
    s_i = (max_j R_j - R_i) / (max_j C_j - C_i + eps),  eps = 1e-10,  capped at 50;  keep the k highest

so a layer scores high when swapping it out loses much recall for little LM quality. HALO's R is the mean of
RULER qa_squad@4K, FDA and SWDE and its C the mean acc_norm of HellaSwag, ARC-E and ARC-C. The offline defaults here:

* R: the mean exact match (`metrics.recall.exact_match`, greedy generation, the scoring of `hybridize eval`) over
  `select.halo_tasks` (synthetic passkey / NIAH / MQAR tasks, with `halo_task_options`) at `halo_lengths`,
  `halo_examples` examples each, needles at random depths;
* C: the mean log-likelihood per token (minus the NLL) of `halo_lm_sequences` windows of `halo_lm_seq_len` tokens of
  `select.eval_data` (default: the conversion's data, which stage 1 also trained on; give held-out text there).

Any `model -> float` callable can stand in for either: `halo.select(ctx, k, recall=fn, lm=fn)` (its
`tokens_per_call` attribute, when it has one, is counted in the tokens spent). Equal scores are ordered by the
recall lost, then the LM quality lost. Each layer's (R_i, C_i) is saved as it is measured, so a stopped run resumes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..data.sources import iter_documents
from ..data.synthetic import generate_examples, task_config
from ..metrics.perplexity import perplexity_windows, token_nll
from ..metrics.recall import Cell, evaluate_cells
from ..models import HybridForCausalLM
from .base import SelectionContext, SelectionResult, swap_group_config, swapped_model, top_k, top_k_groups

EPS = 1e-10
CAP = 50.0


def halo_scores(R: Sequence[float], C: Sequence[float], eps: float = EPS, cap: float = CAP) -> list[float]:
    """s_i = min((max R - R_i) / (max C - C_i + eps), cap) for each layer i; higher R and C are better.

    A layer whose swap costs no LM quality (C_i = max C) but some recall gets (dR / eps) -> the cap; one that costs
    neither gets 0 / eps = 0."""
    if len(R) != len(C) or not R:
        raise ValueError(f"R and C need one value per layer, got {len(R)} and {len(C)}")
    if not all(math.isfinite(x) for x in (*R, *C)):
        raise ValueError(f"R and C must be finite numbers, got R={list(R)}, C={list(C)}")
    r_max, c_max = max(R), max(C)
    return [min((r_max - r) / (c_max - c + eps), cap) for r, c in zip(R, C)]


class RecallEval:
    """R: mean exact match of greedy answers to synthetic recall prompts (the same prompts for every model)."""

    def __init__(self, cells: list[Cell], tokenizer, batch_tokens: int):
        self.cells, self.batch_tokens = cells, batch_tokens
        if tokenizer.pad_token_id is None:  # prompts are left-padded into batches; EOS pads as in evaluation
            tokenizer = copy.copy(tokenizer)
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        slack = 8  # evaluate_cells' default: tokens generated past the longest answer
        self.tokens_per_call = sum(len(ex.prompt_ids) + max(len(e.answer_ids) for e in c.examples) + slack
                                   for c in cells for ex in c.examples)

    @classmethod
    def from_context(cls, ctx: SelectionContext) -> RecallEval:
        s = ctx.settings
        cells = []
        for task in s.halo_tasks:
            for length in s.halo_lengths:
                cfg = task_config(task, length=length, **s.halo_task_options)
                cells.append(Cell(task, length, None, generate_examples(cfg, s.halo_examples, ctx.seed, ctx.tokenizer,
                                                                        ctx.filler())))
        return cls(cells, ctx.tokenizer, s.halo_batch_tokens)

    def __call__(self, model: HybridForCausalLM) -> float:
        rows, _ = evaluate_cells(model, self.tokenizer, self.cells, batch_tokens=self.batch_tokens, progress=False)
        return sum(r["exact_match"] * r["samples"] for r in rows) / sum(r["samples"] for r in rows)


class LogLikelihoodEval:
    """C: mean log-likelihood per predicted token of fixed text windows (B, T)."""

    def __init__(self, windows: torch.Tensor, batch_tokens: int):
        self.windows = windows
        self.batch_size = max(1, batch_tokens // windows.shape[1])
        self.tokens_per_call = windows.numel()

    @classmethod
    def from_context(cls, ctx: SelectionContext) -> LogLikelihoodEval:
        s = ctx.settings
        windows = perplexity_windows(ctx.tokenizer, iter_documents(ctx.eval_data), s.halo_lm_seq_len - 1,
                                     s.halo_lm_sequences)
        return cls(windows, s.halo_batch_tokens)

    def __call__(self, model: HybridForCausalLM) -> float:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(self.windows), self.batch_size):
            nll = token_nll(model, self.windows[start:start + self.batch_size].to(device))  # (B, T - 1)
            total += float(nll.double().sum())
            count += nll.numel()
        return -total / count


def _measurer(ctx: SelectionContext, recall, lm):
    """(measure(name, model_fn) -> {"R", "C"}, cached in run_dir/halo/<name>.json for a resumed run; the tokens one
    measurement reads; the definitions of R and C)."""
    recall = recall or RecallEval.from_context(ctx)
    lm = lm or LogLikelihoodEval.from_context(ctx)
    per_call = getattr(recall, "tokens_per_call", 0) + getattr(lm, "tokens_per_call", 0)
    cache_dir = ctx.run_dir / "halo"
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(ctx, recall, lm)

    def measure(name: str, model_fn) -> dict:
        path = cache_dir / f"{name}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved
        model = model_fn()
        row = {"key": key, "R": float(recall(model)), "C": float(lm(model))}
        path.write_text(json.dumps(row))
        return row

    definitions = {"R_definition": "mean exact match" if isinstance(recall, RecallEval) else _name(recall),
                   "C_definition": "mean log-likelihood per token" if isinstance(lm, LogLikelihoodEval) else _name(lm)}
    return measure, per_call, definitions


def select(ctx: SelectionContext, k: int, recall: Callable[[HybridForCausalLM], float] | None = None,
           lm: Callable[[HybridForCausalLM], float] | None = None) -> SelectionResult:
    aligned = ctx.aligned("halo")
    measure, per_call, definitions = _measurer(ctx, recall, lm)
    teacher = measure("teacher", lambda: ctx.teacher)
    rows = []
    for i in tqdm(range(ctx.num_layers), desc="halo: swap one layer", unit="layer"):
        rows.append(measure(f"layer{i}", lambda i=i: swapped_model(ctx.teacher, aligned, [i])))
    R, C = [r["R"] for r in rows], [r["C"] for r in rows]
    scores = halo_scores(R, C)
    layers = top_k(scores, k, tiebreak=[(max(R) - r, max(C) - c) for r, c in zip(R, C)])
    details = {"R": R, "C": C, "s": scores, "teacher": {"R": teacher["R"], "C": teacher["C"]}, **definitions,
               "eps": EPS, "cap": CAP, "capped": [i for i, x in enumerate(scores) if x >= CAP]}
    notes = [n for n in (tie_note(scores, layers), cap_note(R, C, scores, layers)) if n is not None]
    if notes:
        details["note"] = " ".join(notes)
        for note in notes:
            tqdm.write(f"halo: {note}")
    return SelectionResult(layers, scores, tokens=per_call * (ctx.num_layers + 1), details=details)


def select_groups(ctx: SelectionContext, k: int, recall: Callable[[HybridForCausalLM], float] | None = None,
                  lm: Callable[[HybridForCausalLM], float] | None = None) -> SelectionResult:
    """HALO at head level (fusion=intra): swap one KV-head group at a time (its query heads become the layer's
    stage-1 mixer heads, `swap_group_config`), score each group as HALO scores a layer, keep the k highest
    (`select.groups_per_layer` of them in every layer first). L x G evaluations instead of L."""
    aligned = ctx.aligned("halo")
    measure, per_call, definitions = _measurer(ctx, recall, lm)
    L, G = ctx.num_layers, ctx.teacher.config.num_key_value_heads
    teacher = measure("teacher", lambda: ctx.teacher)
    rows = []
    for n in tqdm(range(L * G), desc="halo: swap one KV-head group", unit="group"):
        i, j = divmod(n, G)
        config = swap_group_config(ctx.teacher.config, aligned.config, i, j, ctx.recipe.intra_fusion,
                                   ctx.recipe.intra_branch_norm)
        rows.append(measure(f"layer{i}-group{j}", lambda c=config: swapped_model(ctx.teacher, aligned, config=c)))
    R, C = [r["R"] for r in rows], [r["C"] for r in rows]
    scores = halo_scores(R, C)
    groups = top_k_groups(scores, L, k, ctx.settings.groups_per_layer,
                          tiebreak=[(max(R) - r, max(C) - c) for r, c in zip(R, C)])
    details = {"R": R, "C": C, "s": scores, "teacher": {"R": teacher["R"], "C": teacher["C"]}, **definitions,
               "eps": EPS, "cap": CAP, "capped": [n for n, x in enumerate(scores) if x >= CAP],
               "order": "layer-major: entry i * G + j is layer i, group j"}
    return SelectionResult([], [scores[i * G:(i + 1) * G] for i in range(L)], tokens=per_call * (L * G + 1),
                           details=details, groups=groups)


def tie_note(scores: Sequence[float], layers: Sequence[int]) -> str | None:
    """A sentence when the chosen layers were not decided by the score alone: a chosen and an unchosen layer score
    the same (typically both at the cap, when swapping one layer costs next to no LM quality: C_i ~ max C), so the
    tie-break (recall lost, then LM quality lost) chose between them."""
    chosen = set(layers)
    cut = min(scores[i] for i in chosen)
    tied = [i for i, x in enumerate(scores) if x == cut]
    if all(i in chosen for i in tied):
        return None
    where = f"the cap ({CAP:g})" if cut >= CAP else f"{cut:.4g}"
    return (f"{len(tied)} layers ({', '.join(map(str, tied))}) score {where} and {sum(i in chosen for i in tied)} of "
            "them are kept: the tie-break (recall lost, then LM quality lost) chose, not the score")


def cap_note(R: Sequence[float], C: Sequence[float], scores: Sequence[float], layers: Sequence[int]) -> str | None:
    """A sentence when a kept layer scored the cap (its LM cost, max C - C_i, is near zero) and a layer left out
    lost more recall (max R - R_j): it names both. The published formula does this by design; with an LM measure as
    flat as its noise, it is worth knowing (a GLA run of 2026-12-01 kept layers 1 and 2 at the cap, left out layer 4
    that lost 20x the recall, and the hybrid kept no recall: results/gpu/mixers-small-12-gla/)."""
    r_max, c_max = max(R), max(C)
    chosen = set(layers)
    left = [j for j in range(len(R)) if j not in chosen]
    if not left:
        return None
    j = max(left, key=lambda j: (r_max - R[j], -j))
    capped = [i for i in sorted(chosen) if scores[i] >= CAP and r_max - R[i] < r_max - R[j]]
    if not capped:
        return None
    kept = ", ".join(f"{i} (recall lost {r_max - R[i]:.3g}, LM cost {c_max - C[i]:.3g})" for i in capped)
    return (f"layer(s) {kept} scored the cap ({CAP:g}) and are kept, while layer {j}, left out, lost more recall "
            f"({r_max - R[j]:.3g}, LM cost {c_max - C[j]:.3g}, score {scores[j]:.3g}): the score divides recall lost "
            "by LM cost, so a near-zero LM cost outranks more recall lost")


def _cache_key(ctx: SelectionContext, recall, lm) -> str:
    """What a saved (R_i, C_i) was measured with: a rerun with other settings measures again."""
    s = ctx.settings
    fields = {name: getattr(s, name) for name in ("halo_tasks", "halo_task_options", "halo_lengths", "halo_examples",
                                                 "halo_lm_sequences", "halo_lm_seq_len", "eval_data")}
    fields |= {"seed": ctx.seed, "recall": _name(recall), "lm": _name(lm), "data": ctx.data}
    return json.dumps(fields, sort_keys=True, default=str)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__
