"""Budgets and the uniform selector."""

from __future__ import annotations

from .base import SelectionContext, SelectionResult


def resolve_budget(budget: float | int | str, num_layers: int) -> int:
    """Number of attention layers K for a budget: a fraction in (0, 1) of the layers (rounded to nearest), or a
    whole count in [1, num_layers]. `budget` may be the string given on a command line ("0.25", "7")."""
    text = str(budget).strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"budget must be a fraction in (0, 1) or a layer count in 1..{num_layers}, got {text!r}") from None
    if 0 < value < 1:
        k = round(value * num_layers)
        if k < 1:
            raise ValueError(f"budget {text} of {num_layers} layers rounds to 0 attention layers; use at least "
                             f"{1 / num_layers:.3g}")
        return k
    if value != int(value) or not 1 <= value <= num_layers:
        raise ValueError(f"budget must be a fraction in (0, 1) or a whole layer count in 1..{num_layers}, got {text}")
    return int(value)


def uniform_layers(num_layers: int, k: int) -> list[int]:
    """K evenly spaced layers, each closing a group of ~L/K layers (so never the very first layer):
    28 layers, K = 7 -> [3, 7, 11, 15, 19, 23, 27]."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"number of attention layers must be in 1..{num_layers}, got {k}")
    return [(i + 1) * num_layers // k - 1 for i in range(k)]


def select(ctx: SelectionContext, k: int) -> SelectionResult:
    """Evenly spaced (`uniform_layers`); scores mark the chosen layers (1) and the others (0)."""
    layers = uniform_layers(ctx.num_layers, k)
    return SelectionResult(layers, [1.0 if i in layers else 0.0 for i in range(ctx.num_layers)], tokens=0)
