"""Multi-query associative recall: its config and generator (task mqar)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .example import Example
from .layout import Layout, build_example, check_common, too_short
from .tokens import WORDS, encode, special_prefix


@dataclass(frozen=True)
class MQARConfig:
    """Multi-query associative recall (zoology's MQAR in words): the context is a list of "KEY: VALUE" lines (two-word
    keys, 3-digit values) filling the length; the question lists `num_queries` keys and the answer is their values
    in that order. `depth` places the first queried pair; the others are drawn at random."""

    task: str = "mqar"
    length: int = 4096
    depth: float | None = None
    num_queries: int = 4

    def __post_init__(self):
        check_common(self)
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")


def mqar(cfg: MQARConfig, seed: int, tokenizer, filler=None) -> Example:
    """MQAR. `filler` is unused: the key-value lines are the whole context. The answer: the values of the queried
    keys in the order asked, joined by ", "."""
    rng = random.Random(f"{cfg.task}:{seed}")
    head = special_prefix(tokenizer) + encode(
        tokenizer, "Below is a list of key-value pairs. Memorize them; I will ask you for the values of some keys.\n")
    template = "\nGive the values of these keys, in order: {}. The values are:"
    newline = encode(tokenizer, "\n")[-1:]
    fixed = len(head) + len(encode(tokenizer, template.format("")))
    # Lines are "KEY: VALUE\n", built from separately tokenized pieces (so the value's tokens are known). Draw them
    # until the next one would not leave room for a question about the longest keys drawn so far (+1 token each for
    # the separator, +2 of slack for merges at the joins).
    seen: set[str] = set()
    lines: list[tuple[list[int], list[int]]] = []  # (key tokens, value tokens) per line
    keys, vals = [], []
    used, longest = 0, 0
    while True:
        key = " ".join(rng.sample(WORDS, 2))
        if key in seen:
            continue
        seen.add(key)
        val = str(rng.randint(100, 999))
        k_ids, v_ids = encode(tokenizer, f"{key}:"), encode(tokenizer, f" {val}")
        size = len(k_ids) + len(v_ids) + len(newline)
        q_len = len(encode(tokenizer, f" {key}"))
        bound = cfg.num_queries * (max(longest, q_len) + 1) + 2
        if fixed + used + size + bound > cfg.length:
            break
        lines.append((k_ids, v_ids)), keys.append(key), vals.append(val)
        used, longest = used + size, max(longest, q_len)
    if len(lines) < cfg.num_queries:
        raise too_short(cfg, fixed + cfg.num_queries * (size + q_len + 1) + 2)
    P = len(lines)
    if cfg.depth is not None:
        first = min(round(cfg.depth * (P - 1)), P - 1)
        queries = [first] + rng.sample([i for i in range(P) if i != first], cfg.num_queries - 1)
    else:
        queries = rng.sample(range(P), cfg.num_queries)
    question = encode(tokenizer, template.format("; ".join(keys[i] for i in queries)))
    pad = cfg.length - len(head) - used - len(question)
    if pad < 0:
        raise RuntimeError(f"mqar: the question took {-pad} tokens more than reserved (a tokenizer that merges across "
                           "'; '); please report it with the tokenizer's name")
    prompt = head + newline * pad  # blank lines take the few tokens that no further pair fits in
    region_start = len(prompt)
    starts = []
    for k_ids, v_ids in lines:
        starts.append(len(prompt))
        prompt.extend(k_ids + v_ids + newline)
    prompt.extend(question)
    assert len(prompt) == cfg.length, (len(prompt), cfg.length)
    spans = [(starts[i], starts[i] + len(lines[i][0]) + len(lines[i][1]) + len(newline)) for i in queries]
    value_spans = [(starts[i] + len(lines[i][0]), starts[i] + len(lines[i][0]) + len(lines[i][1])) for i in queries]
    depths = [(starts[i] - region_start) / max(used, 1) for i in queries]
    layout = Layout(prompt, spans, value_spans, depths)
    return build_example(cfg, seed, tokenizer, layout, [vals[i] for i in queries], value_spans, ", ")
