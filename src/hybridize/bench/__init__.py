"""Speed benchmarks: `run_bench` (prefill / decode of a hybrid vs its teacher, with roofline bounds) and
`run_train_bench` (stage-2 distillation tokens/s and MFU). The `hybridize bench` verb calls them."""

from .inference import VARIANTS, run_bench
from .train import run_train_bench

__all__ = ["VARIANTS", "run_bench", "run_train_bench"]
