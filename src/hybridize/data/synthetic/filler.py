"""The haystacks' filler text, tokenized once, with the word and sentence starts a needle or a window may use."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FillerTokens:
    """Haystack material: documents tokenized once, in order, each followed by a blank line, cut at `max_tokens`.

    `word_start[i]` says whether a needle may go right before token i (it starts a word or is whitespace);
    `starts` are the tokens that begin a sentence, where a haystack window may begin. Windows longer than the stream
    wrap around to its beginning. Needs a fast tokenizer for the offsets; with a slow one every position counts as a
    word start and a sentence start."""

    ids: tuple[int, ...]
    word_start: tuple[bool, ...]
    starts: tuple[int, ...] = field(repr=False)

    @classmethod
    def build(cls, tokenizer, documents: Iterable[str], max_tokens: int = 2**20) -> FillerTokens:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
        ids: list[int] = []
        flags: list[bool] = []
        starts: list[int] = []
        for doc in documents:
            if not doc.strip():
                continue
            text = doc.strip() + "\n\n"
            if getattr(tokenizer, "is_fast", False):
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                sentences = {m.start(1) for m in _SENTENCE.finditer(text)}  # first character of each sentence
                for j, (s, e) in enumerate(enc["offset_mapping"]):
                    flags.append(s == 0 or text[s].isspace() or text[s - 1].isspace())
                    first = s + len(text[s:e]) - len(text[s:e].lstrip())
                    if first in sentences:
                        starts.append(len(ids) + j)
                ids.extend(enc["input_ids"])
            else:
                piece = tokenizer.encode(text, add_special_tokens=False)
                starts.extend(range(len(ids), len(ids) + len(piece)))
                ids.extend(piece)
                flags.extend([True] * len(piece))
            if len(ids) >= max_tokens:
                break
        if not ids:
            raise ValueError("filler has no text: give at least one non-empty document")
        ids, flags = ids[:max_tokens], flags[:max_tokens]
        flags[0] = True
        starts = [i for i in starts if i < len(ids)] or [0]
        return cls(tuple(ids), tuple(flags), tuple(starts))

    def window(self, start: int, n: int) -> tuple[list[int], list[bool]]:
        """n tokens from `start`, wrapping around; the first counts as a word start."""
        N = len(self.ids)
        idx = [(start + j) % N for j in range(n)]
        flags = [self.word_start[i] for i in idx]
        if flags:
            flags[0] = True
        return [self.ids[i] for i in idx], flags


_SENTENCE = re.compile(r"(?:\A|[.!?]\s+|\n)\s*(\S)")


def as_filler(tokenizer, filler) -> FillerTokens:
    """`filler` as FillerTokens: itself, or built from a sequence of documents."""
    if isinstance(filler, FillerTokens):
        return filler
    if filler is None or isinstance(filler, str):
        raise ValueError("filler must be a FillerTokens or a sequence of documents (strings)")
    return FillerTokens.build(tokenizer, filler)
