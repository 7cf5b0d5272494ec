"""Synthetic recall evaluation: generate greedily from each prompt, score against the expected values.

Scoring (both on the decoded generation):

* `exact_match` (the headline metric): the answer is the first line of the generation (leading whitespace and
  blank lines dropped), normalised: lowercased, every character that is not a letter or digit turned into a space,
  whitespace runs collapsed. It is correct (1.0) when its first k words are exactly the k words of the expected
  answer (all values, in order, normalised the same way); else 0.0. What follows the answer on the same line is
  not judged, since base models rarely stop right after it; a missing, extra or reordered value fails.
* `ruler_match`: RULER's string_match_all: the fraction of the values that occur, case-insensitively, anywhere in
  the generation; order-free and partial.

Prompts (`build_cells`): each grid cell (task, length, depth) holds `samples` examples, and no two prompts of one
evaluation share a needle or an answer value, across depths, lengths and tasks, so that every prompt is an
independent sample and a cell of n prompts is n of them (a Wilson interval on n means what it says). They are drawn
in grid order (task, then length, then depth, then sample) from seeds `PROMPT_SEED_BASE + seed * 1_000_003 + k`,
k = 0, 1, ..., skipping a draw whose needle (its text: key and value together) or value another prompt
already holds. PROMPT_SEED_BASE = 2**48 keeps them clear of every training episode's seed (a teacher's episode n and
a conversion's episodes draw with seed `recipe seed * 1_000_003 + n` from the same generators). The pools hold far
more than any evaluation needs: NIAH values are 7-digit numbers (9M) or uuids, a passkey is 5 of 160 words (10^11),
an MQAR needle is a two-word key with a 3-digit value (2.3 x 10^7 lines). MQAR's values alone (900 numbers) repeat
across prompts; its needles (key and value) do not. NIAH keys (160 words) repeat, each time with another value.
The prompts are a pure function of (tasks, lengths, depths, samples, seed, tokenizer, filler); every model of an
evaluation answers the same ones, which is what pairs them (`hybridize.metrics.stats.mcnemar_p`).
With `distinct=False`, sample i of every cell uses seed `seed * 1_000_003 + i`: the same needles at every depth and
length, so that a grid varies nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..data.synthetic import Example, FillerTokens, TASKS, generate, generate_examples, task_config

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0] if text.strip() else ""


def normalize(text: str) -> list[str]:
    """Lowercase, non-alphanumerics to spaces, split into words."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def exact_match(prediction: str, values: Sequence[str]) -> float:
    expected = [w for v in values for w in normalize(v)]
    if not expected:
        raise ValueError("exact_match needs at least one non-empty expected value")
    return float(normalize(first_line(prediction))[:len(expected)] == expected)


def ruler_match(prediction: str, values: Sequence[str]) -> float:
    if not values:
        raise ValueError("ruler_match needs at least one expected value")
    pred = prediction.lower()
    return sum(v.lower() in pred for v in values) / len(values)


PROMPT_SEED_BASE = 1 << 48  # evaluation prompts draw seeds from here on: no training episode's seed is this large
MAX_DRAWS_PER_PROMPT = 50  # draws tried per prompt before a pool counts as too small for distinct prompts


