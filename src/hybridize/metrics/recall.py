"""Synthetic recall evaluation: generate greedily from each prompt, score against the expected values.

Scoring (both on the decoded generation):

* `exact_match` (the headline metric): the answer is the first line of the generation (leading whitespace and
  blank lines dropped), normalised: lowercased, every character that is not a letter or digit turned into a space,
  whitespace runs collapsed. It is correct (1.0) when its first k words are exactly the k words of the expected
  answer (all values, in order, normalised the same way); else 0.0. What follows the answer on the same line is
  not judged, since base models rarely stop right after it; a missing, extra or reordered value fails.
* `ruler_match`: RULER's string_match_all: the fraction of the values that occur, case-insensitively, anywhere in
  the generation; order-free and partial.

Each grid cell (task, length, depth) holds `samples` examples; sample i uses seed `seed * 1_000_003 + i`, so every
cell asks about the same needles and only the length and depth change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..data.synthetic import Example, FillerTokens, TASKS, generate_examples, task_config

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


@dataclass
class Cell:
    task: str
    length: int
    depth: float | None
    examples: list[Example]


def build_cells(tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float | None], samples: int,
                seed: int, tokenizer, filler: FillerTokens) -> list[Cell]:
    cells = []
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"Unknown synthetic task {task!r}. Available: {sorted(TASKS)}")
        for length in lengths:
            for depth in depths:
                cfg = task_config(task, length=length, depth=depth)
                cells.append(Cell(task, length, depth, generate_examples(cfg, samples, seed, tokenizer, filler)))
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
    """Score every cell. Returns (one row per cell: task, length, depth, exact_match, ruler_match, samples;
    one row per example: the same keys plus seed, values and the prediction)."""
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
                predictions.append({"task": cell.task, "length": cell.length, "depth": cell.depth, "seed": ex.seed,
                                    "values": ex.values, "prediction": text, "exact_match": em[-1],
                                    "ruler_match": rm[-1]})
            bar.update(len(batch))
        rows.append({"task": cell.task, "length": cell.length, "depth": cell.depth, "samples": len(em),
                     "exact_match": sum(em) / len(em), "ruler_match": sum(rm) / len(rm)})
    bar.close()
    return rows, predictions
