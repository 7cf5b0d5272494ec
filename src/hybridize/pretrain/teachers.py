"""Teachers we train ourselves: Qwen3-architecture Transformers (GQA, q/k norm, RoPE, tied embeddings), one
recipe per size. `tiny` trains on 2 CPU cores in minutes; `small` and `base` are GPU recipes, trained in runs of
at most `--max-minutes` that resume where the last one stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..distill.recipe import StageRecipe, _parse_value
from .recipe import PretrainRecipe, check_episode_mix


@dataclass
class TeacherRecipe:
    size: str
    # Model (HF Qwen3Config fields)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int  # = the training length: evaluation reports longer contexts as beyond it
    # Training
    train: StageRecipe
    # Data: the corpus mixed with synthetic retrieval episodes, `episode_rows` of each micro-batch
    episode_rows: int = 4
    episode_min_len: int = 64  # episode prompts range from this to the training length: short ones are learned first
    # "repeat": random words, then the same words again (hybridize/pretrain/episodes.py); the others are synthetic tasks
    episode_tasks: tuple[str, ...] = ("repeat", "passkey", "mqar", "niah_single_2")
    passkey_words: int = 5  # the evaluation's defaults (PasskeyConfig, MQARConfig)
    mqar_queries: int = 4
    seed: int = 0
    # builtin:train leaves builtin:heldout (one document in eight) as text the teacher never saw, for perplexity and
    # haystacks; None: the whole built-in corpus
    data: str | list[str] | None = "builtin:train"

    def model_config(self, tokenizer):
        """The Qwen3Config of this teacher, special token ids from `tokenizer`."""
        return self.pretrain_recipe().model_config(tokenizer)

    def pretrain_recipe(self) -> PretrainRecipe:
        """This teacher as `hybridize pretrain` trains it (preset `teacher-<size>`): the Qwen3 class of
        `model_config`, the same training numbers and data mix."""
        model = {"model_type": "qwen3", **{f: getattr(self, f) for f in _MODEL_FIELDS}, "tie_word_embeddings": True,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
        mix = {f: getattr(self, f) for f in ("episode_rows", "episode_min_len", "episode_tasks", "passkey_words",
                                             "mqar_queries", "seed", "data")}
        return PretrainRecipe(model=model, train=dataclasses.replace(self.train), name=f"teacher-{self.size}", **mix)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        d["episode_tasks"] = list(d["episode_tasks"])
        return d


_MODEL_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings")


def _recipe(size: str, model: dict, train: dict, **data) -> TeacherRecipe:
    return TeacherRecipe(size=size, **model, train=StageRecipe(**train), **data)


SIZES = {
    # 1.0M parameters: ~11K tokens/s on 2 CPU cores (18 min). lr 1.2e-3: with it the teacher retrieved passkey 44% /
    # NIAH 83% at 256 on held-out filler, with 3e-3 6% / 50% (results/cpu-demo/; the small teacher agrees: a lower LR
    # learns retrieval sooner)
    "tiny": lambda: _recipe(
        "tiny",
        dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=256),
        dict(tokens=12_000_000, seq_len=256, batch_size=16, micro_batch_size=16, lr=1.2e-3, min_lr=1.2e-4,
             warmup_steps=100, weight_decay=0.1, save_every=100),
        episode_rows=10),
    # 67M parameters, >= 12 layers. Measured on an H200 (results/gpu/teachers-small/): 3,051 steps, 100M tokens in
    # 589 s; passkey 88% and NIAH 83% exact match at 1024 on held-out filler, MQAR 0%. Retrieval is learned late (the
    # answer loss falls from ~1.7 to 0.1 between steps ~1,000 and ~2,500), so optimizer steps count more than tokens:
    # batch 128 with 8 of 32 rows episodes and lr 1.5e-3 (495 steps in 65M tokens) learned no retrieval
    # (results/archive/gpu/teacher-small/); batch 32, 20 rows episodes and lr 6e-4 did.
    "small": lambda: _recipe(
        "small",
        dict(vocab_size=16384, hidden_size=640, intermediate_size=1792, num_hidden_layers=12, num_attention_heads=10,
             num_key_value_heads=5, head_dim=64, max_position_embeddings=1024),
        dict(tokens=100_000_000, seq_len=1024, batch_size=32, micro_batch_size=32, lr=6e-4, min_lr=6e-5,
             warmup_steps=305, weight_decay=0.1, save_every=200),
        episode_rows=20, passkey_words=5, mqar_queries=4,
        # the stdlib's source beside builtin:train (~6x the text): on builtin:train alone the recipe memorised its
        # corpus (held-out perplexity 72 -> 244 over the run); with both it went 3.58 -> 3.79 and retrieved better,
        # passkey and NIAH 100% at 1024 (H200, one seed: results/gpu/mixers-small-code-teacher/). builtin:heldout
        # stays unseen.
        data=["builtin:train", "stdlib-code:train"]),
    # 316M parameters, >= 24 layers
    "base": lambda: _recipe(
        "base",
        dict(vocab_size=32768, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
             num_key_value_heads=8, head_dim=64, max_position_embeddings=2048),
        dict(tokens=2_000_000_000, seq_len=2048, batch_size=128, micro_batch_size=16, lr=1e-3, min_lr=1e-4,
             warmup_steps=500, weight_decay=0.1, save_every=200, checkpointing=True),
        episode_rows=4, passkey_words=5, mqar_queries=4),
}


def teacher_recipe(size: str, overrides: list[str] | None = None) -> TeacherRecipe:
    """The recipe of a built-in size with `key=value` overrides (train.* reaches the training numbers)."""
    if size not in SIZES:
        raise ValueError(f"unknown teacher size {size!r}; allowed: {list(SIZES)}")
    recipe = SIZES[size]()
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value (e.g. train.lr=1e-3), got {item!r}")
        target, name = recipe, key
        if key.startswith("train."):
            target, name = recipe.train, key[len("train."):]
        if name not in {f.name for f in dataclasses.fields(target)}:
            allowed = sorted(f.name for f in dataclasses.fields(TeacherRecipe)) + [
                f"train.{f.name}" for f in dataclasses.fields(StageRecipe)]
            raise ValueError(f"unknown teacher recipe field {key!r}; allowed: {allowed}")
        setattr(target, name, _parse_value(value))
    recipe.train.validate("train")
    check_episode_mix(recipe)
    return recipe


__all__ = ["SIZES", "TeacherRecipe", "teacher_recipe"]
