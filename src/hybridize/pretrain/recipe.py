"""What `hybridize pretrain` trains: a model config (any `HybridConfig`, or the Qwen3 class our teachers use), the
training numbers (a `StageRecipe`) and the data mix (the corpus and the synthetic retrieval episodes placed in front
of each micro-batch), as one typed, serializable recipe.

A recipe file (JSON or YAML) has the same sections:

    {"model": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "vocab_size": 2048,
               "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
               "linear_mixers": "gla", "tie_word_embeddings": true},
     "train": {"tokens": 2000000, "seq_len": 256, "batch_size": 16, "micro_batch_size": 16, "lr": 1.2e-3},
     "episode_rows": 10, "data": "builtin:train", "seed": 0}

`model.model_type` picks the class: "hybridize" (default: `HybridConfig` / `HybridForCausalLM`) or "qwen3"
(`Qwen3Config` / `Qwen3ForCausalLM`, what `hybridize teacher` trains). `model.vocab_size` is also the size of the
BPE trained on the data; `model.max_position_embeddings` defaults to `train.seq_len`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..distill.recipe import StageRecipe, _coerce_floats, _parse_value

MODEL_TYPES = ("hybridize", "qwen3")
DEFAULT_EPISODE_TASKS = ("repeat", "passkey", "mqar", "niah_single_2")


@dataclass
class PretrainRecipe:
    model: dict  # config fields of the model class; "model_type" picks it (MODEL_TYPES, default "hybridize")
    train: StageRecipe
    # Data: the corpus mixed with synthetic retrieval episodes, `episode_rows` of each micro-batch (see
    # hybridize.pretrain.episodes: the answer tokens weigh as much as the corpus in the loss)
    episode_rows: int = 4
    episode_min_len: int = 64  # episode prompts range from this to the training length: short ones are learned first
    episode_tasks: tuple[str, ...] = DEFAULT_EPISODE_TASKS  # "repeat" and synthetic task names
    passkey_words: int = 5
    mqar_queries: int = 4
    seed: int = 0  # the data order, the episodes and the initial weights
    data: str | list[str] | None = "builtin:train"  # None: the whole built-in corpus
    name: str = "custom"  # the preset or file it came from (recorded, not used)

    @property
    def model_type(self) -> str:
        return self.model.get("model_type", "hybridize")

    def config_fields(self) -> dict:
        fields = {k: v for k, v in self.model.items() if k != "model_type"}
        fields.setdefault("max_position_embeddings", self.train.seq_len)
        return fields

    def model_config(self, tokenizer=None):
        """The model's config; the special token ids come from `tokenizer` (None: left unset, for counting)."""
        ids = {} if tokenizer is None else dict(bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id)
        return self.model_config_class()(**self.config_fields(), **ids)

    def model_class(self):
        if self.model_type == "qwen3":
            from transformers import Qwen3ForCausalLM

            return Qwen3ForCausalLM
        from ..models.modeling import HybridForCausalLM

        return HybridForCausalLM

    def config_field_names(self) -> set[str]:
        """The fields the model's config class takes (a typo in a recipe would otherwise be kept and ignored)."""
        return {f.name for f in dataclasses.fields(self.model_config_class())} - {"transformers_version", "architectures"}

    def model_config_class(self):
        if self.model_type == "qwen3":
            from transformers import Qwen3Config

            return Qwen3Config
        from ..models.configuration import HybridConfig

        return HybridConfig

    def parameters(self) -> int:
        """The model's parameter count (tied weights once), built on the meta device: no memory, no init."""
        import torch

        with torch.device("meta"):
            model = self.model_class()(self.model_config())
        return sum(p.numel() for p in model.parameters())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        d["episode_tasks"] = list(d["episode_tasks"])
        return d

    def validate(self) -> None:
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a mapping of config fields, got {type(self.model).__name__}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model.model_type={self.model_type!r}; allowed: {list(MODEL_TYPES)}")
        vocab = self.model.get("vocab_size")
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 256:
            raise ValueError(f"model.vocab_size must be an integer >= 256 (the size of the BPE trained on the data), "
                             f"got {vocab!r}")
        allowed = self.config_field_names()
        bad = sorted(set(self.model) - allowed - {"model_type"})
        if bad:
            raise ValueError(f"unknown field model.{bad[0]} of model_type {self.model_type!r}; allowed: "
                             f"{', '.join(sorted(allowed))}")
        self.train.validate("train")
        try:
            config = self.model_config()  # every config field checks itself (HybridConfig names the field)
        except TypeError as err:
            raise ValueError(f"model: {err}") from None
        longest = getattr(config, "max_position_embeddings", None)
        if longest is not None and longest < self.train.seq_len:
            raise ValueError(f"model.max_position_embeddings={longest} is shorter than train.seq_len="
                             f"{self.train.seq_len}")
        check_episode_mix(self)


