"""A corpus tokenized once into one token stream, and fixed-length windows over that stream.

    documents   "The cat."          "A dog barked."            "Hi."
    tokens      [t t t EOS          t t t t EOS                t EOS]        (N,) uint32
    doc_starts  [0,                 4,                         9,     11]    (D + 1,) int64

`PackedSequences(corpus, seq_len=5)` cuts the stream into windows [0:5], [5:10] (the trailing 1 token is dropped)
and reports the document pieces inside each: window 0 holds 4 tokens of document 0 then 1 of document 1, so its
doc_lens are [4, 1]; window 1 holds [4, 1] too (the rest of document 1, then the start of document 2).
"""

from __future__ import annotations

import operator
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from . import token_cache
from .sources import cache_dir, iter_documents, spec_items

# Documents are encoded in batches (the Rust tokenizer spreads a batch over all cores) of at most this many
# documents or characters: big enough to keep the cores busy, small enough that `max_tokens` stops reading soon
# after the budget is met and that a huge document does not sit in memory with thousands of others.
BATCH_DOCUMENTS = 1024
BATCH_CHARS = 4_000_000


@dataclass(frozen=True)
class TokenizedCorpus:
    """All documents' token ids in one stream; every document is followed by EOS (except a last document cut by a
    `max_tokens` budget), so that the model learns where documents end.

    tokens: (N,) uint32. doc_starts: (D + 1,) int64, strictly increasing from 0 to N (no document is empty)."""

    tokens: np.ndarray
    doc_starts: np.ndarray

    def __post_init__(self):
        t, s = self.tokens, self.doc_starts
        if t.ndim != 1 or t.dtype != np.uint32:
            raise ValueError(f"tokens must be a 1-D uint32 array, got {t.ndim}-D {t.dtype}")
        if s.ndim != 1 or s.dtype != np.int64 or len(s) < 2:
            raise ValueError(f"doc_starts must be a 1-D int64 array of at least 2 offsets, got {s.ndim}-D {s.dtype} "
                             f"of length {len(s)}")
        if s[0] != 0 or s[-1] != len(t) or not bool(np.all(s[1:] > s[:-1])):
            raise ValueError(f"doc_starts must rise strictly from 0 to len(tokens) = {len(t)}, got "
                             f"{s[:3].tolist()} ... {s[-3:].tolist()}")

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts) - 1


def tokenize_corpus(spec, tokenizer, *, max_tokens: int | None = None, cache: bool = True) -> TokenizedCorpus:
    """Tokenize every document of `spec` (anything `iter_documents` takes) and append EOS after each.

    tokenizer: a transformers fast tokenizer (or anything with `backend_tokenizer` and `eos_token_id`). No special
    tokens are added around documents; special-token strings inside the text are read as those tokens, as
    `tokenizer(text, add_special_tokens=False)` does. Truncation or padding left on the tokenizer by an earlier call
    is ignored (documents are never cut here).
    max_tokens: stop reading once this many tokens are collected and keep exactly that many.
    cache: reuse / store the result under cache_dir()/tokens/ (see `token_cache`); the result is then memory-mapped.
    """
    backend, eos_id = _plain_backend(tokenizer)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens <= 0):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    max_tokens = None if max_tokens is None else int(max_tokens)  # numpy ints too, but JSON-safe in the key
    items = spec_items(spec)
    if not cache:
        return _tokenize(items, backend, eos_id, max_tokens)
    directory = cache_dir() / "tokens" / token_cache.cache_key(items, backend.to_str(), eos_id, max_tokens)
    cached = _read_cached(directory)
    if cached is not None:
        return cached
    corpus = _tokenize(items, backend, eos_id, max_tokens)
    meta = {"spec": items, "tokenizer": str(getattr(tokenizer, "name_or_path", "")), "max_tokens": max_tokens}
    try:
        token_cache.write_entry(directory, corpus.tokens, corpus.doc_starts, meta)
    except OSError as err:  # a read-only or full disk costs the reuse, not the run
        warnings.warn(f"could not cache tokens in {directory}: {err}", stacklevel=2)
        return corpus
    reread = _read_cached(directory)  # the memory-mapped copy, so the arrays in RAM can be freed
    return corpus if reread is None else reread


