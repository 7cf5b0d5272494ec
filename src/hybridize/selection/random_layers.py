"""The random baseline: k layers drawn by the recipe's seed.

(Named random_layers so that it does not shadow the standard library's `random` inside the package.)
"""

from __future__ import annotations

import random

from .base import SelectionContext, SelectionResult, top_k, top_k_groups


def random_layers(num_layers: int, k: int, seed: int) -> tuple[list[int], list[float]]:
    """(the k layers with the highest of num_layers uniform draws, the draws): the same seed gives the same layers,
    and a larger k keeps the layers of a smaller one."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"number of attention layers must be in 1..{num_layers}, got {k}")
    rng = random.Random(f"random-layers:{seed}")
    draws = [rng.random() for _ in range(num_layers)]
    return top_k(draws, k), draws


def select(ctx: SelectionContext, k: int) -> SelectionResult:
    layers, draws = random_layers(ctx.num_layers, k, ctx.seed)
    return SelectionResult(layers, draws, tokens=0, details={"seed": ctx.seed})


def select_groups(ctx: SelectionContext, k: int) -> SelectionResult:
    """k KV-head groups of all layers x groups, drawn by the seed like `random_layers`."""
    L, G = ctx.num_layers, ctx.teacher.config.num_key_value_heads
    _, draws = random_layers(L * G, k, ctx.seed)
    groups = top_k_groups(draws, L, k, ctx.settings.groups_per_layer)
    return SelectionResult([], [draws[i * G:(i + 1) * G] for i in range(L)], tokens=0, details={"seed": ctx.seed},
                           groups=groups)
