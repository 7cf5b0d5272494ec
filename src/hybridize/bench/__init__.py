"""Speed benchmarks: `run_bench` (prefill / decode of a hybrid vs its teacher, with roofline bounds) and
`run_train_bench` (stage-2 distillation tokens/s and MFU). The `hybridize bench` verb calls them. Importing the
package imports no torch: the two functions load with their modules on first use."""

from .variants import VARIANTS


def __getattr__(name: str):
    if name == "run_bench":
        from .inference import run_bench

        return run_bench
    if name == "run_train_bench":
        from .train import run_train_bench

        return run_train_bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VARIANTS", "run_bench", "run_train_bench"]
