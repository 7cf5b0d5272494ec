"""Evaluation: perplexity by context length, synthetic recall (NIAH, passkey, MQAR), the lm-eval adapter
(`hybridize.evaluation.lm_eval_adapter`, optional extra) and the comparison report. The scoring itself is
`hybridize.metrics`, re-exported here; this package runs it over models and writes the report, with each rate's
Wilson interval and McNemar's test of two models on the same prompts (`pooled`, `paired`). Importing the package
imports no torch (the command line builds its parser from it): each name loads with its module on first use."""

from .suites import SUITES

_PERPLEXITY = ("perplexity_by_length", "perplexity_windows", "token_nll")
_RECALL = ("build_cells", "evaluate_cells", "exact_match", "greedy_generate", "normalize", "ruler_match")
_COMPARE = ("paired", "pooled")


def __getattr__(name: str):
    if name in _PERPLEXITY:
        from ..metrics import perplexity as module
    elif name in _RECALL:
        from ..metrics import recall as module
    elif name in _COMPARE:
        from . import compare as module
    elif name in ("EvalConfig", "run_eval"):
        from . import runner as module
    elif name == "run_stage_eval":
        from . import stages as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


__all__ = ["SUITES", "EvalConfig", "run_eval", "run_stage_eval", *_PERPLEXITY, *_RECALL, *_COMPARE]
