"""Training a teacher from scratch: a BPE tokenizer and a Qwen3-architecture LM on the corpus mixed with synthetic
retrieval episodes, so that the teacher has in-context recall worth preserving.

Each micro-batch has `episode_rows` episodes (passkey / MQAR / NIAH, cycling, each drawn from its own seed) and the
rest corpus sequences. The loss is the mean next-token CE over the corpus rows plus the mean CE over the episodes'
answer tokens: the answers are a few tokens per row, and counted into one mean they would weigh almost nothing.

    train_teacher("tiny", "out/teacher-tiny")        # resumable: run again to continue after an interruption
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3ForCausalLM

from ..data import PackedSequences, SequenceLoader, corpus_info, iter_documents, tokenize_corpus
from ..data.sources import check_sources, spec_items
from ..data.synthetic import IGNORE_INDEX, WORDS, FillerTokens, generate, task_config
from ..data.synthetic.tokens import encode, special_prefix
from ..data.tokenizer import train_bpe_tokenizer
from ..distill.losses import chunked_ce
from ..distill.loop import TrainResult, last_eval, train, unsharded_copy
from ..distributed import barrier, is_main, rank0_first, rank_world, sharded
from ..provenance import device_name, provenance, weights_sha256
from .recipe import TeacherRecipe, teacher_recipe

EVAL_DEFAULT = "default"  # train_teacher's eval_data: held-out text chosen from the training data

ANSWER_ROOM = 32  # tokens left after an episode's prompt for its answer; the rest of the row is padding
REPEAT = "repeat"  # an episode task of the teacher only: a list of random words, then the same list again


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
class TeacherBatch:
    input_ids: torch.LongTensor  # (B, T): episode rows first, then corpus rows
    labels: torch.LongTensor  # (B, T): corpus rows = input_ids; episode rows = -100 except the answer
    episode_rows: int
    num_tokens: int

    def to(self, device) -> TeacherBatch:
        return TeacherBatch(self.input_ids.to(device), self.labels.to(device), self.episode_rows, self.num_tokens)


_WORKER_MIXER: EpisodeMixer | None = None  # the mixer a forked episode worker draws from


def _worker_episodes(indices: range) -> list[tuple[list[int], list[int]]]:
    return [_WORKER_MIXER.episode_tokens(n) for n in indices]


class EpisodeMixer:
    """Corpus micro-batches (a `SequenceLoader`) with `episode_rows` synthetic episodes placed in front of each.
    Episode n is a pure function of (recipe seed, n), so the state is the corpus loader's plus a counter.

    `workers` > 0 draws the episodes of the next `prefetch` batches in that many forked processes while the GPU
    trains (tokenizing ~20 episodes a step in Python took a fifth of a `small` step and left the GPU idle meanwhile);
    the batches are the same as with `workers=0` (tested), since an episode depends only on its index. Call `close()`
    when done (train_teacher does)."""

    def __init__(self, recipe: TeacherRecipe, corpus, tokenizer, filler: FillerTokens, rank: int = 0, world: int = 1,
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
        for length in range(self.recipe.episode_min_len, longest, 16):
            try:
                generate(task_config(name, length=length, **self.options.get(name, {})), 0, self.tokenizer,
                         self.filler)
                return length
            except ValueError:
                continue
        return longest

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
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
        if self._pending and self._pending[0][0] != start:  # the position moved (a resume): drop what was ahead
            self._pending.clear()
        step = self.rows * self.world
        while len(self._pending) < self.prefetch:
            first = start + step * len(self._pending)
            self._pending.append((first, self._pool.apply_async(_worker_episodes, (range(first, first + self.rows),))))
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

    def __next__(self) -> TeacherBatch:
        corpus = next(self.corpus)
        start = self.count + self.rank * self.rows
        episodes = self._episodes(start)
        self.count += self.rows * self.world
        ids = torch.cat([torch.tensor([e[0] for e in episodes]), corpus.input_ids]) if episodes else corpus.input_ids
        labels = torch.cat([torch.tensor([e[1] for e in episodes]), corpus.labels]) if episodes else corpus.labels
        return TeacherBatch(ids, labels, self.rows, ids.numel())

    def state_dict(self) -> dict:
        return {"corpus": self.corpus.state_dict(), "episodes": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.corpus.load_state_dict(state["corpus"])
        self.count = int(state["episodes"])  # prefetched batches for another position are dropped by _episodes


def episode_documents(tokenizer, filler: FillerTokens, n: int, seq_len: int, seed: int = 1,
                      recipe: TeacherRecipe | None = None) -> list[str]:
    """`n` episodes of the teacher's mixture (prompt + answer, at most `seq_len` tokens) as text documents: data
    for a conversion of a teacher trained on them. A student distilled on the corpus alone never sees the question
    format, and forgets it (the demo's hybrid answered every passkey prompt with corpus text). `seed` differs from
    the teacher's by default, so these are not the teacher's own training episodes."""
    base = recipe or teacher_recipe("tiny")
    recipe = dataclasses.replace(base, seed=seed, episode_rows=0,
                                 train=dataclasses.replace(base.train, seq_len=seq_len))
    mixer = EpisodeMixer(recipe, None, tokenizer, filler)
    docs = []
    for i in range(n):
        ids, _ = mixer.episode(i)
        docs.append(tokenizer.decode(ids[ids != tokenizer.pad_token_id], skip_special_tokens=True))
    return docs


def teacher_loss(model: Qwen3ForCausalLM, batch: TeacherBatch, chunk: int) -> tuple[torch.Tensor, dict[str, float]]:
    hidden = model.model(input_ids=batch.input_ids).last_hidden_state
    e = batch.episode_rows
    lm = chunked_ce(hidden[e:], model.lm_head, batch.labels[e:], chunk)
    if e == 0:  # metrics stay on the device: the loop reads them once per step (no sync between forward and backward)
        return lm, {"lm_loss": lm.detach()}
    answers = chunked_ce(hidden[:e], model.lm_head, batch.labels[:e], chunk)
    return lm + answers, {"lm_loss": lm.detach(), "answer_loss": answers.detach()}


def _weight_decay_groups(model, lr: float) -> list[dict]:
    """Decay matrices only; norms (and the tied embedding, counted once) are the usual exceptions."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    return [{"name": "decay", "params": decay, "lr": lr}, {"name": "no_decay", "params": rest, "lr": lr,
                                                            "weight_decay": 0.0}]


