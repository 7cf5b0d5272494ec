"""Evaluation: perplexity by context length, synthetic recall (NIAH, passkey, MQAR), the lm-eval adapter
(`hybridize.evaluation.lm_eval_adapter`, optional extra) and the comparison report. The scoring itself is
`hybridize.metrics`, re-exported here; this package runs it over models and writes the report."""

from ..metrics.perplexity import perplexity_by_length, perplexity_windows, token_nll
from ..metrics.recall import build_cells, evaluate_cells, exact_match, greedy_generate, normalize, ruler_match
from .runner import SUITES, EvalConfig, run_eval

__all__ = [
    "SUITES", "EvalConfig", "build_cells", "evaluate_cells", "exact_match", "greedy_generate", "normalize",
    "perplexity_by_length", "perplexity_windows", "ruler_match", "run_eval", "token_nll",
]
