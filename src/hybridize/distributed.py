"""Training on several processes under torchrun: FSDP2 (`torch.distributed.fsdp.fully_shard`) over a device mesh.

`torchrun --nproc_per_node N -m hybridize convert ...` starts N copies of the command with RANK / WORLD_SIZE /
LOCAL_RANK / LOCAL_WORLD_SIZE set; `init_from_env` joins them into one process group (NCCL on CUDA, gloo on the CPU,
where the tests run it) and builds the device mesh:

* by default a 1-D mesh ("shard",) over every rank, on one node or several. Each trainable parameter, its gradient
  and its AdamW state live 1/N on each rank; a block's parameters are all-gathered just before it runs and freed
  after it (FSDP2).
* `HYBRIDIZE_SHARD_SIZE=S` (S divides the number of processes, e.g. the GPUs of one node): a 2-D mesh
  ("replicate", "shard") = HSDP. Parameters are sharded within groups of S ranks and replicated across the groups;
  gradients are reduce-scattered within a group and all-reduced across groups. Over several nodes with S = the
  GPUs of a node, the all-gathers stay on the node's NVLink, at the memory of S-way sharding.

Each rank reads its slice of every global batch (the loaders give rank r the r-th slice), FSDP averages the
gradients over all ranks, so N ranks train what one rank accumulating N micro-batches trains. Only rank 0 writes
files, except sharded checkpoints, which every rank writes its part of. Work that is not data parallel (a
conversion's evaluation-based layer selection) runs on rank 0 alone under `single_process()` while the others wait.
Without torchrun (WORLD_SIZE unset or 1) nothing here does anything, and the models are never wrapped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

_alone = False  # inside `single_process()`: this rank works as if it were the only one
_mesh = None  # the DeviceMesh built by init_from_env


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group and inside `single_process()`."""
    if not _alone and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def requested_world() -> int:
    """How many processes torchrun started (its WORLD_SIZE), 1 without torchrun."""
    return _env_int("WORLD_SIZE", 1, "torchrun sets it")


def _env_int(name: str, default: int, why: str) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a whole number >= 1 ({why}), got {value!r}")
    return number


def mesh_shape(world: int, shard_size: int) -> tuple[int, int]:
    """(replicate, shard) groups of the mesh for `world` ranks sharding over groups of `shard_size`."""
    if shard_size < 1 or world % shard_size:
        raise ValueError(f"HYBRIDIZE_SHARD_SIZE={shard_size} must divide the {world} processes (the shard group "
                         "size: the GPUs of one node by default)")
    return world // shard_size, shard_size


def shard_size_from_env(world: int) -> int:
    """Ranks per shard group: HYBRIDIZE_SHARD_SIZE, else all of them (one FSDP group over every rank)."""
    return _env_int("HYBRIDIZE_SHARD_SIZE", world, "ranks that shard the weights between them")


def init_from_env() -> tuple[int, int]:
    """Join torchrun's process group when it started more than one process and build the device mesh; returns
    (rank, world size)."""
    global _mesh
    if requested_world() <= 1 or dist.is_initialized():
        return rank_world()
    # The other ranks wait at a barrier while rank 0 selects layers alone (HALO: minutes to hours on a large
    # teacher), longer than the default timeouts (10 min NCCL, 30 min gloo)
    timeout = timedelta(hours=float(os.environ.get("HYBRIDIZE_DIST_TIMEOUT_HOURS", "6")))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's GPU
        # gloo beside NCCL: the checkpoint planner's object collectives and CPU-side flags
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
        device_type = "cuda"
    else:
        dist.init_process_group("gloo", timeout=timeout)
        device_type = "cpu"
    world = dist.get_world_size()
    from torch.distributed.device_mesh import init_device_mesh

    replicate, shard = mesh_shape(world, shard_size_from_env(world))
    if replicate == 1:
        _mesh = init_device_mesh(device_type, (shard,), mesh_dim_names=("shard",))
    else:
        _mesh = init_device_mesh(device_type, (replicate, shard), mesh_dim_names=("replicate", "shard"))
    return rank_world()


def sharded() -> bool:
    """Whether models are wrapped with FSDP here: under torchrun with more than one process, outside
    `single_process()`."""
    return rank_world()[1] > 1


