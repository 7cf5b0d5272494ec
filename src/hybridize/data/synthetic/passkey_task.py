"""Passkey retrieval: its config and generator (tasks passkey, passkey_flashmorph)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .example import Example
from .filler import as_filler
from .layout import build_example, check_common, make_needle, place_needles, random_depths
from .tokens import WORDS, encode, special_prefix


@dataclass(frozen=True)
class PasskeyConfig:
    """Passkeys of `words_per_passkey` random words hidden in filler; the question asks for one (`query="one"`) or
    for all of them in the order they appear (`query="all"`). With several passkeys each carries a distinct number
    (a random permutation of 1..N, so the number says nothing about the position)."""

    task: str = "passkey"
    length: int = 4096
    depth: float | None = None
    num_passkeys: int = 1
    words_per_passkey: int = 5
    query: str = "one"
    depth_candidates: int = 1000

    def __post_init__(self):
        check_common(self)
        for name in ("num_passkeys", "words_per_passkey", "depth_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.query not in ("one", "all"):
            raise ValueError(f"query must be one of ['one', 'all'], got {self.query!r}")


def passkey(cfg: PasskeyConfig, seed: int, tokenizer, filler) -> Example:
    """Passkey retrieval. The answer: the asked passkey's words, or (query="all") every passkey in the order they
    appear, joined by "; "."""
    rng = random.Random(f"{cfg.task}:{seed}")
    N = cfg.num_passkeys
    numbers = rng.sample(range(1, N + 1), N)
    keys = [" ".join(rng.choice(WORDS) for _ in range(cfg.words_per_passkey)) for _ in range(N)]
    depths = random_depths(rng, N, cfg.depth_candidates)
    if cfg.depth is not None:
        depths[0] = cfg.depth
    label = [f" {x}" if N > 1 else "" for x in numbers]
    needles = [make_needle(tokenizer, depths[k], f" The pass key{label[k]} is:", keys[k], ". Remember it.")
               for k in range(N)]
    head = special_prefix(tokenizer) + encode(
        tokenizer, "There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there.\n")
    if cfg.query == "one":
        question = f"\nWhat is the pass key{label[0]}? The pass key{label[0]} is:"
    else:
        question = "\nWhat are all the pass keys, in the order they appear in the text? The pass keys are:"
    layout = place_needles(cfg, rng, as_filler(tokenizer, filler), head, needles, encode(tokenizer, question))
    order = [0] if cfg.query == "one" else sorted(range(N), key=lambda k: layout.spans[k][0])
    return build_example(cfg, seed, tokenizer, layout, [keys[k] for k in order],
                         [layout.value_spans[k] for k in order], "; ")
