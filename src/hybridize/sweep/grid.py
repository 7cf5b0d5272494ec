"""What a sweep trains: the grid of cells (mixer x ratio x fusion x placement x seed) and each cell's recipe.

Every cell is the size's recipe (`hybridize.pretrain.presets`) with the `--set` overrides and its own layer mix
(`hybridize.pretrain.layout`: "N:1" = N linear layers per attention layer, placed `uniform` or `middle`; "intra"
spreads the same number of KV-head groups over every layer). Cells of one seed differ in nothing else: the same
tokenizer, tokens, data order and episodes (all functions of the seed), the same number of steps.

Cells that would be the same model are one cell: "transformer" has no mixer (one cell, whatever --mixers says),
"all-linear" has no attention to place or split (one cell per mixer, fusion "inter"), and intra-layer cells spread
their groups over every layer (placement "uniform" only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..names import LINEAR_MIXER_NAMES
from ..pretrain.layout import FUSIONS, PLACEMENTS, attention_layer_count, parse_ratio
from ..pretrain.presets import MIX_FIELDS

DEFAULT_TASKS = ("passkey", "niah_single_2", "mqar")  # the recall tasks the sizes train on (episodes), one per suite


@dataclass
class SweepConfig:
    """What `hybridize sweep` runs. The fields in `SAME_IN_A_FOLDER` define the comparison (what every cell of the
    folder was trained and scored with); the grid fields may grow between runs into one folder."""

    out: str
    size: str
    mixers: list[str]
    ratios: list[str]
    fusions: list[str] = field(default_factory=lambda: ["inter"])
    placements: list[str] = field(default_factory=lambda: ["uniform"])
    seeds: int = 1  # cells per mix: seeds base .. base + seeds - 1 (base = the recipe's seed)
    overrides: list[str] = field(default_factory=list)  # --set key=value, applied to every cell
    data: str | list[str] | None = None  # None: the size's
    eval_data: str | list[str] | None = None  # None: builtin:heldout when the data is the built-in train parts
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    lengths: list[int] = field(default_factory=lambda: [1, 2, 4])  # recall / perplexity at these x training length
    samples: int = 16  # prompts per (task, length)
    eval_windows: int = 8  # held-out windows of max(lengths) x training length tokens
    eval_seed: int = 0  # the recall prompts' seed (the same prompts for every cell)
    jobs: int = 1  # cells trained side by side (processes on one device)
    device: str | None = None
    max_minutes: float | None = None  # stop (with checkpoints) after this long; the same command continues
    data_workers: int | None = None
    command: str | None = None

    SAME_IN_A_FOLDER = ("size", "overrides", "data", "eval_data", "tasks", "lengths", "samples", "eval_windows",
                        "eval_seed")

    def folder_record(self) -> dict:
        """The fields every cell in a folder must share, as JSON reads them back."""
        import json

        return json.loads(json.dumps({k: getattr(self, k) for k in self.SAME_IN_A_FOLDER}))


@dataclass(frozen=True)
class Cell:
    mixer: str | None  # None for the Transformer
    ratio: str  # normalised: "transformer", "all-linear" or "N:1"
    fusion: str  # "inter" or "intra"
    placement: str | None  # inter-layer mixes with attention: "uniform" / "middle"; else None
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name, e.g. gla-3to1-inter-uniform-seed0, gla-all-linear-seed0, transformer-seed0."""
        if self.ratio == "transformer":
            return f"transformer-seed{self.seed}"
        if self.ratio == "all-linear":
            return f"{self.mixer}-all-linear-seed{self.seed}"
        mix = self.ratio.replace(":", "to")
        where = f"inter-{self.placement}" if self.fusion == "inter" else "intra"
        return f"{self.mixer}-{mix}-{where}-seed{self.seed}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _names(values, allowed, what: str) -> list[str]:
    values = list(dict.fromkeys(values))
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{what} {bad[0] if bad else '(none)'!r}; allowed: {', '.join(allowed)}")
    return values


