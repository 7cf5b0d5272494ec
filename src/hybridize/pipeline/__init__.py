"""The conversion pipeline: the functions that run a conversion's stages in order (align, select, distill,
finetune), load its teacher and write its outputs (`stages`), and the recipe loaders that check a recipe's selector
against the selection registry (`recipe`).

It sits above both packages it orchestrates: `hybridize.distill` (losses, recipes, the training loop, curves, the
model card) and `hybridize.selection` (the selectors, which train with that loop). Neither imports it.

    conv = Conversion(teacher="path/to/Qwen3-1.7B", out="out/qwen3-hybrid", recipe=load_recipe("halo-qwen3-1.7b"))
    convert(conv)     # == align(conv); select(conv); distill(conv); finetune(conv); export(conv)
"""

from .recipe import load_recipe, recipe_from_dict
from .stages import RUNNERS, Conversion, align, assemble, convert, distill, export, finetune, select

__all__ = [
    "RUNNERS", "Conversion", "align", "assemble", "convert", "distill", "export", "finetune", "load_recipe",
    "recipe_from_dict", "select",
]
