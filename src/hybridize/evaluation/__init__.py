"""Evaluation: perplexity by context length, synthetic recall (NIAH, passkey, MQAR), the lm-eval adapter
(`hybridize.evaluation.lm_eval_adapter`, optional extra) and the comparison report."""

from .perplexity import perplexity_by_length, perplexity_windows, token_nll
from .recall import build_cells, evaluate_cells, exact_match, greedy_generate, normalize, ruler_match
from .runner import SUITES, EvalConfig, run_eval

__all__ = [
    "SUITES", "EvalConfig", "build_cells", "evaluate_cells", "exact_match", "greedy_generate", "normalize",
    "perplexity_by_length", "perplexity_windows", "ruler_match", "run_eval", "token_nll",
]
