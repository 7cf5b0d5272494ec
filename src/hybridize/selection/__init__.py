"""Choosing which layers keep softmax attention under a budget: a registry of selectors, all run the same way.

    record = run_selection("flashmorph", ctx, budget=0.25)   # k = resolve_budget(0.25, L); writes selection.json

A selector is a function `(SelectionContext, k) -> SelectionResult`; add one with `SELECTORS["name"] = fn`.
"""

from __future__ import annotations

import time

from ..data.sources import iter_documents
from ..data.synthetic import FillerTokens, generate, task_config
from ..distributed import is_main
from ..provenance import device_name
from . import flashmorph, halo, kl_guided, random_layers, uniform
from .base import (Selector, SelectionContext, SelectionResult, check_groups_per_layer, swap_config, swapped_model,
                   top_k, top_k_groups)
from .report import write_selection
from .uniform import resolve_budget, uniform_groups, uniform_layers

SELECTORS: dict[str, Selector] = {
    "uniform": uniform.select,
    "random": random_layers.select,
    "halo": halo.select,
    "kl_guided": kl_guided.select,
    "flashmorph": flashmorph.select,
}
# The selectors that choose KV-head groups instead of layers (recipe fusion=intra): (ctx, k groups) -> a result whose
# `groups` lists each layer's kept groups and whose `scores` hold one list per layer
GROUP_SELECTORS: dict[str, Selector] = {
    "uniform": uniform.select_groups,
    "random": random_layers.select_groups,
    "flashmorph": flashmorph.select_groups,
    "halo": halo.select_groups,
}
# The selectors that train (with the shared loop): under torchrun they run on every rank, their models sharded by
# FSDP like a stage's; the others run on rank 0 alone.
TRAINING_SELECTORS = ("kl_guided", "flashmorph")


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; available: {sorted(SELECTORS)}")
    return SELECTORS[name]


def run_selection(name: str, ctx: SelectionContext, budget: float | int | str) -> dict:
    """Run selector `name` for `budget` (a fraction of the layers or a count), check its answer, write selection.json
    and scores.png into ctx.run_dir; returns the record (selector, budget, layers, scores, tokens, seconds, device,
    details)."""
    if ctx.recipe.fusion == "intra":
        return _run_group_selection(name, ctx, budget)
    selector = get_selector(name)
    L = ctx.num_layers
    k = resolve_budget(budget, L)
    t0 = time.perf_counter()
    result = selector(ctx, k)
    seconds = time.perf_counter() - t0
    layers = [int(i) for i in result.layers]
    if len(set(layers)) != k or any(not 0 <= i < L for i in layers):
        raise ValueError(f"selector {name!r} returned layers {result.layers}; it must return {k} distinct layer "
                         f"indices in 0..{L - 1}")
    if len(result.scores) != L:
        raise ValueError(f"selector {name!r} returned {len(result.scores)} scores; it must return one per layer ({L})")
    record = {"selector": name, "budget": budget, "layers": sorted(layers),
              "scores": [float(s) for s in result.scores], "tokens": int(result.tokens), "seconds": seconds,
              "device": device_name(ctx.device), "details": result.details}
    if is_main():
        write_selection(ctx.run_dir, record)
    return record


def _run_group_selection(name: str, ctx: SelectionContext, budget: float | int | str) -> dict:
    """`run_selection` for an intra-layer conversion: `budget` counts KV-head groups of all layers; the record holds
    `groups` (each layer's kept groups), `layers` (those keeping all of them) and a list of scores per layer."""
    if name not in GROUP_SELECTORS:
        raise ValueError(f"selector {name!r} chooses whole layers; with fusion=intra (KV-head groups) use one of "
                         f"{sorted(GROUP_SELECTORS)}")
    L, G = ctx.num_layers, ctx.teacher.config.num_key_value_heads
    k = resolve_budget(budget, L * G, unit="KV-head group")
    t0 = time.perf_counter()
    result = GROUP_SELECTORS[name](ctx, k)
    seconds = time.perf_counter() - t0
    groups = [sorted(int(g) for g in kept) for kept in (result.groups or [])]
    if (len(groups) != L or sum(len(set(kept)) for kept in groups) != k
            or any(len(set(kept)) != len(kept) or not all(0 <= g < G for g in kept) for kept in groups)):
        raise ValueError(f"selector {name!r} returned groups {result.groups}; it must return, for each of the {L} "
                         f"layers, distinct KV-head group indices in 0..{G - 1}, {k} in all")
    if len(result.scores) != L or any(len(row) != G for row in result.scores):
        raise ValueError(f"selector {name!r} must return {L} lists of {G} scores (one per KV-head group)")
    record = {"selector": name, "budget": budget, "fusion": "intra", "groups": groups,
              "layers": [i for i, kept in enumerate(groups) if len(kept) == G],
              "scores": [[float(v) for v in row] for row in result.scores], "tokens": int(result.tokens),
              "seconds": seconds, "device": device_name(ctx.device), "details": result.details}
    write_selection(ctx.run_dir, record)
    return record


def check_synthetic_data(recipe, tokenizer, data) -> None:
    """Build one example of every (task, prompt length) the recipe's selector will use, so that a length too short
    for a task's template and needles in this tokenizer fails at once (before stage 1), naming the field."""
    s = recipe.select
    if recipe.keep_layers is not None or recipe.selector not in ("halo", "flashmorph"):
        return
    if recipe.selector == "halo":
        tasks, options, lengths, name = s.halo_tasks, s.halo_task_options, s.halo_lengths, "halo_lengths"
    else:
        tasks, options = [s.flashmorph_task], s.flashmorph_task_options
        lengths, name = s.flashmorph_lengths, "flashmorph_lengths"
    filler = FillerTokens.build(tokenizer, iter_documents(data), max_tokens=4096)  # lengths do not depend on it
    for task in tasks:
        for n in lengths:
            try:
                generate(task_config(task, length=n, **options), 0, tokenizer, filler)
            except ValueError as err:
                raise ValueError(f"select.{name}: {err}") from None


__all__ = ["GROUP_SELECTORS", "SELECTORS", "TRAINING_SELECTORS", "SelectionContext", "SelectionResult", "Selector",
           "check_groups_per_layer", "check_synthetic_data", "get_selector", "resolve_budget", "run_selection",
           "swap_config", "swapped_model", "top_k", "top_k_groups", "uniform_groups", "uniform_layers",
           "write_selection"]
