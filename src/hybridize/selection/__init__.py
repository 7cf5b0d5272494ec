"""Choosing which layers keep softmax attention under a budget."""

from .uniform import resolve_budget, uniform_layers

__all__ = ["resolve_budget", "uniform_layers"]