def _plain_backend(tokenizer) -> tuple[Tokenizer, int]:
    """A private copy of the tokenizer's Rust backend with truncation and padding off, and the EOS id.

    transformers leaves `truncation=True, max_length=...` of the last call switched on in the backend; encoding
    with that would silently cut every document, and hashing it would split the cache."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(f"tokenizer must be a fast (Rust-backed) tokenizer with a `backend_tokenizer`, got "
                         f"{type(tokenizer).__name__}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token_id; documents are separated by EOS, so set "
                         "tokenizer.eos_token (e.g. to its end-of-text token)")
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    plain.encode_special_tokens = backend.encode_special_tokens
    return plain, int(eos_id)


def _read_cached(directory) -> TokenizedCorpus | None:
    entry = token_cache.read_entry(directory)
    if entry is None:
        return None
    try:
        return TokenizedCorpus(*entry)
    except ValueError:  # damaged offsets: rebuilt by the caller
        return None


def _tokenize(items: list[str], backend: Tokenizer, eos_id: int, max_tokens: int | None) -> TokenizedCorpus:
    chunks: list[np.ndarray] = []  # (n_i,) uint32 per batch of documents, EOS included
    lengths: list[int] = []  # tokens per document, EOS included
    total, start = 0, time.perf_counter()
    with closing(iter_documents(items)) as docs, tqdm(desc="tokenizing", unit=" docs", mininterval=1.0) as bar:
        for batch in _batches(docs):
            encoded = [enc.ids + [eos_id] for enc in backend.encode_batch_fast(batch, add_special_tokens=False)]
            n = sum(map(len, encoded))
            chunks.append(np.fromiter(chain.from_iterable(encoded), dtype=np.uint32, count=n))
            lengths.extend(map(len, encoded))
            total += n
            bar.update(len(batch))
            bar.set_postfix_str(f"{total / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s", refresh=False)
            if max_tokens is not None and total >= max_tokens:
                break
    if not lengths:
        raise ValueError(f"data spec {items} holds no documents (only empty or whitespace text)")
    tokens = np.concatenate(chunks)
    doc_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    if max_tokens is not None and total > max_tokens:  # cut the last document(s) at the budget
        tokens = tokens[:max_tokens]
        doc_starts = np.append(doc_starts[doc_starts < max_tokens], max_tokens)
    return TokenizedCorpus(tokens, doc_starts.astype(np.int64))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class PackedSequences:
    """Windows of `seq_len` tokens over a corpus' stream: window i = tokens[i * seq_len : (i + 1) * seq_len]; the
    trailing partial window is dropped. Documents run across window edges (a window starts mid-document)."""

    def __init__(self, corpus: TokenizedCorpus, seq_len: int):
        if not _is_int(seq_len) or seq_len <= 0:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        if len(corpus.tokens) < seq_len:
            raise ValueError(f"the corpus has {len(corpus.tokens)} tokens, fewer than one sequence of "
                             f"seq_len={seq_len}: give more data or a shorter seq_len")
        self.corpus = corpus
        self.seq_len = int(seq_len)

    def __len__(self) -> int:
        return len(self.corpus.tokens) // self.seq_len

    def __getitem__(self, i) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(input_ids (seq_len,), doc_lens (n,)): the window and the lengths of the n document pieces in it, in
        order; doc_lens sums to seq_len and every piece is non-empty."""
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence index {i} out of range for {n} sequences")
        start = (i % n) * self.seq_len
        end = start + self.seq_len
        ids = torch.from_numpy(self.corpus.tokens[start:end].astype(np.int64))  # copies out of the memory map
        starts = self.corpus.doc_starts
        inner = starts[np.searchsorted(starts, start, side="right") : np.searchsorted(starts, end, side="left")]
        cuts = np.concatenate([[start], inner, [end]])  # document starts strictly inside the window, plus its edges
        return ids, torch.from_numpy(np.diff(cuts).astype(np.int64))
