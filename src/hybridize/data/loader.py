"""Micro-batches of packed sequences: shuffled per epoch, split across ranks, resumable from a plain dict.

Order: epoch e visits the sequences in the permutation seeded by (seed, e). Global micro-batch k of the epoch is
perm[k*B*W : (k+1)*B*W] (B = batch_size, W = world_size), and rank r takes its r-th slice of B; the remainder of
len(sequences) % (B*W) is dropped at the end of each epoch, so every rank has the same number of steps and no two
ranks ever get the same sequence in one epoch. The position (epoch, step) is all the state there is.

With `global_batch` G (the sequences of one optimizer step over all ranks, a multiple of B*W) an epoch is
len(sequences) // G whole optimizer steps instead: the order of the sequences, and which of them make each optimizer
step (perm[s*G : (s+1)*G]), no longer depend on how G is split into ranks and micro-batches, so a run saved on 4
ranks resumes on 2 (or 1) at the same global batch: `load_state_dict` then accepts another batch_size and world_size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .packing import PackedSequences

# The loss ignores this label (transformers' and torch's cross-entropy ignore_index).
IGNORE_INDEX = -100


@dataclass
class Batch:
    """One micro-batch, laid out for `model(input_ids, cu_seqlens=cu_seqlens, labels=labels)`.

    input_ids: (B, T), or (1, B*T) with document masking: the B sequences flattened into one row.
    labels: same shape. transformers shifts labels left inside the loss (label[t] is predicted at position t - 1),
        so with document masking the first token of every piece is IGNORE_INDEX: it must not be predicted from the
        previous document or sequence. Without masking, labels == input_ids.
    cu_seqlens: (n + 1,) offsets of the n document pieces in the flattened row (every sequence start is one), or
        None without masking.
    num_tokens: B*T, the tokens the model reads (for throughput and token budgets).
    """

    input_ids: torch.LongTensor
    labels: torch.LongTensor
    cu_seqlens: torch.LongTensor | None
    num_tokens: int

    def to(self, device) -> Batch:
        cu = None if self.cu_seqlens is None else self.cu_seqlens.to(device)
        return Batch(self.input_ids.to(device), self.labels.to(device), cu, self.num_tokens)


def collate(items: list[tuple[torch.Tensor, torch.Tensor]], document_masking: bool) -> Batch:
    """A Batch from B items of `PackedSequences` ((T,) input_ids, (n_i,) doc_lens each)."""
    input_ids = torch.stack([ids for ids, _ in items])  # (B, T)
    B, T = input_ids.shape
    if not document_masking:
        return Batch(input_ids, input_ids.clone(), None, B * T)
    doc_lens = torch.cat([lens for _, lens in items])  # (n,): each sequence's pieces sum to T, so its start is a cut
    cu_seqlens = torch.cat([doc_lens.new_zeros(1), doc_lens.cumsum(0)])  # (n + 1,), from 0 to B*T
    flat = input_ids.reshape(1, B * T)
    labels = flat.clone()
    labels[0, cu_seqlens[:-1]] = IGNORE_INDEX
    return Batch(flat, labels, cu_seqlens, B * T)


class SequenceLoader:
    """Deterministically shuffled, resumable, rank-sharded micro-batches of packed sequences. Infinite: at the end of
    an epoch it reshuffles (permutation seeded by (seed, epoch)) and goes on.

    It is its own iterator: `next(loader)` and `for batch in loader` advance the same position, which
    `state_dict()` records and `load_state_dict()` restores (the next batch is then exactly the one an uninterrupted
    loader would have given)."""

    def __init__(self, sequences: PackedSequences, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, document_masking: bool = True, global_batch: int | None = None):
        _check_int("batch_size", batch_size, "a positive int", low=1)
        _check_int("world_size", world_size, "a positive int", low=1)
        _check_int("rank", rank, f"an int in [0, world_size) = [0, {world_size})", low=0, high=world_size)
        _check_int("seed", seed, "a non-negative int", low=0)
        if global_batch is not None:
            _check_int("global_batch", global_batch, "a positive int", low=1)
            if global_batch % (batch_size * world_size):
                raise ValueError(f"global_batch={global_batch} must be a multiple of batch_size * world_size = "
                                 f"{batch_size} * {world_size}")
        if len(sequences) < (global_batch or batch_size * world_size):
            raise ValueError(f"{len(sequences)} sequences cannot fill one global batch of "
                             + (f"{global_batch}" if global_batch else f"batch_size * world_size = {batch_size} * "
                                f"{world_size}") + ": give more data, or lower batch_size or seq_len")
        self.sequences = sequences
        # int(): numpy ints are accepted but would make state_dict() unserialisable as JSON.
        self.batch_size, self.seed, self.rank, self.world_size = map(int, (batch_size, seed, rank, world_size))
        self.global_batch = None if global_batch is None else int(global_batch)
        self.document_masking = document_masking
        if self.global_batch is None:
            self.steps_per_epoch = len(sequences) // (batch_size * world_size)
        else:  # whole optimizer steps, each global_batch / (B * W) micro-batches per rank
            self.steps_per_epoch = len(sequences) // self.global_batch * (self.global_batch // (batch_size * world_size))
        self.epoch = 0
        self.step = 0  # micro-batches of this epoch already given
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, its permutation), computed once per epoch

    def __iter__(self) -> SequenceLoader:
        return self

    def __next__(self) -> Batch:
        batch = collate([self.sequences[i] for i in self.indices(self.epoch, self.step)], self.document_masking)
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return batch

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """(B,) this rank's sequence indices for micro-batch `step` of `epoch`."""
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(len(self.sequences)))
        start = (step * self.world_size + self.rank) * self.batch_size
        return self._perm[1][start : start + self.batch_size]

    def state_dict(self) -> dict:
        """The position, plus what must match for it to mean the same order on resume; plain ints (JSON-safe)."""
        return {"epoch": self.epoch, "step": self.step, **self._layout()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position. With the same `global_batch` on both sides, the saved batch_size and world_size may
        differ from this loader's (a run resumed on another number of ranks): the position is then converted through
        the sequences consumed in the epoch, which must be a whole number of this loader's global micro-batches."""
        layout = self._layout()
        if "global_batch" not in state:  # a state saved without global_batch: resumable with the same split only
            layout.pop("global_batch", None)
        missing = sorted({"epoch", "step", *layout} - set(state))
        if missing:
            raise ValueError(f"loader state lacks {missing}; expected the keys of SequenceLoader.state_dict()")
        portable = "global_batch" in layout
        for key, value in layout.items():
            if portable and key in ("batch_size", "world_size"):
                continue
            if state[key] != value:
                raise ValueError(f"cannot resume: the saved loader had {key}={state[key]}, this one has {key}={value}; "
                                 "the same data, seq_len, batch_size, world_size and seed are needed")
        _check_int("state['epoch']", state["epoch"], "a non-negative int", low=0)
        step = state["step"]
        if portable:
            _check_int("state['batch_size']", state["batch_size"], "a positive int", low=1)
            _check_int("state['world_size']", state["world_size"], "a positive int", low=1)
            _check_int("state['step']", step, "a non-negative int", low=0)
            consumed = step * state["batch_size"] * state["world_size"]  # sequences of this epoch already used
            if consumed % (self.batch_size * self.world_size):
                raise ValueError(f"cannot resume: the saved position ({consumed} sequences into epoch "
                                 f"{state['epoch']}) is not a whole number of global micro-batches of "
                                 f"{self.batch_size} x {self.world_size}")
            step = consumed // (self.batch_size * self.world_size)
        _check_int("state['step']", step, f"an int in [0, {self.steps_per_epoch})", low=0, high=self.steps_per_epoch)
        self.epoch, self.step = int(state["epoch"]), int(step)

    def _layout(self) -> dict:
        layout = {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size,
                  "num_sequences": len(self.sequences), "seq_len": self.sequences.seq_len}
        if self.global_batch is not None:
            layout["global_batch"] = self.global_batch
        return layout


def _check_int(name: str, value, allowed: str, low: int, high: int | None = None) -> None:
    """ValueError naming `name` and what is `allowed` unless low <= value (< high)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= value
    if not ok or (high is not None and value >= high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
