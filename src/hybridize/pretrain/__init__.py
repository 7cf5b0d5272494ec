"""Training models from scratch (`hybridize pretrain`): any `HybridConfig` (any mixers, ratio, placement, inter- or
intra-layer) or the Qwen3 class of our teachers, on the corpus mixed with retrieval episodes, with the shared
training loop. `hybridize teacher` is its Transformer preset; `hybridize sweep` trains a grid of its cells."""

from .layout import layer_mix, mix_summary, parse_ratio
from .presets import PRESETS, SIZES, build_recipe, preset_recipe, with_mix
from .recipe import PretrainRecipe, apply_overrides, read_recipe_file, recipe_from_dict
from .train import pretrain

__all__ = ["PRESETS", "SIZES", "PretrainRecipe", "apply_overrides", "build_recipe", "layer_mix", "mix_summary",
           "parse_ratio", "preset_recipe", "pretrain", "read_recipe_file", "recipe_from_dict", "with_mix"]
