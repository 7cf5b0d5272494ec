"""RULER needle-in-a-haystack: its config and generator (tasks niah_*)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from .example import Example
from .filler import FillerTokens, as_filler
from .layout import build_example, check_common, make_needle, place_needles, random_depths
from .tokens import WORDS, encode, special_prefix

# RULER's noise haystack (niah_single_1): the same five sentences over and over.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def _value(rng: random.Random, kind: str) -> str:
    return VALUE_KINDS[kind][2](rng)


VALUE_KINDS = {  # kind -> (singular, plural, draw)
    "number": ("number", "numbers", lambda rng: str(rng.randint(1_000_000, 9_999_999))),
    "uuid": ("uuid", "uuids", lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4))),
    "word": ("word", "words", lambda rng: rng.choice(WORDS)),
}


@dataclass(frozen=True)
class NIAHConfig:
    """RULER needle-in-a-haystack: needles "One of the special magic numbers for KEY is: VALUE." in a haystack.

    `num_keys` keys get `num_values` needles each; the first `num_queries` keys are asked for. The first needle of
    the first key goes at `depth`, the others at depths drawn from `depth_candidates` evenly spaced ones."""

    task: str = "niah_single_2"
    length: int = 4096
    depth: float | None = None
    haystack: str = "filler"  # "noise" (RULER's repeated sentences) or "filler" (the filler documents)
    value_kind: str = "number"  # "number" (7 digits), "uuid", "word"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    depth_candidates: int = 1000

    def __post_init__(self):
        check_common(self)
        if self.haystack not in ("noise", "filler"):
            raise ValueError(f"haystack must be one of ['noise', 'filler'], got {self.haystack!r}")
        if self.value_kind not in VALUE_KINDS:
            raise ValueError(f"value_kind must be one of {list(VALUE_KINDS)}, got {self.value_kind!r}")
        for name in ("num_keys", "num_values", "num_queries", "depth_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_queries > self.num_keys:
            raise ValueError(f"num_queries={self.num_queries} must be <= num_keys={self.num_keys}")
        if self.num_keys > len(WORDS):
            raise ValueError(f"num_keys must be <= {len(WORDS)} (the key word list), got {self.num_keys}")


def niah(cfg: NIAHConfig, seed: int, tokenizer, filler) -> Example:
    """RULER NIAH. The answer: the queried keys in the order asked, each key's values in the order they appear in the
    text, joined by ", "."""
    rng = random.Random(f"{cfg.task}:{seed}")
    singular, plural, _ = VALUE_KINDS[cfg.value_kind]
    keys = rng.sample(WORDS, cfg.num_keys)
    depths = random_depths(rng, cfg.num_keys * cfg.num_values, cfg.depth_candidates)
    if cfg.depth is not None:
        depths[0] = cfg.depth
    needles = []  # key i's values are needles i * num_values ... (i + 1) * num_values - 1
    for i, key in enumerate(keys):
        for j in range(cfg.num_values):
            needles.append(make_needle(tokenizer, depths[i * cfg.num_values + j],
                                       f" One of the special magic {plural} for {key} is:",
                                       _value(rng, cfg.value_kind), "."))
    hay = FillerTokens.build(tokenizer, [NOISE * 8]) if cfg.haystack == "noise" else as_filler(tokenizer, filler)
    head = special_prefix(tokenizer) + encode(
        tokenizer, f"Some special magic {plural} are hidden within the following text. Make sure to memorize it. "
                   f"I will quiz you about the {plural} afterwards.\n")
    queried = keys[:cfg.num_queries]
    q = queried[0] if len(queried) == 1 else ", ".join(queried[:-1]) + " and " + queried[-1]
    if cfg.num_values == 1 and cfg.num_queries == 1:
        question = (f"\nWhat is the special magic {singular} for {q} mentioned in the provided text? "
                    f"The special magic {singular} for {q} mentioned in the provided text is")
    else:
        question = (f"\nWhat are all the special magic {plural} for {q} mentioned in the provided text? "
                    f"The special magic {plural} for {q} mentioned in the provided text are")
    layout = place_needles(cfg, rng, hay, head, needles, encode(tokenizer, question))
    order = []
    for i in range(cfg.num_queries):
        ks = range(i * cfg.num_values, (i + 1) * cfg.num_values)
        order.extend(sorted(ks, key=lambda k: layout.spans[k][0]))
    return build_example(cfg, seed, tokenizer, layout, [needles[k].text for k in order],
                         [layout.value_spans[k] for k in order], ", ")