def mesh():
    """The device mesh of this run (see the module docstring); None in a single process."""
    return _mesh if sharded() else None


def shard_group_size() -> int:
    """Ranks that share one copy of a sharded model (the mesh's shard dimension); 1 in a single process."""
    m = mesh()
    return 1 if m is None else m.size(-1)


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
    """Average each tensor over the ranks, in place (logged metrics: the loss of the whole global batch)."""
    world = rank_world()[1]
    if world <= 1 or not tensors:
        return
    for t in (t for t in tensors if t.numel()):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)  # gloo has no AVG
        t /= world


def broadcast_object(value):
    """Rank 0's `value` on every rank (a small picklable object)."""
    if rank_world()[1] <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mixed_precision(device: torch.device, blocks: bool = True):
    """FSDP's policy for a trained model's groups. On CUDA a block's all-gathered parameters are bf16 (bf16 compute,
    as autocast does in one process) while its sharded master weights, the gradients' reduce-scatter and AdamW stay
    fp32; the block's input is not cast, so the residual stream stays fp32 as in one process. The root's group
    (embeddings, final norm, output head: `blocks=False`) is gathered in fp32, so the embeddings start that fp32
    stream; autocast still runs the output head's matmul in bf16. On the CPU everything is fp32, as in one process."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and blocks:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return MixedPrecisionPolicy()


Unit = nn.Module | Sequence[nn.Module]


def shard_trained(root: nn.Module, units: Iterable[Unit], device: torch.device,
                  forward_methods: Sequence[str] = ()) -> None:
    """FSDP2 over a trained model, in place: each unit (a module, or a list of modules sharing parameters, e.g. a
    tied embedding and output head) is one all-gather / reduce-scatter group, bottom-up; `root` gets what is left
    and stays gathered from its forward to the end of backward (FSDP's default for the root). Everything the
    training step runs must run inside `root`'s forward or one of `forward_methods`, which get the same hooks."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    check_same_weights(root)
    m = mesh()
    for unit in units:
        fully_shard(list(unit) if isinstance(unit, (list, tuple)) else unit, mesh=m, mp_policy=mixed_precision(device))
    fully_shard(root, mesh=m, mp_policy=mixed_precision(device, blocks=False))
    for name in forward_methods:
        register_fsdp_forward_method(root, name)


def check_same_weights(model: nn.Module) -> None:
    """Raise unless every rank holds the same weights: each rank keeps its own shard of its own copy, so copies that
    differ (a fresh part initialised from a random state one rank moved on) would train a mix of models."""
    with torch.no_grad():
        mine = [float(p.double().sum()) + float(p.double().abs().sum()) for p in model.parameters()]
    everyone = [None] * rank_world()[1]
    dist.all_gather_object(everyone, mine)
    if any(other != everyone[0] for other in everyone):
        differ = [r for r, other in enumerate(everyone) if other != everyone[0]]
        raise RuntimeError(f"the ranks built different models (rank(s) {differ} differ from rank 0) before sharding; "
                           "every rank must build the same one (same seed, same random draws before it)")


def shard_frozen(root: nn.Module, units: Iterable[nn.Module], replicated: Iterable[nn.Module],
                 device: torch.device) -> None:
    """FSDP2 over a frozen model (the teacher), in place: each unit is gathered for its forward and freed after it;
    the parameters of `replicated` stay whole on every rank (moved to `device`); `root`, whose forward must be the
    first to run (it calls the units), holds nothing else. No mixed precision: the model already has its dtype."""
    from torch.distributed.fsdp import fully_shard

    m = mesh()
    for unit in units:
        fully_shard(unit, mesh=m, reshard_after_forward=True)
    whole = {p for module in replicated for p in module.parameters()}
    for module in replicated:
        module.to(device)
    fully_shard(root, mesh=m, reshard_after_forward=True, ignored_params=whole)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU: on rank 0 when the model is sharded (every rank must call it;
    the others get {}), else the model's own tensors moved to the CPU."""
    if not sharded():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["all_reduce_mean_", "barrier", "broadcast_object", "check_same_weights", "full_state_dict", "init_from_env", "is_main",
           "mesh", "mesh_shape", "mixed_precision", "rank0_first", "rank_world", "requested_world", "shard_frozen",
           "shard_group_size", "shard_trained", "sharded", "single_process"]
