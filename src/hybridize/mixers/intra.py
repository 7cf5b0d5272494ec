"""The intra-layer hybrid block: softmax attention and a linear mixer side by side in one layer, over its heads.

The inter/intra-layer fusion study (METHODS.md, arXiv 2510.04800) splits each layer's heads between an attention
branch and a linear branch running in parallel on the same normed input, normalises each branch, and fuses them before
the output projection. Here the split follows the teacher's grouped-query layout: the KV-head groups listed in
`config.attention_kv_heads[layer]` keep softmax attention with their query heads (KV cache for those groups only);
the query heads of the other groups become the linear mixer's heads (a fixed-size state for them only):

    a = Attention_kept(x)           (B, T, Ha * D)      Ha = kept groups x query heads per group
    a = RMSNorm_per_head(a)         (intra_branch_norm; the linear branch ends in its own norm)
    l = Linear_rest(x)              (B, T, Hl * V)      Hl = the other groups' query heads
    y = Wo fuse(a, l)               concat: [a, l]  (any split; each head's output keeps its column of Wo)
                                    subtract: a - l,  sum: a + l,
                                    gate: z * a + (1 - z) * l with z = sigmoid(x Wz)   (branches of one width)

Inter-layer hybrids are the special case of whole layers ("full_attention" / "linear_attention"). Both branches are
ordinary mixers built with `project_output=False` from a view of the config with their head counts, so every
attention option (GQA, biases, QK-norm, RoPE, HyPE, sliding window) and every linear mixer works in a branch. The
dynamic cache layer is transformers' own `LinearAttentionAndFullAttentionLayer` ("hybrid"; KV and recurrent state
in one object, given to both branches); the static one is `state.StaticIntra` (a `StaticKV` beside a
`StaticState`).

Conversion (`hybridize.convert.transfer`): the attention branch takes the kept groups' q/k/v rows of the teacher's
attention (and their norms, biases), the linear branch the other heads' rows as its mixer's transfer map says (K/V
repeated per query head), and the output projection the teacher's Wo columns in the branches' head order (concat) or
the attention heads' columns (the other fusions). The branch norm and the gate start fresh.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .base import Mixer, RMSNorm, SeqInfo, Tensor
from .registry import LINEAR
from .state import StaticIntra


class BranchConfig:
    """A view of a config with some fields replaced (a branch's head counts, its layer type): what a branch mixer
    reads, without copying or re-validating the whole config."""

    def __init__(self, base, **overrides):
        self._base, self._overrides = base, overrides

    def __getattr__(self, name):
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_base"], name)


def split_heads(config, layer_idx: int) -> tuple[list[int], list[int]]:
    """(query heads of the attention branch, query heads of the linear branch) of an intra layer, as indices of the
    layer's heads in the teacher's order: group j's heads are j * g .. j * g + g - 1."""
    kept = config.attention_kv_heads[layer_idx]
    g = config.num_attention_heads // config.num_key_value_heads
    attention = [j * g + i for j in kept for i in range(g)]
    linear = [h for h in range(config.num_attention_heads) if h not in set(attention)]
    return attention, linear


def branch_configs(config, layer_idx: int) -> tuple[BranchConfig, BranchConfig]:
    """The config views the attention and linear branches of intra layer `layer_idx` are built from."""
    attention, linear = split_heads(config, layer_idx)
    types = list(config.layer_types)
    types[layer_idx] = "sliding_attention" if types[layer_idx] == "hybrid_sliding" else "full_attention"
    kept = config.attention_kv_heads[layer_idx]
    return (BranchConfig(config, num_attention_heads=len(attention), num_key_value_heads=len(kept), layer_types=types),
            BranchConfig(config, linear_num_heads=len(linear)))


class IntraLayer(Mixer):
    layer_type = "hybrid"

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_heads, self.linear_heads = split_heads(config, layer_idx)
        attention_config, linear_config = branch_configs(config, layer_idx)
        self.attention = Attention(attention_config, layer_idx, project_output=False)
        self.linear = LINEAR[config.linear_mixers[layer_idx]](linear_config, layer_idx, project_output=False)
        D, V = config.head_dim, config.linear_value_head_dim
        self.fusion = config.intra_fusion
        self.branch_norm = RMSNorm(D, config.rms_norm_eps) if config.intra_branch_norm else None
        width = len(self.attention_heads) * D
        if self.fusion == "concat":
            width += len(self.linear_heads) * V
        self.z_proj = nn.Linear(config.hidden_size, width, bias=False) if self.fusion == "gate" else None
        self.o_proj = nn.Linear(width, config.hidden_size, bias=config.attention_out_bias) if project_output else None

    @classmethod
    def static_layer(cls, config, layer_idx, batch_size, max_cache_len, dtype, device) -> StaticIntra:
        attention_config, linear_config = branch_configs(config, layer_idx)
        kv = Attention.static_layer(attention_config, layer_idx, batch_size, max_cache_len, dtype, device)
        linear = LINEAR[config.linear_mixers[layer_idx]].static_layer(linear_config, layer_idx, batch_size,
                                                                      max_cache_len, dtype, device)
        return StaticIntra(kv, linear)

    def state_size(self, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
        return self.attention.state_size(context_len, dtype) + self.linear.state_size(context_len, dtype)

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        B, T, _ = x.shape
        kv, rec = (state.kv, state.linear) if isinstance(state, StaticIntra) else (state, state)
        a, _ = self.attention(x, info, kv)  # (B, T, Ha * D)
        if self.branch_norm is not None:
            a = self.branch_norm(a.view(B, T, len(self.attention_heads), -1)).view(B, T, -1)
        lin, _ = self.linear(x, info, rec)  # (B, T, Hl * V), normed by the mixer itself
        if self.fusion == "concat":
            o = torch.cat([a, lin.to(a.dtype)], dim=-1)
        elif self.fusion == "subtract":
            o = a - lin
        elif self.fusion == "sum":
            o = a + lin
        else:
            z = torch.sigmoid(self.z_proj(x))
            o = z * a + (1 - z) * lin
        return (o if self.o_proj is None else self.o_proj(o)), state
