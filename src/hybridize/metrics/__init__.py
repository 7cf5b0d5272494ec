"""Scoring primitives: per-token NLL and perplexity by context length on shared token windows, held-out LM loss, and
synthetic recall (greedy generation from each prompt, exact match and RULER's string match).

They sit below everything that scores a model: the training stages (held-out loss), the HALO selector (recall and
LM cost of each swapped layer) and `hybridize eval` (`hybridize.evaluation`, which runs them and writes the report).
"""

from .perplexity import heldout_lm, heldout_windows, perplexity_by_length, perplexity_windows, token_nll
from .recall import Cell, build_cells, evaluate_cells, exact_match, greedy_generate, normalize, ruler_match

__all__ = [
    "Cell", "build_cells", "evaluate_cells", "exact_match", "greedy_generate", "heldout_lm", "heldout_windows",
    "normalize", "perplexity_by_length", "perplexity_windows", "ruler_match", "token_nll",
]
