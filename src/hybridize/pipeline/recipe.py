"""Conversion recipes as the pipeline reads them: `hybridize.distill.recipe`'s loaders with the selector name checked
against the selection registry, so that an unknown selector fails when the recipe is read, before stage 1.

    recipe = load_recipe("smoke", ["selector=halo", "budget=0.125"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..distill import recipe as _recipe
from ..distill.recipe import Recipe
from ..selection import SELECTORS


def load_recipe(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """`hybridize.distill.recipe.load_recipe`, its selector one of `SELECTORS` (added ones included)."""
    return _recipe.load_recipe(name_or_path, overrides, selectors=SELECTORS)


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """`hybridize.distill.recipe.recipe_from_dict`, its selector one of `SELECTORS`."""
    return _recipe.recipe_from_dict(raw, selectors=SELECTORS)


__all__ = ["load_recipe", "recipe_from_dict"]
