"""The data mix of every model we train from scratch (`hybridize pretrain`, `hybridize teacher`): corpus sequences
with synthetic retrieval episodes placed in front of each micro-batch, so that the model learns in-context recall
worth measuring (and, for a teacher, worth preserving).

Each micro-batch has `episode_rows` episodes (repeat / passkey / MQAR / NIAH, cycling, each drawn from its own seed)
and the rest corpus sequences. Episode n is a pure function of (recipe seed, n), so every model trained on the same
recipe data, seed and tokenizer sees the same tokens in the same order, whatever its architecture.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import threading
from collections import deque
from dataclasses import dataclass

import torch

from ..data import PackedSequences, SequenceLoader
from ..data.synthetic import IGNORE_INDEX, WORDS, FillerTokens, generate, task_config
from ..data.synthetic.tokens import encode, special_prefix

ANSWER_ROOM = 32  # tokens left after an episode's prompt for its answer; the rest of the row is padding
REPEAT = "repeat"  # a training task only (no evaluation task): a list of random words, then the same list again


def repeat_episode(tokenizer, length: int, seed: int) -> tuple[list[int], list[int]]:
    """Random words (from the synthetic tasks' word list) and then the same words again, at most `length` tokens;
    labels on the second copy only. Every label is predictable only by looking back (an induction head), the
    circuit passkey and key-value retrieval are built on, and each row carries dozens of such tokens where a passkey
    carries a few: a small model learns to retrieve much sooner with it (the tiny teacher learned none without it
    in 1,400 steps). A pure function of (tokenizer, length, seed)."""
    rng = random.Random(f"{REPEAT}:{seed}")
    head = special_prefix(tokenizer) + encode(tokenizer, "Repeat these words:")
    again = encode(tokenizer, "\nAgain:")
    room = (length - len(head) - len(again)) // 2
    if room < 4:
        raise ValueError(f"a repeat episode needs length >= {len(head) + len(again) + 8}, got {length}")
    words: list[int] = []
    while True:
        more = encode(tokenizer, " " + rng.choice(WORDS))
        if len(words) + len(more) > room:
            break
        words += more
    ids = head + words + again + words
    labels = [IGNORE_INDEX] * (len(ids) - len(words)) + words
    return ids, labels


@dataclass
class MixedBatch:
    input_ids: torch.LongTensor  # (B, T): episode rows first, then corpus rows
    labels: torch.LongTensor  # (B, T): corpus rows = input_ids; episode rows = -100 except the answer
    episode_rows: int
    num_tokens: int

    def to(self, device) -> MixedBatch:
        return MixedBatch(self.input_ids.to(device), self.labels.to(device), self.episode_rows, self.num_tokens)


_WORKER_MIXER: EpisodeMixer | None = None  # the mixer a forked episode worker draws from


def _worker_init() -> None:
    """An episode worker leaves stopping to its parent: Ctrl-C (SIGINT to the whole process group) or SIGTERM would
    kill a worker inside a task whose result the parent waits for, and the parent's `close()` then hung; the parent
    closes the pool when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C inside waits until the block is done. `Pool.apply_async` registers a task before it queues it; a
    KeyboardInterrupt between the two left a task no worker would ever run, and `close()` waited for it forever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # the handler that was in place takes it now


def _worker_episodes(indices: range) -> list[tuple[list[int], list[int]]]:
    return [_WORKER_MIXER.episode_tokens(n) for n in indices]


class EpisodeMixer:
    """Corpus micro-batches (a `SequenceLoader`) with `episode_rows` synthetic episodes placed in front of each.
    Episode n is a pure function of (recipe seed, n), so the state is the corpus loader's plus a counter.

    `workers` > 0 draws the episodes of the next `prefetch` batches in that many forked processes while the GPU
    trains (tokenizing ~20 episodes a step in Python took a fifth of a `small` step and left the GPU idle meanwhile);
    the batches are the same as with `workers=0` (tested), since an episode depends only on its index. Call `close()`
    when done (`pretrain` does)."""

    def __init__(self, recipe, corpus, tokenizer, filler: FillerTokens, rank: int = 0, world: int = 1,
                 workers: int = 0, prefetch: int = 4):
        r = recipe.train
        self.recipe, self.tokenizer, self.filler = recipe, tokenizer, filler
        self.rows = recipe.episode_rows
        # the corpus rows of one optimizer step, which makes the position one that any number of ranks resumes from;
        # None where the recipe's batch does not split over these ranks (the training loop refuses that recipe)
        corpus_rows = r.micro_batch_size - self.rows
        global_batch = r.batch_size // r.micro_batch_size * corpus_rows
        if r.batch_size % (r.micro_batch_size * world) or corpus_rows < 1:
            global_batch = None
        self.corpus = None if corpus is None else SequenceLoader(  # None: episodes only (`episode_documents`)
            PackedSequences(corpus, r.seq_len), corpus_rows, seed=recipe.seed, rank=rank, world_size=world,
            document_masking=False, global_batch=global_batch)
        self.count = 0  # episodes drawn so far, over all ranks
        self.rank, self.world = rank, world
        self.options = {"passkey": {"words_per_passkey": recipe.passkey_words},
                        "mqar": {"num_queries": recipe.mqar_queries}}
        self.min_length = {name: self._shortest(name) for name in recipe.episode_tasks}
        if workers < 0 or prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got workers={workers}, prefetch={prefetch}")
        self.workers, self.prefetch = workers, prefetch
        self._pool = None
        self._pending: deque = deque()  # (first episode index, async result), in batch order

    def _shortest(self, name: str) -> int:
        """The shortest prompt length, from episode_min_len up in steps of 16, that fits the task's template and
        needles in this tokenizer (NIAH's template alone is ~110 tokens of a 2K-entry BPE)."""
        if name == REPEAT:
            return self.recipe.episode_min_len
        longest = self.recipe.train.seq_len - ANSWER_ROOM
        for length in [*range(self.recipe.episode_min_len, longest, 16), longest]:
            try:
                generate(task_config(name, length=length, **self.options.get(name, {})), 0, self.tokenizer,
                         self.filler)
                return length
            except ValueError:
                continue
        raise ValueError(f"episode task {name!r} does not fit in train.seq_len={self.recipe.train.seq_len}: its prompt "
                         f"takes more than {longest} tokens of this tokenizer ({ANSWER_ROOM} more are kept for the "
                         "answer); raise train.seq_len or leave it out of episode_tasks")

    def episode(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Episode n's (input_ids, labels), each (seq_len,), padded."""
        ids, labels = self.episode_tokens(n)
        return torch.tensor(ids), torch.tensor(labels)

    def episode_tokens(self, n: int) -> tuple[list[int], list[int]]:
        """The same as lists (what a worker process sends back)."""
        r = self.recipe
        name = r.episode_tasks[n % len(r.episode_tasks)]
        length = random.Random(f"length:{r.seed}:{n}").randint(self.min_length[name], r.train.seq_len - ANSWER_ROOM)
        ids, labels = self._draw(name, length, r.seed * 1_000_003 + n)
        pad = r.train.seq_len - len(ids)
        if pad < 0:
            raise ValueError(f"a {name} answer took {-pad + ANSWER_ROOM} tokens, more than the {ANSWER_ROOM} reserved")
        return ids + [self.tokenizer.pad_token_id] * pad, labels + [IGNORE_INDEX] * pad

    def _draw(self, name: str, length: int, seed: int) -> tuple[list[int], list[int]]:
        """One episode's tokens and labels, unpadded."""
        if name == REPEAT:
            return repeat_episode(self.tokenizer, length, seed)
        longest = self.recipe.train.seq_len - ANSWER_ROOM
        while True:  # a draw's keys and values may tokenize longer than the probe's: lengthen until they fit
            try:
                ex = generate(task_config(name, length=length, **self.options.get(name, {})), seed, self.tokenizer,
                              self.filler)
                break
            except ValueError:
                if length >= longest:
                    raise
                length = min(length + 16, longest)
        # the answer ends with EOS, labelled too: a teacher that has not learned where an answer stops goes on
        # copying ("1600818181818...") and exact match scores a right retrieval as wrong
        eos = self.tokenizer.eos_token_id
        return ex.input_ids + [eos], ex.labels + [eos]

    def __iter__(self):
        return self

    def _episodes(self, start: int) -> list[tuple[list[int], list[int]]]:
        """The episodes start .. start + rows - 1: drawn here, or taken from the workers' prefetched batches."""
        if not self.workers or not self.rows:
            return [self.episode_tokens(n) for n in range(start, start + self.rows)]
        if self._pool is None:
            global _WORKER_MIXER
            _WORKER_MIXER = self  # inherited by the forked workers, never pickled
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers' own threads do not survive a fork
            self._pool = multiprocessing.get_context("fork").Pool(self.workers, _worker_init)
        if self._pending and self._pending[0][0] != start:  # the position moved (a resume): drop what was ahead
            self._pending.clear()
        step = self.rows * self.world
        with _interrupts_deferred():
            while len(self._pending) < self.prefetch:
                first = start + step * len(self._pending)
                self._pending.append((first, self._pool.apply_async(_worker_episodes,
                                                                    (range(first, first + self.rows),))))
        return self._pending.popleft()[1].get()

    def close(self) -> None:
        """Stop the episode workers (a later batch starts them again). They finish the batches they prefetched and
        exit: `terminate()` would kill a worker that may be inside its result put, holding the result queue's lock,
        and the pool's own shutdown then waits on that lock forever (a hang seen once in the test suite)."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        self._pending.clear()

    def __next__(self) -> MixedBatch:
        corpus = next(self.corpus)
        start = self.count + self.rank * self.rows
        episodes = self._episodes(start)
        self.count += self.rows * self.world
        ids = torch.cat([torch.tensor([e[0] for e in episodes]), corpus.input_ids]) if episodes else corpus.input_ids
        labels = torch.cat([torch.tensor([e[1] for e in episodes]), corpus.labels]) if episodes else corpus.labels
        return MixedBatch(ids, labels, self.rows, ids.numel())

    def state_dict(self) -> dict:
        return {"corpus": self.corpus.state_dict(), "episodes": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.corpus.load_state_dict(state["corpus"])
        self.count = int(state["episodes"])  # prefetched batches for another position are dropped by _episodes


__all__ = ["ANSWER_ROOM", "REPEAT", "EpisodeMixer", "MixedBatch", "repeat_episode"]
