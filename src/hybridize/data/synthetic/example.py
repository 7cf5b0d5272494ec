"""The record every synthetic task returns: prompt, answer and training labels as token ids, and where each needle
and answer value sits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One synthetic example. Token spans are [start, end) indices into `input_ids` (prompt + answer)."""

    task: str
    input_ids: list[int]  # (context_length + len(answer tokens),) prompt then answer
    labels: list[int]  # same length; IGNORE_INDEX except on the answer tokens
    prompt_ids: list[int]  # (context_length,) what a model sees at evaluation
    answer: str  # the answer text appended after the prompt (its tokens are `" " + answer`)
    values: list[str]  # every value the answer must contain, in answer order
    context_length: int  # == len(prompt_ids), in the tokenizer's tokens
    depth: float | None  # requested depth of the first queried needle (None: drawn at random)
    needle_depths: list[float]  # where each needle starts, as a fraction of the haystack (0 = top, 1 = bottom)
    needle_spans: list[tuple[int, int]]  # each needle (NIAH / passkey: all; MQAR: the queried pairs)
    value_spans: list[tuple[int, int]]  # tokens of each value of `values` inside the context
    seed: int = 0

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.context_length:]

    def to_dict(self) -> dict:
        return asdict(self)
