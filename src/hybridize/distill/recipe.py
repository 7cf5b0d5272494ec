"""Recipes: the numbers of a conversion (token budgets, lengths, batch sizes, LRs, schedules) as typed, validated
dataclasses, read from YAML files with `--set key=value` overrides. Built-in recipes live in `hybridize/recipes/`.

    recipe = load_recipe("smoke", ["distill.lr=3e-5", "budget=0.125"])

The selector a recipe names is checked against `selectors`, the names it may choose from: the selection registry
sits above this module (its selectors train with the loop that reads these recipes), so the caller passes them in;
`hybridize.pipeline.load_recipe` passes `hybridize.selection.SELECTORS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..names import INTRA_FUSIONS, LINEAR_MIXER_NAMES

SCHEDULES = ("cosine", "constant")
STAGES = ("align", "select", "distill", "finetune")
MIXER_CHOICES = LINEAR_MIXER_NAMES
FUSIONS = ("inter", "intra")


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
    checkpointing: bool = False  # activation checkpointing of the student's blocks (align: of each mixer)
    compile: bool = False  # torch.compile the student's blocks
    save_every: int = 100  # steps between checkpoints (and one at the end)
    kl_chunk_tokens: int = 1024  # tokens per chunk of the full-vocabulary KL / CE
    # finetune only: the weight of KL(teacher || student) in its loss, (1 - kl_weight) x CE + kl_weight x KL; 0 is
    # plain next-token CE without the teacher (the default, HALO's stage 3), 1 is distill's loss at finetune's length
    kl_weight: float = 0.0
    # deterministic kernels only (torch.use_deterministic_algorithms): on CUDA the same seed then gives the same
    # weights, at some speed; without it GPU reductions differ from run to run (two H200 runs of the `small` teacher
    # parted at step 2). The CPU is deterministic either way. fla's Triton kernels are outside its reach.
    deterministic: bool = False

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
        for name in ("checkpointing", "compile", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{stage}.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.kl_weight, (int, float)) or isinstance(self.kl_weight, bool) \
                or not 0 <= self.kl_weight <= 1:
            raise ValueError(f"{stage}.kl_weight must be a number in [0, 1], got {self.kl_weight!r}")
        if self.kl_weight and stage != "finetune":
            raise ValueError(f"{stage}.kl_weight={self.kl_weight!r}: only finetune reads it (allowed here: 0)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{stage}.betas must be two numbers in [0, 1), got {self.betas!r}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SelectRecipe:
    """The numbers of the layer selectors (`hybridize select --selector NAME`). The defaults run every selector in
    seconds on a tiny teacher (the smoke recipe); `halo-qwen3-1.7b.yaml` has the published ones where they exist.
    Budgets in tokens count what the selector runs through its models."""

    eval_data: str | list[str] | None = None  # text for HALO's LM score and KL-guided's KL; None = the conversion's
    # halo: R = mean exact match on synthetic recall tasks, C = mean log-likelihood per token of held-out text
    halo_tasks: list[str] = field(default_factory=lambda: ["passkey"])  # synthetic task names (hybridize.data.synthetic)
    halo_task_options: dict = field(default_factory=dict)  # task_config overrides for every task, e.g. num_keys
    halo_lengths: list[int] = field(default_factory=lambda: [256])  # prompt lengths (tokens) of the recall examples
    halo_examples: int = 4  # recall examples per task and length
    halo_lm_sequences: int = 4  # held-out text windows for C
    halo_lm_seq_len: int = 128
    halo_batch_tokens: int = 8192  # tokens per evaluation batch
    # kl_guided: one short stage-2 distillation per layer (and one all-linear baseline), then KL on held-out text
    kl_tokens: int = 1024  # training tokens of each short distillation
    kl_seq_len: int = 64
    kl_batch_size: int = 4
    kl_micro_batch_size: int = 4
    kl_lr: float = 1.0e-3  # peak LR (cosine to kl_min_lr) for every student parameter
    kl_min_lr: float = 1.0e-5
    kl_eval_sequences: int = 8  # held-out sequences of kl_seq_len tokens the KL is measured on
    # flashmorph: gates a_l of the morphable model trained on synthetic passkey data
    flashmorph_tokens: int = 16384
    flashmorph_lengths: list[int] = field(default_factory=lambda: [4096])  # prompt lengths, cycled per micro-batch
    flashmorph_micro_batch_tokens: int = 4096  # examples of one length packed into one row of about this many tokens
    flashmorph_batch_size: int = 1  # micro-batches per optimizer step
    flashmorph_lr: float = 2.0e-2  # gate LR, cosine down to flashmorph_min_lr (FlashMorph: 2e-2 -> 2e-3)
    flashmorph_min_lr: float = 2.0e-3
    flashmorph_lambda: float = 0.1  # weight of sum_l a_l (FlashMorph: 0.1)
    flashmorph_task: str = "passkey_flashmorph"  # 10 passkeys x 32 words, one asked (FlashMorph's data)
    flashmorph_task_options: dict = field(default_factory=dict)
    # intra-layer selections (fusion=intra): every layer keeps at least this many KV-head groups, the selector's
    # best of that layer, the rest of the budget going to the best groups anywhere; 0: the best anywhere
    groups_per_layer: int = 0

    def validate(self) -> None:
        from ..data.synthetic import TASKS, task_config

        ints = ("halo_examples", "halo_lm_sequences", "halo_lm_seq_len", "halo_batch_tokens", "kl_tokens",
                "kl_seq_len", "kl_batch_size", "kl_micro_batch_size", "kl_eval_sequences", "flashmorph_tokens",
                "flashmorph_micro_batch_tokens", "flashmorph_batch_size")
        for name in ints:
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"select.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (isinstance(self.groups_per_layer, int) and not isinstance(self.groups_per_layer, bool)
                and self.groups_per_layer >= 0):
            raise ValueError(f"select.groups_per_layer must be an integer >= 0 (KV-head groups every layer keeps), "
                             f"got {self.groups_per_layer!r}")
        for name in ("kl_lr", "kl_min_lr", "flashmorph_lr", "flashmorph_min_lr", "flashmorph_lambda"):
            if not _number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"select.{name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.halo_lm_seq_len < 2:
            raise ValueError(f"select.halo_lm_seq_len must be >= 2 (a token predicted from another), got "
                             f"{self.halo_lm_seq_len}")
        if self.kl_batch_size % self.kl_micro_batch_size:
            raise ValueError(f"select.kl_batch_size={self.kl_batch_size} must be a multiple of "
                             f"select.kl_micro_batch_size={self.kl_micro_batch_size}")
        for name in ("halo_lengths", "flashmorph_lengths"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value or not all(_positive_int(n) for n in value):
                raise ValueError(f"select.{name} must be a non-empty list of positive token counts, got {value!r}")
        if not isinstance(self.halo_tasks, list) or not self.halo_tasks:
            raise ValueError(f"select.halo_tasks must be a non-empty list of task names; allowed: {sorted(TASKS)}")
        for prefix, tasks, lengths in (("halo", self.halo_tasks, self.halo_lengths),
                                       ("flashmorph", [self.flashmorph_task], self.flashmorph_lengths)):
            options = getattr(self, f"{prefix}_task_options")
            if not isinstance(options, dict):
                raise ValueError(f"select.{prefix}_task_options must be a mapping of task options, got {options!r}")
            if "length" in options:
                raise ValueError(f"select.{prefix}_task_options cannot set length; use select.{prefix}_lengths")
            for task in tasks:
                if task not in TASKS:
                    raise ValueError(f"select.{prefix}_task{'s' if prefix == 'halo' else ''} names {task!r}; "
                                     f"allowed: {sorted(TASKS)}")
                try:  # bad option names or values fail now, not after an hour of stage 1
                    task_config(task, length=max(lengths), **options)
                except ValueError as err:
                    raise ValueError(f"select.{prefix}_task_options: {err}") from None
        if self.eval_data is not None and not isinstance(self.eval_data, (str, list)):
            raise ValueError(f"select.eval_data must be a data spec (a path, a name or a list of them) or null, "
                             f"got {self.eval_data!r}")


@dataclass
class Recipe:
    align: StageRecipe
    distill: StageRecipe
    finetune: StageRecipe
    name: str = "custom"
    mixer: str = "lightning"
    budget: float | int | str = 0.25  # attention kept: a fraction of the layers (of the KV-head groups with
    # fusion intra) or a count
    selector: str = "uniform"
    keep_layers: list[int] | None = None  # explicit attention layers (overrides selector and budget)
    # "inter": whole layers keep attention; "intra": KV-head groups do, and layers split their heads between
    # attention and the mixer (hybridize.mixers.intra), joined by intra_fusion
    fusion: str = "inter"
    intra_fusion: str = "concat"
    intra_branch_norm: bool = True
    hype: bool = True  # HyPE: NoPE + query scaling + output gate in attention, RoPE in the mixers
    hype_a: float = 500.0
    conv_size: int = 0  # short convolution in the mixers (0 = off)
    seed: int = 0
    document_masking: bool = True  # packed documents do not see each other (cu_seqlens)
    data: str | list[str] | None = None  # default data spec when --data is not given (None = built-in corpus)
    notes: str = ""
    select: SelectRecipe = field(default_factory=SelectRecipe)  # the selectors' numbers (optional section)

    def validate(self, world_size: int = 1, selectors: Collection[str] | None = None) -> None:
        """Check every field; `selectors`: the selector names allowed (None: the name is checked where the selector
        is looked up, `hybridize.selection.get_selector`)."""
        if self.mixer not in MIXER_CHOICES:
            raise ValueError(f"mixer={self.mixer!r}; allowed: {list(MIXER_CHOICES)}")
        if not isinstance(self.hype_a, (int, float)) or self.hype_a <= 1:
            raise ValueError(f"hype_a must be > 1, got {self.hype_a!r}")
        if not isinstance(self.conv_size, int) or self.conv_size < 0:
            raise ValueError(f"conv_size must be an integer >= 0, got {self.conv_size!r}")
        if self.keep_layers is not None and (not isinstance(self.keep_layers, list)
                                             or not all(isinstance(i, int) for i in self.keep_layers)):
            raise ValueError(f"keep_layers must be a list of layer indices, got {self.keep_layers!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}; allowed: {list(FUSIONS)}")
        if self.intra_fusion not in INTRA_FUSIONS:
            raise ValueError(f"intra_fusion={self.intra_fusion!r}; allowed: {list(INTRA_FUSIONS)}")
        if not isinstance(self.intra_branch_norm, bool):
            raise ValueError(f"intra_branch_norm must be true or false, got {self.intra_branch_norm!r}")
        if self.fusion == "intra" and self.keep_layers is not None:
            raise ValueError("keep_layers names whole layers (fusion=inter); with fusion=intra choose KV-head groups "
                             "with a selector and a budget")
        self._validate_selection(selectors)
        for stage in ("align", "distill", "finetune"):
            getattr(self, stage).validate(stage, world_size)
        self.select.validate()

    def _validate_selection(self, selectors: Collection[str] | None) -> None:
        if selectors is not None and self.selector not in selectors:
            raise ValueError(f"unknown selector {self.selector!r}; available: {sorted(selectors)}")
        # The budget's upper end depends on the teacher's depth, checked when the selection runs (resolve_budget).
        try:
            value = float(str(self.budget).strip())
        except ValueError:
            value = None
        if value is None or not (0 < value < 1 or (value >= 1 and value == int(value))):
            raise ValueError(f"budget must be a fraction in (0, 1) or a whole layer count >= 1, got {self.budget!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def builtin_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("hybridize.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path | None = None, overrides: list[str] | None = None,
                selectors: Collection[str] | None = None) -> Recipe:
    """A built-in recipe by name ("smoke", "halo-qwen3-1.7b", ...) or a YAML file; then `key=value` overrides
    (dotted keys reach into stages: "distill.lr=3e-5"; values are parsed as YAML). `selectors`: as in
    `Recipe.validate`."""
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
    return recipe_from_dict(raw, selectors)


def _parse_value(text: str) -> Any:
    """A command-line value: a number where it reads as one (YAML 1.1 reads "3e-5" as a string), else YAML."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


