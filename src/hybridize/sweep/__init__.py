"""`hybridize sweep`: the design-space studies' grid (mixer x ratio x fusion x placement x seed) trained from scratch
with `hybridize pretrain`, every cell on the same tokens, data order and seed, each scored on held-out perplexity and
recall at multiples of its training length with 95% intervals, into `sweep.json`, a README table and figures.

    run_sweep(SweepConfig(out="sweep", size="tiny", mixers=["gla", "deltanet"], ratios=["all-linear", "3:1"]))
"""

from .grid import Cell, SweepConfig, grid_cells
from .report import write_report
from .run import SweepResult, collect_rows, run_sweep

__all__ = ["Cell", "SweepConfig", "SweepResult", "collect_rows", "grid_cells", "run_sweep", "write_report"]
