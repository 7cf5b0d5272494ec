"""Where needles go: a prompt laid out as head + haystack with the needles inserted + question, at exact token
lengths, and the `Example` a layout becomes; with the length and depth checks every task config shares. Used by
every task family."""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass

from .example import IGNORE_INDEX, Example
from .filler import FillerTokens
from .tokens import encode


def check_common(cfg) -> None:
    if not isinstance(cfg.length, int) or isinstance(cfg.length, bool) or cfg.length < 1:
        raise ValueError(f"length must be a positive number of tokens, got {cfg.length!r}")
    if cfg.depth is not None and not (0.0 <= cfg.depth <= 1.0):
        raise ValueError(f"depth must be in [0, 1] (0 = top of the haystack, 1 = bottom) or None, got {cfg.depth!r}")


@dataclass
class Needle:
    """A needle as three separately tokenized pieces, so that the value's tokens are known exactly."""

    depth: float  # target depth in [0, 1]
    text: str  # the value, as the answer must contain it
    pre: list[int]
    value: list[int]  # tokens of " " + text
    post: list[int]

    @property
    def ids(self) -> list[int]:
        return self.pre + self.value + self.post


def make_needle(tokenizer, depth: float, pre: str, value: str, post: str) -> Needle:
    return Needle(depth, value, encode(tokenizer, pre), encode(tokenizer, " " + value), encode(tokenizer, post))


@dataclass
class Layout:
    prompt: list[int]  # (length,)
    spans: list[tuple[int, int]]  # per needle, in needle order
    value_spans: list[tuple[int, int]]
    depths: list[float]


def random_depths(rng: random.Random, k: int, candidates: int) -> list[float]:
    """k distinct depths out of `candidates` evenly spaced ones in [0, 1] (with replacement past `candidates`)."""
    grid = [i / max(candidates - 1, 1) for i in range(candidates)]
    return rng.sample(grid, k) if k <= candidates else [rng.choice(grid) for _ in range(k)]


def too_short(cfg, overhead: int) -> ValueError:
    return ValueError(
        f"length={cfg.length} is too short for task {cfg.task!r}: its template and needles take {overhead} tokens; "
        f"use length >= {overhead + 1}"
    )


def place_needles(cfg, rng: random.Random, filler: FillerTokens, head: list[int], needles: list[Needle],
                  question: list[int]) -> Layout:
    """prompt = head + haystack with the needles inserted + question; the haystack takes what is left of length.

    Each needle goes before the word start nearest to depth * haystack length (ties: the earlier one); needles that
    land on the same point stay in needle order."""
    overhead = len(head) + len(question) + sum(len(n.ids) for n in needles)
    n = cfg.length - overhead
    if n < 1:
        raise too_short(cfg, overhead)
    hay, flags = filler.window(rng.choice(filler.starts), n)
    bounds = [i for i, f in enumerate(flags) if f] + [n]  # sorted insertion points
    places = []
    for k, needle in enumerate(needles):
        target = needle.depth * n
        j = bisect_left(bounds, target)
        places.append((min(bounds[max(j - 1, 0):j + 1], key=lambda b: (abs(b - target), b)), k))
    places.sort()
    prompt = list(head)
    spans, value_spans, depths = [None] * len(needles), [None] * len(needles), [0.0] * len(needles)
    prev = 0
    for pos, k in places:
        prompt.extend(hay[prev:pos])
        start = len(prompt)
        prompt.extend(needles[k].ids)
        spans[k] = (start, len(prompt))
        v0 = start + len(needles[k].pre)
        value_spans[k] = (v0, v0 + len(needles[k].value))
        depths[k] = pos / n
        prev = pos
    prompt.extend(hay[prev:])
    prompt.extend(question)
    assert len(prompt) == cfg.length, (len(prompt), cfg.length)
    return Layout(prompt, spans, value_spans, depths)


def build_example(cfg, seed: int, tokenizer, layout: Layout, values: list[str],
                  value_spans: list[tuple[int, int]], sep: str) -> Example:
    answer = sep.join(values)
    answer_ids = encode(tokenizer, " " + answer)
    return Example(
        task=cfg.task,
        input_ids=layout.prompt + answer_ids,
        labels=[IGNORE_INDEX] * len(layout.prompt) + answer_ids,
        prompt_ids=layout.prompt,
        answer=answer,
        values=values,
        context_length=len(layout.prompt),
        depth=cfg.depth,
        needle_depths=layout.depths,
        needle_spans=layout.spans,
        value_spans=value_spans,
        seed=seed,
    )
