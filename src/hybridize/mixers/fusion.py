"""One matmul for the projections that read the same input: q|k|v(|gate) of every attention and linear mixer, gate|up
of every MLP (issue 7: at batch-1 decode each projection is its own matrix-vector product, and the 4-8 MB ones do not
stream their weights at full bandwidth).

`fuse_projections(model)` concatenates each group's weights into one tensor and makes the original `nn.Linear`
weights row-slices (views) of it: no memory is added, training and loading still go through the original modules
(an in-place optimizer step or `load_state_dict` writes into the fused tensor), and `state_dict` returns copies so
`save_pretrained` writes the usual keys. The fused matmul is used only without autograd (`torch.no_grad`, inference:
generate, the CUDA-graph decode, the benchmark), and only while the views still alias it: after `.to(dtype)` or a
device move the modules hold new tensors and the projections run one by one again, correct and unfused.

`generate` on CUDA fuses by itself: the CUDA-graph decoder (`hybridize/models/graphs.py`) calls
`fuse_projections` before each capture unless the model's `decode_fusion` is False.

The fused matmul runs only for inputs of at most `MAX_ROWS` tokens (batch x new tokens: a decode step at batch 1-64).
Measured side by side on an H200 (results/archive/bench/h200-fused-projections/, Qwen3-1.7B shape): decode at batch 1
got 1.12-1.31x faster per token and at batch 8 1.02-1.04x, while prefill got 1-30% slower. A prefill matmul is
compute-bound already, and the split outputs are strided views that the kernels after it copy. With prefill unfused
(results/bench/h200-fused-projections-rerun/) prefill matched the plain model and decode gained 1.13-1.31x again.
The gain is measured on CUDA only, so only CUDA decode fuses by default.

Results equal the unfused projections up to the matmul's summation order (tested on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# A module class opts in with `fused_projections = (names of its Linear modules that read the same input, in output
# order)`, and computes them with `project(self, x, self.fused_projections)`: Attention, LinearMixer, HybridMLP.
_ATTR = "_fused_in"
MAX_ROWS = 64  # the largest decode step (batch x tokens) that uses the fused matmul; longer inputs run unfused


@dataclass
class Fused:
    names: tuple[str, ...]
    weight: torch.Tensor  # (sum of out_features, in_features)
    bias: torch.Tensor | None
    sizes: list[int]
    pointers: list[int]  # where each module's weight view starts


def project(module: nn.Module, x: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor | None]:
    """`[getattr(module, n)(x) for n in names]` (None for a missing module), by one matmul when `module` was fused,
    no gradient is being recorded and `x` holds at most `MAX_ROWS` tokens (decode)."""
    fused: Fused | None = module.__dict__.get(_ATTR)
    if (fused is not None and not torch.is_grad_enabled() and x.numel() <= MAX_ROWS * x.shape[-1]
            and _intact(module, fused)):
        outs = iter(F.linear(x, fused.weight, fused.bias).split(fused.sizes, dim=-1))
        return [next(outs) if n in fused.names else None for n in names]
    return [None if (m := getattr(module, n, None)) is None else m(x) for n in names]


def _intact(module: nn.Module, fused: Fused) -> bool:
    """The modules' weights are still the fused tensor's rows, not tensors that `.to()`, `load_state_dict(assign=True)`
    or a new Parameter put in their place (the fused tensor stays alive, so no new tensor can reuse its address)."""
    return all(getattr(module, n).weight.data_ptr() == p for n, p in zip(fused.names, fused.pointers))


def _fuse(module: nn.Module, names: tuple[str, ...]) -> bool:
    done: Fused | None = module.__dict__.get(_ATTR)
    if done is not None and _intact(module, done):
        return False  # fused already: fusing again would only copy the weights
    linears = [(n, getattr(module, n)) for n in names if isinstance(getattr(module, n, None), nn.Linear)]
    if len(linears) < 2:
        return False
    first = linears[0][1].weight
    if any(lin.weight.dtype != first.dtype or lin.weight.device != first.device or
           lin.in_features != linears[0][1].in_features for _, lin in linears):
        return False
    with torch.no_grad():
        weight = torch.cat([lin.weight for _, lin in linears])
        has_bias = any(lin.bias is not None for _, lin in linears)
        bias = None
        if has_bias:
            bias = torch.cat([lin.bias if lin.bias is not None else
                              torch.zeros(lin.out_features, dtype=first.dtype, device=first.device) for _, lin in linears])
    offset = 0
    for _, lin in linears:
        lin.weight.data = weight[offset:offset + lin.out_features]  # a view: the old storage is freed
        if lin.bias is not None:
            lin.bias.data = bias[offset:offset + lin.out_features]
        offset += lin.out_features
    module.__dict__[_ATTR] = Fused(tuple(n for n, _ in linears), weight, bias, [lin.out_features for _, lin in linears],
                                   [lin.weight.data_ptr() for _, lin in linears])
    if not getattr(module, "_fusion_hook", False):
        module._register_state_dict_hook(_copy_views)
        module._fusion_hook = True
    return True


def _copy_views(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict of a fused module: each weight as its own tensor (safetensors refuses tensors sharing storage)."""
    fused: Fused | None = module.__dict__.get(_ATTR)
    if fused is None:
        return
    for name in fused.names:
        for part in ("weight", "bias"):
            key = f"{prefix}{name}.{part}"
            if key in state_dict and state_dict[key] is not None:
                state_dict[key] = state_dict[key].clone()


def fuse_projections(model: nn.Module) -> int:
    """Fuse every group of projections in `model` not fused already (or no longer: after `.to()`); returns how many
    groups it fused now, so a second call returns 0."""
    count = 0
    for module in model.modules():
        names = getattr(type(module), "fused_projections", None)
        if names is not None and _fuse(module, names):
            count += 1
    return count


__all__ = ["fuse_projections", "project"]