def grid_cells(cfg: SweepConfig, base_seed: int, num_layers: int) -> list[Cell]:
    """The cells of the grid, without duplicates, in the order they train (mixer by mixer, least attention first)."""
    ratios = list(dict.fromkeys(parse_ratio(r) for r in cfg.ratios))
    if not ratios:
        raise ValueError("ratios: give at least one of transformer, all-linear, N:1")
    mixers = _names(cfg.mixers, LINEAR_MIXER_NAMES, "mixer") if ratios != ["transformer"] else []
    fusions = _names(cfg.fusions, FUSIONS, "fusion")
    placements = _names(cfg.placements, PLACEMENTS, "placement")
    if not isinstance(cfg.seeds, int) or cfg.seeds < 1:
        raise ValueError(f"seeds must be a whole number >= 1, got {cfg.seeds!r}")
    share = {r: attention_layer_count(num_layers, r) for r in ratios}
    cells: list[Cell] = []
    for seed in range(base_seed, base_seed + cfg.seeds):
        for mixer in mixers:
            for ratio in sorted(ratios, key=lambda r: share[r]):
                if ratio == "transformer":
                    continue
                if ratio == "all-linear":
                    cells.append(Cell(mixer, ratio, "inter", None, seed))
                    continue
                for fusion in fusions:
                    for placement in placements if fusion == "inter" else ["uniform"]:
                        cells.append(Cell(mixer, ratio, fusion, placement, seed))
        if "transformer" in ratios:
            cells.append(Cell(None, "transformer", "inter", None, seed))
    return list(dict.fromkeys(cells))


def cell_recipe(base, cell: Cell, overrides: list[str]):
    """The cell's `PretrainRecipe`: `base` (the size with the overrides) with the cell's mix and seed, the overrides
    applied again after the mixer's own options (so that what the user set wins)."""
    from ..pretrain import apply_overrides, with_mix

    recipe = with_mix(base, cell.mixer, cell.ratio, cell.fusion, cell.placement or "uniform")
    recipe = apply_overrides(recipe, overrides)
    recipe.seed = cell.seed
    recipe.name = f"{base.name}/{cell.name}"
    return recipe


def base_recipe(cfg: SweepConfig):
    """The size's recipe with the overrides and the data; refuses overrides of what the grid sets."""
    from ..pretrain import SIZES, apply_overrides, preset_recipe

    if cfg.size not in SIZES:
        raise ValueError(f"size {cfg.size!r}; allowed: {', '.join(SIZES)}")
    for item in cfg.overrides:
        key = item.partition("=")[0]
        if key in {f"model.{f}" for f in MIX_FIELDS} or key == "seed":
            raise ValueError(f"--set {key} is what the grid sets (--ratios / --fusion / --placement, --seeds and the "
                             "recipe's seed); leave it out")
    recipe = apply_overrides(preset_recipe(cfg.size), cfg.overrides)
    if cfg.data is not None:
        recipe.data = cfg.data
    if recipe.model_type != "hybridize":
        raise ValueError(f"model.model_type={recipe.model_type!r}: a sweep trains hybrids (model_type 'hybridize')")
    return recipe


def check_eval_settings(cfg: SweepConfig) -> None:
    from ..data.synthetic import TASKS

    _names(cfg.tasks, sorted(TASKS), "task")
    if not cfg.lengths or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in cfg.lengths):
        raise ValueError(f"lengths must be whole multiples >= 1 of the training length (e.g. 1,2,4), got {cfg.lengths}")
    cfg.lengths = sorted(set(cfg.lengths))
    for name in ("samples", "eval_windows", "jobs"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if cfg.max_minutes is not None and not cfg.max_minutes >= 0:
        raise ValueError(f"max_minutes must be >= 0, got {cfg.max_minutes!r}")


__all__ = ["Cell", "DEFAULT_TASKS", "SweepConfig", "base_recipe", "cell_recipe", "check_eval_settings", "grid_cells"]
