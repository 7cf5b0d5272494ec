"""Data parallelism under torchrun: one process per GPU, each on its own shard of every global batch.

`torchrun --nproc_per_node N -m hybridize teacher ...` starts N copies of the command with RANK / WORLD_SIZE /
LOCAL_RANK set; `init_from_env` joins them into one process group (NCCL on CUDA, gloo on the CPU, where the tests
run it), and the training loop averages the gradients across ranks after each step's micro-batches, so N ranks of
micro-batch B train the same model as one rank accumulating N micro-batches of B (the loaders give rank r the r-th
slice of each global batch). Only rank 0 writes files. Work that is not data parallel (a conversion's layer
selection) runs on rank 0 alone under `single_process()` while the others wait. Without torchrun (WORLD_SIZE unset
or 1) nothing here does anything.

Why not DistributedDataParallel: the loss functions call parts of the model (the decoder, then a chunked output
head; the frozen teacher beside the student), not the wrapped module's forward, which DDP needs to see; averaging
the gradients once per optimizer step is also what DDP's `no_sync` accumulation amounts to.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist


_alone = False  # inside `single_process()`: this rank works as if it were the only one


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group and inside `single_process()`."""
    if not _alone and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def requested_world() -> int:
    """How many processes torchrun started (its WORLD_SIZE), 1 without torchrun."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a whole number (torchrun sets it), got {value!r}") from None


def init_from_env() -> tuple[int, int]:
    """Join torchrun's process group when it started more than one process; returns (rank, world size)."""
    if requested_world() <= 1 or dist.is_initialized():
        return rank_world()
    # The other ranks wait at a barrier while rank 0 selects layers alone (HALO / KL-guided / FlashMorph: minutes to
    # hours on a large teacher), longer than the default timeouts (10 min NCCL, 30 min gloo)
    timeout = timedelta(hours=float(os.environ.get("HYBRIDIZE_DIST_TIMEOUT_HOURS", "6")))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's GPU
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return rank_world()


@contextlib.contextmanager
def single_process():
    """Run the block on this rank alone, as if without torchrun (no collectives, files written): for work that is
    not data parallel, done by rank 0 while the others wait at a barrier after it."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def rank0_first(fn) -> None:
    """`fn()` on rank 0, then, once it is done, on the others: rank 0 writes what is missing (a recipe file, a
    tokenizer), the others find it there and only check it."""
    if is_main():
        fn()
    barrier()
    if not is_main():
        fn()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average each tensor over the ranks, in place: one all-reduce per dtype (flattened), not one per tensor."""
    world = rank_world()[1]
    if world <= 1 or not tensors:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # gloo has no AVG
        flat /= world
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_grads_(params: list[torch.nn.Parameter]) -> None:
    """Average the parameters' gradients over the ranks. A parameter without a gradient on this rank takes zeros,
    so that every rank reduces the same tensors (a rank whose micro-batches skipped a parameter contributes 0)."""
    if rank_world()[1] <= 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params])


__all__ = ["all_reduce_grads_", "all_reduce_mean_", "barrier", "init_from_env", "is_main", "rank0_first",
           "rank_world", "requested_world", "single_process"]
