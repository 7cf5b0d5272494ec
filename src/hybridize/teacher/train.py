"""Training a teacher from scratch: the Transformer case of `hybridize pretrain` (`hybridize.pretrain`). A teacher
is a Qwen3-architecture LM (GQA, q/k norm, RoPE, tied embeddings) trained, with a BPE of its own, on the corpus mixed
with synthetic retrieval episodes (`hybridize.pretrain.episodes`), so that it has in-context recall worth preserving;
its sizes are `TeacherRecipe`s, each the pretrain preset `teacher-<size>`.

    train_teacher("tiny", "out/teacher-tiny")        # resumable: run again to continue after an interruption
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.synthetic import FillerTokens
from ..distill.loop import TrainResult
from ..pretrain.episodes import EpisodeMixer, repeat_episode
from ..pretrain.train import EVAL_DEFAULT, default_eval_data, pretrain
from .recipe import TeacherRecipe, teacher_recipe


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


def train_teacher(size: str, out: str | Path, overrides: list[str] | None = None, data=None,
                  device: str | None = None, max_minutes: float | None = None,
                  data_workers: int | None = None, eval_data=EVAL_DEFAULT, eval_every: int | None = None,
                  eval_windows: int = 16) -> TrainResult:
    """Train (or resume) the teacher of `size`: `pretrain` of its recipe (`TeacherRecipe.pretrain_recipe()`, the
    Qwen3 class), writing `teacher.json` with the teacher recipe it was given. `data` replaces the recipe's data; the
    other arguments are `pretrain`'s."""
    recipe = teacher_recipe(size, overrides)
    if data is not None:
        recipe.data = data
    return pretrain(recipe.pretrain_recipe(), out, device=device, max_minutes=max_minutes, data_workers=data_workers,
                    eval_data=eval_data, eval_every=eval_every, eval_windows=eval_windows, record_name="teacher.json",
                    record_extra={"size": size}, recipe_record=recipe.to_dict())


__all__ = ["EVAL_DEFAULT", "EpisodeMixer", "default_eval_data", "episode_documents", "repeat_episode", "train_teacher"]