_FLOAT_FIELDS = ("lr", "min_lr", "lr_pretrained", "weight_decay", "grad_clip", "hype_a", "kl_lr", "kl_min_lr",
                 "flashmorph_lr", "flashmorph_min_lr", "flashmorph_lambda")


def _coerce_floats(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """YAML reads 1e-4 (no dot) as a string; accept it for the float fields."""
    out = dict(section)
    for name in _FLOAT_FIELDS:
        if isinstance(out.get(name), str):
            try:
                out[name] = float(out[name])
            except ValueError:
                raise ValueError(f"{prefix}{name} must be a number, got {out[name]!r}") from None
    return out


def recipe_from_dict(raw: dict[str, Any], selectors: Collection[str] | None = None) -> Recipe:
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
    raw["select"] = _select_recipe(raw.get("select"))
    recipe = Recipe(**raw)
    recipe.validate(selectors=selectors)
    return recipe


def _select_recipe(section: Any) -> SelectRecipe:
    """The optional `select` section (missing or null: the defaults)."""
    if section is None:
        return SelectRecipe()
    if isinstance(section, SelectRecipe):
        return section
    if not isinstance(section, dict):
        raise ValueError(f"recipe section 'select' must be a mapping of fields, got {type(section).__name__}")
    allowed = {f.name for f in dataclasses.fields(SelectRecipe)}
    bad = sorted(set(section) - allowed)
    if bad:
        raise ValueError(f"unknown field(s) {[f'select.{b}' for b in bad]}; allowed: {sorted(allowed)}")
    return SelectRecipe(**_coerce_floats(section, "select."))


def save_recipe(recipe: Recipe, path: Path) -> None:
    data = recipe.to_dict()
    for stage in ("align", "distill", "finetune"):
        data[stage]["betas"] = list(data[stage]["betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


__all__ = ["Recipe", "SelectRecipe", "StageRecipe", "STAGES", "builtin_recipes", "load_recipe", "recipe_from_dict", "save_recipe"]
