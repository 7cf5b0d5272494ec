"""Budgets and the uniform selector."""

from __future__ import annotations

from .base import SelectionContext, SelectionResult


def resolve_budget(budget: float | int | str, num_layers: int, unit: str = "layer") -> int:
    """Number of attention layers K for a budget: a fraction in (0, 1) of the layers (rounded to nearest), or a
    whole count in [1, num_layers]. `budget` may be the string given on a command line ("0.25", "7"). An intra-layer
    conversion counts KV-head groups instead (`unit="KV-head group"`, num_layers = layers x groups)."""
    text = str(budget).strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"budget must be a fraction in (0, 1) or a {unit} count in 1..{num_layers}, got {text!r}") from None
    if 0 < value < 1:
        k = round(value * num_layers)
        if k < 1:
            raise ValueError(f"budget {text} of {num_layers} {unit}s rounds to 0 attention {unit}s; use at least "
                             f"{1 / num_layers:.3g}")
        return k
    if value != int(value) or not 1 <= value <= num_layers:
        raise ValueError(f"budget must be a fraction in (0, 1) or a whole {unit} count in 1..{num_layers}, got {text}")
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


def uniform_groups(num_layers: int, num_groups: int, k: int) -> list[list[int]]:
    """K KV-head groups spread evenly: each layer keeps k // L groups, and the k % L layers that `uniform_layers`
    picks keep one more; within a layer the kept groups are evenly spaced (each closing a run of ~G/c groups).
    4 layers x 4 groups, k = 6 -> [[3], [1, 3], [3], [1, 3]]."""
    if not 1 <= k <= num_layers * num_groups:
        raise ValueError(f"number of attention groups must be in 1..{num_layers * num_groups}, got {k}")
    extra = set(uniform_layers(num_layers, k % num_layers)) if k % num_layers else set()
    counts = [k // num_layers + (i in extra) for i in range(num_layers)]
    return [[(j + 1) * num_groups // c - 1 for j in range(c)] if c else [] for c in counts]


def select_groups(ctx: SelectionContext, k: int) -> SelectionResult:
    """Evenly spread KV-head groups (`uniform_groups`); scores mark the chosen groups (1) and the others (0)."""
    G = ctx.teacher.config.num_key_value_heads
    groups = uniform_groups(ctx.num_layers, G, k)
    scores = [[1.0 if g in kept else 0.0 for g in range(G)] for kept in groups]
    return SelectionResult([], scores, tokens=0, groups=groups)