def heldout_evaluator(model, tokenizer, data, seq_len: int, windows: int = 16) -> Callable[[], dict[str, float]]:
    """`() -> {"heldout_loss", "heldout_ppl"}`: the model's mean next-token loss on `windows` consecutive windows of
    `seq_len` tokens of `data` (text the teacher does not train on). Beside the training loss it shows memorisation:
    a teacher that repeats its corpus (the built-in one is small) drives the one down while the other climbs."""
    from ..metrics.perplexity import heldout_lm, heldout_windows

    ids = heldout_windows(tokenizer, data, seq_len, windows)
    return lambda: heldout_lm(model, ids)


def default_eval_data(data) -> str | None:
    """`builtin:heldout` when the teacher reads only the train parts of the built-in text (`builtin:train`,
    `stdlib-code:train`, which leaves out the held-out modules' sources too), so that it never saw that text; else
    None (no held-out text is known)."""
    items = set(spec_items(data)) if data is not None else set()
    return "builtin:heldout" if items and items <= {"builtin:train", "stdlib-code:train"} else None


def train_teacher(size: str, out: str | Path, overrides: list[str] | None = None, data=None,
                  device: str | None = None, max_minutes: float | None = None,
                  data_workers: int | None = None, eval_data=EVAL_DEFAULT, eval_every: int | None = None,
                  eval_windows: int = 16) -> TrainResult:
    """Train (or resume) the teacher of `size`; writes the HF checkpoint to `out` once the recipe's tokens are done.
    `data_workers`: processes that draw the retrieval episodes ahead of the GPU (None: up to 8 on CUDA, where the
    GPU would otherwise wait for them, none on the CPU, where they would take cores from the training itself); the
    batches, and so the result, do not depend on it. `eval_data`: held-out text scored every `eval_every` steps
    (default: `builtin:heldout` when training on `builtin:train` and / or `stdlib-code:train`, else none; None: no evaluation) and recorded in
    the metrics and teacher.json; it does not change the weights. `eval_every` defaults to a twentieth of the run."""
    recipe = teacher_recipe(size, overrides)
    if data is not None:
        recipe.data = data
    if eval_data is EVAL_DEFAULT:
        eval_data = default_eval_data(recipe.data)
    if eval_data is not None:  # a missing held-out file fails now, before the tokenizer is trained
        check_sources(eval_data)
    out = Path(out)
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = run_dir / "tokenizer"

    def prepare() -> None:  # under torchrun rank 0 writes these; the others find them and check the recipe
        _check_same_recipe(run_dir / "recipe.json", recipe)
        if not (tok_dir / "tokenizer.json").is_file():
            # deterministic for the same corpus; kept so that a resumed run tokenizes the same way
            train_bpe_tokenizer(iter_documents(recipe.data), recipe.vocab_size).save_pretrained(tok_dir)

    rank0_first(prepare)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(recipe.seed)
    model = Qwen3ForCausalLM(recipe.model_config(tokenizer))
    if not sharded():  # under torchrun FSDP moves each rank's shards to the device
        model.to(device)
    if recipe.train.checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    corpus = tokenize_corpus(recipe.data, tokenizer)
    filler = FillerTokens.build(tokenizer, iter_documents(recipe.data))
    rank, world = rank_world()
    if data_workers is None:
        data_workers = min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0
    loader = EpisodeMixer(recipe, corpus, tokenizer, filler, rank, world, workers=data_workers)
    # under torchrun: FSDP2 with one all-gather group per decoder layer (the embedding, tied to the output head, and
    # the final norm are the root's)
    units = list(model.model.layers)
    evaluate = (None if eval_data is None
                else heldout_evaluator(model, tokenizer, eval_data, recipe.max_position_embeddings, eval_windows))
    if eval_every is None:
        eval_every = max(1, recipe.train.steps // 20)
    t0 = time.perf_counter()
    try:
        result = train(name="teacher", run_dir=run_dir, model=model,
                       param_groups=_weight_decay_groups(model, recipe.train.lr),
                       loss_fn=lambda b: teacher_loss(model, b, recipe.train.kl_chunk_tokens), loader=loader,
                       recipe=recipe.train, device=device,
                       max_seconds=None if max_minutes is None else 60 * max_minutes, lr_option="train.lr",
                       evaluate=evaluate, eval_every=eval_every, units=units)
    finally:
        loader.close()
    if result.finished:
        model = unsharded_copy(model)  # under torchrun: gathered onto rank 0 (every rank takes part)
    if result.finished and is_main():
        if recipe.train.checkpointing and not sharded():
            getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        record = {"size": size, "parameters": sum(p.numel() for p in model.parameters()),
                  "result": result.as_dict(), "recipe": recipe.to_dict(), "device": device_name(device),
                  "python": sys.version.split()[0], "torch": torch.__version__,
                  "data": recipe.data if recipe.data is not None else corpus_info(), "data_workers": data_workers,
                  "heldout": _last_eval(run_dir / "metrics.jsonl", eval_data),
                  "wall_seconds_last_run": time.perf_counter() - t0, **provenance()}
        record["weights_sha256"] = weights_sha256(out)  # what later runs check their teacher against
        (out / "teacher.json").write_text(json.dumps(record, indent=1))
    barrier()  # the other ranks return once the checkpoint is there
    return result


def _last_eval(metrics: Path, eval_data) -> dict | None:
    """The last held-out evaluation of the run (its final step) with the training corpus loss of that step."""
    row = last_eval(metrics)
    if eval_data is None or row is None:
        return None
    return {"data": eval_data, "step": row["step"], "loss": row["eval/heldout_loss"],
            "perplexity": row["eval/heldout_ppl"], "train_corpus_loss_that_step": row.get("lm_loss")}


def _check_same_recipe(path: Path, recipe: TeacherRecipe) -> None:
    new = recipe.to_dict()
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{path.parent.parent} holds a teacher trained with another recipe (differs in {diff}); "
                             "use a new --out or the same options to resume")
    else:
        path.write_text(json.dumps(new, indent=1))


__all__ = ["EpisodeMixer", "TeacherBatch", "episode_documents", "teacher_loss", "train_teacher"]
