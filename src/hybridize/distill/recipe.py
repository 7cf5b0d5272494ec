"""Recipes: the numbers of a conversion (token budgets, lengths, batch sizes, LRs, schedules) as typed, validated
dataclasses, read from YAML files with `--set key=value` overrides. Built-in recipes live in `hybridize/recipes/`.

    recipe = load_recipe("smoke", ["distill.lr=3e-5", "budget=0.125"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SCHEDULES = ("cosine", "constant")
STAGES = ("align", "select", "distill", "finetune")
MIXER_CHOICES = ("lightning", "gated_deltanet", "gla")


@dataclass
class StageRecipe:
    tokens: int  # training tokens of the stage (steps = tokens // (batch_size * seq_len), at least 1)
    seq_len: int
    batch_size: int  # sequences per optimizer step, over all processes
    micro_batch_size: int  # sequences per forward pass on one process (gradient accumulation covers the rest)
    lr: float  # peak LR (for distill: of the new parts: linear mixers and attention output gates)
    min_lr: float = 0.0  # cosine floor
    lr_pretrained: float | None = None  # distill: peak LR of what came from the teacher; None = lr
    schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    checkpointing: bool = False  # activation checkpointing of the student's blocks
    compile: bool = False  # torch.compile the student's blocks
    save_every: int = 100  # steps between checkpoints (and one at the end)
    kl_chunk_tokens: int = 1024  # tokens per chunk of the full-vocabulary KL / CE

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    def validate(self, stage: str, world_size: int = 1) -> None:
        for name in ("tokens", "seq_len", "batch_size", "micro_batch_size", "save_every", "kl_chunk_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{stage}.{name} must be a positive integer, got {value!r}")
        if self.batch_size % (self.micro_batch_size * world_size):
            raise ValueError(f"{stage}.batch_size={self.batch_size} must be a multiple of micro_batch_size="
                             f"{self.micro_batch_size} x {world_size} process(es)")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip") + (("lr_pretrained",) if self.lr_pretrained is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{stage}.{name} must be a number >= 0, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{stage}.schedule={self.schedule!r}; allowed: {list(SCHEDULES)}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"{stage}.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{stage}.betas must be two numbers in [0, 1), got {self.betas!r}")


@dataclass
class Recipe:
    align: StageRecipe
    distill: StageRecipe
    finetune: StageRecipe
    name: str = "custom"
    mixer: str = "lightning"
    budget: float | int | str = 0.25  # attention layers kept: a fraction of the layers or a count
    selector: str = "uniform"
    keep_layers: list[int] | None = None  # explicit attention layers (overrides selector and budget)
    hype: bool = True  # HyPE: NoPE + query scaling + output gate in attention, RoPE in the mixers
    hype_a: float = 500.0
    conv_size: int = 0  # short convolution in the mixers (0 = off)
    seed: int = 0
    document_masking: bool = True  # packed documents do not see each other (cu_seqlens)
    data: str | list[str] | None = None  # default data spec when --data is not given (None = built-in corpus)
    notes: str = ""

    def validate(self, world_size: int = 1) -> None:
        if self.mixer not in MIXER_CHOICES:
            raise ValueError(f"mixer={self.mixer!r}; allowed: {list(MIXER_CHOICES)}")
        if not isinstance(self.hype_a, (int, float)) or self.hype_a <= 1:
            raise ValueError(f"hype_a must be > 1, got {self.hype_a!r}")
        if not isinstance(self.conv_size, int) or self.conv_size < 0:
            raise ValueError(f"conv_size must be an integer >= 0, got {self.conv_size!r}")
        if self.keep_layers is not None and (not isinstance(self.keep_layers, list)
                                             or not all(isinstance(i, int) for i in self.keep_layers)):
            raise ValueError(f"keep_layers must be a list of layer indices, got {self.keep_layers!r}")
        for stage in ("align", "distill", "finetune"):
            getattr(self, stage).validate(stage, world_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def builtin_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("hybridize.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """A built-in recipe by name ("smoke", "halo-qwen3-1.7b", ...) or a YAML file; then `key=value` overrides
    (dotted keys reach into stages: "distill.lr=3e-5"; values are parsed as YAML)."""
    name_or_path = name_or_path or "smoke"
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {path}")
        text = path.read_text()
    elif str(name_or_path) in builtin_recipes():
        text = resources.files("hybridize.recipes").joinpath(f"{name_or_path}.yaml").read_text()
    else:
        raise ValueError(f"unknown recipe {str(name_or_path)!r}: give a .yaml file or one of {builtin_recipes()}")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {name_or_path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {name_or_path} must be a mapping of fields, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value (e.g. distill.lr=3e-5), got {item!r}")
        target = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: {p} is not a section")
        target[leaf] = _parse_value(value)
    return recipe_from_dict(raw)


def _parse_value(text: str) -> Any:
    """A command-line value: a number where it reads as one (YAML 1.1 reads "3e-5" as a string), else YAML."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


_FLOAT_FIELDS = ("lr", "min_lr", "lr_pretrained", "weight_decay", "grad_clip", "hype_a")


def _coerce_floats(section: dict[str, Any]) -> dict[str, Any]:
    """YAML reads 1e-4 (no dot) as a string; accept it for the float fields."""
    out = dict(section)
    for name in _FLOAT_FIELDS:
        if isinstance(out.get(name), str):
            try:
                out[name] = float(out[name])
            except ValueError:
                raise ValueError(f"{name} must be a number, got {out[name]!r}") from None
    return out


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    raw = _coerce_floats(raw)
    top = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ValueError(f"unknown recipe field(s) {unknown}; allowed: {sorted(top)}")
    stage_fields = {f.name for f in dataclasses.fields(StageRecipe)}
    for stage in ("align", "distill", "finetune"):
        section = raw.get(stage)
        if not isinstance(section, dict):
            raise ValueError(f"recipe needs a '{stage}' section with the stage's numbers")
        bad = sorted(set(section) - stage_fields)
        if bad:
            raise ValueError(f"unknown field(s) {[f'{stage}.{b}' for b in bad]}; allowed: {sorted(stage_fields)}")
        missing = [f.name for f in dataclasses.fields(StageRecipe)
                   if f.default is dataclasses.MISSING and f.name not in section]
        if missing:
            raise ValueError(f"recipe section '{stage}' misses {missing}")
        section = _coerce_floats(section)
        if "betas" in section:
            section["betas"] = tuple(section["betas"])
        raw[stage] = StageRecipe(**section)
    recipe = Recipe(**raw)
    recipe.validate()
    return recipe


def save_recipe(recipe: Recipe, path: Path) -> None:
    data = recipe.to_dict()
    for stage in ("align", "distill", "finetune"):
        data[stage]["betas"] = list(data[stage]["betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


__all__ = ["Recipe", "StageRecipe", "STAGES", "builtin_recipes", "load_recipe", "recipe_from_dict", "save_recipe"]