def check_episode_mix(recipe) -> None:
    """Validate the data-mix fields a `PretrainRecipe` and a `TeacherRecipe` share (normalising episode_tasks given
    as a comma-separated string)."""
    if not 16 <= recipe.episode_min_len <= recipe.train.seq_len - 32:
        raise ValueError(f"episode_min_len must be in [16, seq_len - 32 = {recipe.train.seq_len - 32}], "
                         f"got {recipe.episode_min_len}")
    from ..data.synthetic import TASKS

    if isinstance(recipe.episode_tasks, str):
        recipe.episode_tasks = tuple(t for t in recipe.episode_tasks.split(",") if t)
    recipe.episode_tasks = tuple(recipe.episode_tasks)
    bad = [t for t in recipe.episode_tasks if t != "repeat" and t not in TASKS]
    if bad or not recipe.episode_tasks:
        raise ValueError(f"episode_tasks must be a non-empty comma-separated list of 'repeat' and synthetic tasks "
                         f"{sorted(TASKS)}, got {list(recipe.episode_tasks)!r}")
    if not 0 <= recipe.episode_rows < recipe.train.micro_batch_size:
        raise ValueError(f"episode_rows must be in [0, micro_batch_size={recipe.train.micro_batch_size}), "
                         f"got {recipe.episode_rows}")


_TOP = {f.name for f in dataclasses.fields(PretrainRecipe)} - {"model", "train"}


def recipe_from_dict(d: dict, name: str = "custom") -> PretrainRecipe:
    """A recipe from its sections (`to_dict`'s layout); unknown keys are refused by name."""
    if not isinstance(d, dict):
        raise ValueError(f"a pretrain recipe is a mapping with 'model' and 'train' sections, got {type(d).__name__}")
    bad = sorted(set(d) - _TOP - {"model", "train"})
    if bad:
        raise ValueError(f"unknown pretrain recipe field {bad[0]!r}; allowed: {sorted(_TOP | {'model', 'train'})}")
    for section in ("model", "train"):
        if not isinstance(d.get(section), dict):
            raise ValueError(f"a pretrain recipe needs a {section!r} section (a mapping)")
    train_fields = {f.name for f in dataclasses.fields(StageRecipe)}
    bad = sorted(set(d["train"]) - train_fields)
    if bad:
        raise ValueError(f"unknown field train.{bad[0]}; allowed: {sorted(train_fields)}")
    train = dict(_coerce_floats(d["train"], "train."))
    if "betas" in train:
        train["betas"] = tuple(train["betas"])
    try:
        train = StageRecipe(**train)
    except TypeError as err:
        raise ValueError(f"train: {err}") from None
    top = {k: v for k, v in d.items() if k in _TOP}
    top.setdefault("name", name)
    return PretrainRecipe(model=dict(d["model"]), train=train, **top)


def read_recipe_file(path: str | Path) -> dict:
    """A recipe file (.json, .yaml / .yml) as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe file {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def apply_overrides(recipe: PretrainRecipe, overrides: list[str] | None) -> PretrainRecipe:
    """`key=value` overrides: `train.lr=1e-3`, `model.num_hidden_layers=6`, `episode_rows=4`. Returns a new recipe."""
    recipe = copy.deepcopy(recipe)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value (e.g. train.lr=1e-3), got {item!r}")
        value = _parse_value(value)
        section, dot, name = key.partition(".")
        if dot and section == "model":
            recipe.model[name] = value
        elif dot and section == "train":
            if name not in {f.name for f in dataclasses.fields(StageRecipe)}:
                raise ValueError(f"unknown pretrain recipe field {key!r}; allowed: train.<{', '.join(sorted(f.name for f in dataclasses.fields(StageRecipe)))}>")
            setattr(recipe.train, name, tuple(value) if name == "betas" else value)
        elif not dot and key in _TOP:
            setattr(recipe, key, value)
        else:
            raise ValueError(f"unknown pretrain recipe field {key!r}; allowed: model.<config field>, train.<field>, "
                             f"{', '.join(sorted(_TOP))}")
    return recipe


__all__ = ["MODEL_TYPES", "PretrainRecipe", "apply_overrides", "check_episode_mix", "read_recipe_file",
           "recipe_from_dict"]