@dataclass
class Cell:
    task: str
    length: int
    depth: float | None
    examples: list[Example]

    def fingerprint(self) -> str:
        """A short hash of the cell's prompts and answers: two reports whose cells share it scored the same prompts
        (and so can be paired)."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(repr((ex.prompt_ids, ex.values)).encode())
        return h.hexdigest()[:16]


def needle_identity(ex: Example, tokenizer) -> set[tuple]:
    """What no other prompt of an evaluation may hold: each needle's text, normalized (NIAH's and passkey's every
    needle, MQAR's queried lines: key and value together), and each answer value, except where the task's values come
    from a small pool (MQAR's 3-digit numbers, `SyntheticTask.distinct_values`). Text, not token ids: one needle
    tokenized two ways at two haystack boundaries is still one needle."""
    ids = ex.input_ids
    keys = {("needle", " ".join(normalize(tokenizer.decode(ids[a:b])))) for a, b in ex.needle_spans}
    if TASKS[ex.task].distinct_values:
        keys |= {("value", " ".join(normalize(v))) for v in ex.values}
    return keys


def build_cells(tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float | None], samples: int,
                seed: int, tokenizer, filler: FillerTokens, distinct: bool = True) -> list[Cell]:
    """The evaluation's prompts: `samples` per (task, length, depth), each with needles and values of its own
    (module docstring); `distinct=False`: the same seeds in every cell."""
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"Unknown synthetic task {task!r}. Available: {sorted(TASKS)}")
    cells, held, k = [], set(), 0
    for task in tasks:
        for length in lengths:
            for depth in depths:
                cfg = task_config(task, length=length, depth=depth)
                if not distinct:
                    cells.append(Cell(task, length, depth, generate_examples(cfg, samples, seed, tokenizer, filler)))
                    continue
                examples, tries = [], 0
                while len(examples) < samples:
                    if tries >= MAX_DRAWS_PER_PROMPT * samples:
                        raise ValueError(
                            f"task {task!r} gave only {len(examples)} prompts with needles and values of their own in "
                            f"{tries} draws at length {length}: its pool is too small for {samples} samples per cell "
                            f"over this grid; use fewer samples, lengths or depths")
                    ex = generate(cfg, PROMPT_SEED_BASE + seed * 1_000_003 + k, tokenizer, filler)
                    k, tries = k + 1, tries + 1
                    identity = needle_identity(ex, tokenizer)
                    if identity & held:
                        continue
                    held |= identity
                    examples.append(ex)
                cells.append(Cell(task, length, depth, examples))
    return cells


@torch.inference_mode()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_token_id: int,
                    eos_token_id: int | list[int] | None = None) -> list[list[int]]:
    """Greedy continuation of each prompt (a left-padded batch), without the prompt; stops at EOS."""
    device = next(model.parameters()).device
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p):] = 1
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                              eos_token_id=eos_token_id)
    # Past the model's max_position_embeddings transformers warns on purpose-built evaluations too; lengths beyond the
    # trained context are what this evaluation measures (and marks), so its logger stays quiet for the call.
    limit = logging.getLogger("transformers.generation.stopping_criteria")
    level = limit.level
    limit.setLevel(logging.ERROR)
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    finally:
        limit.setLevel(level)
    out = out[:, T:].tolist()  # (B, new tokens)
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    result = []
    for row in out:
        cut = next((j for j, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and the model's generation EOS ids (Qwen3 ends chat turns with a second one)."""
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra]
    return sorted({i for i in ids if i is not None})


def evaluate_cells(model, tokenizer, cells: Sequence[Cell], batch_tokens: int = 65536, slack_tokens: int = 8,
                   progress: bool = True, desc: str = "recall") -> tuple[list[dict], list[dict]]:
    """Score every cell. Returns (one row per cell: task, length, depth, exact_match, ruler_match, samples, plus
    `successes` (exact matches), `correct` (one "1" / "0" per prompt, in order: what pairs two models on the same
    prompts) and `prompts` (the cell's fingerprint); one row per example: task, length, depth, `prompt` (its index in
    the cell), seed, values, the prediction and its scores)."""
    eos = eos_token_ids(model, tokenizer)
    rows, predictions = [], []
    bar = tqdm(total=sum(len(c.examples) for c in cells), desc=desc, disable=not progress, unit="ex")
    for cell in cells:
        new = max(len(ex.answer_ids) for ex in cell.examples) + slack_tokens
        bs = max(1, batch_tokens // (cell.length + new))
        em, rm = [], []
        for s in range(0, len(cell.examples), bs):
            batch = cell.examples[s:s + bs]
            outs = greedy_generate(model, [ex.prompt_ids for ex in batch], new, tokenizer.pad_token_id, eos)
            for ex, out in zip(batch, outs):
                text = tokenizer.decode(out, skip_special_tokens=True)
                em.append(exact_match(text, ex.values))
                rm.append(ruler_match(text, ex.values))
                predictions.append({"task": cell.task, "length": cell.length, "depth": cell.depth,
                                    "prompt": len(em) - 1, "seed": ex.seed, "values": ex.values, "prediction": text,
                                    "exact_match": em[-1], "ruler_match": rm[-1]})
            bar.update(len(batch))
        rows.append({"task": cell.task, "length": cell.length, "depth": cell.depth, "samples": len(em),
                     "exact_match": sum(em) / len(em), "ruler_match": sum(rm) / len(rm),
                     "successes": int(sum(em)), "correct": "".join("1" if x else "0" for x in em),
                     "prompts": cell.fingerprint()})
    bar.close()
    return rows, predictions
