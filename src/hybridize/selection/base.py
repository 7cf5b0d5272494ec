"""What a layer selector receives and what it returns.

    result = selector(ctx, k)     # SelectionResult: k distinct layers, one score per layer, tokens spent, details

`SelectionContext` carries the teacher (an all-attention `HybridForCausalLM`, frozen; under torchrun, where the
selectors that train run on every rank, also the copy of it sharded over the ranks: `frozen_teacher`), its tokenizer, the recipe
(whose `select` section holds the selectors' numbers and whose seed seeds them), the data spec, the device, the run
directory and, for the selectors that need them, the stage-1 mixers (`ctx.aligned()`: an all-linear model whose
layer i holds the aligned mixer of layer i).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..convert import build_student, student_config
from ..data.sources import iter_documents
from ..data.synthetic import FillerTokens
from ..distill.recipe import Recipe
from ..distributed import sharded
from ..models import HybridConfig, HybridForCausalLM


@dataclass
class SelectionResult:
    layers: list[int]  # the k chosen layers, ascending ([] for a selection of KV-head groups)
    scores: list  # one number per layer (higher = keep attention), or per layer a list of one per KV-head group
    tokens: int  # tokens run through the models (training and evaluation)
    details: dict[str, Any] = field(default_factory=dict)  # per-layer measurements, settings, ...
    groups: list[list[int]] | None = None  # an intra-layer selection: the kept KV-head groups of each layer


@dataclass
class SelectionContext:
    teacher: HybridForCausalLM  # all attention, the teacher's own semantics (RoPE, no HyPE)
    tokenizer: Any
    recipe: Recipe  # `recipe.select` holds the selectors' numbers, `recipe.seed` seeds them
    run_dir: Path
    device: torch.device
    data: str | list[str] | None = None  # the conversion's data spec (None = the built-in corpus)
    aligned_dir: Path | None = None  # stage 1's all-linear model (stages/align/model), when stage 1 has run
    aligned_model: HybridForCausalLM | None = None  # or the model itself (then aligned_dir is not read)
    # what training selectors run the teacher forward with (under torchrun: `Conversion.frozen_teacher()`, whose
    # decoder is an FSDP root); None: `teacher`. `teacher` itself keeps feeding the weight transfer.
    frozen_teacher: HybridForCausalLM | None = None
    _filler: FillerTokens | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.device = torch.device(self.device)

    @property
    def running_teacher(self) -> HybridForCausalLM:
        """The teacher to run forward in training (see `frozen_teacher`)."""
        return self.teacher if self.frozen_teacher is None else self.frozen_teacher

    @property
    def settings(self):
        return self.recipe.select

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def num_layers(self) -> int:
        return self.teacher.config.num_hidden_layers

    @property
    def eval_data(self):
        """Text for held-out scores: `select.eval_data`, else the conversion's data."""
        return self.settings.eval_data if self.settings.eval_data is not None else self.data

    def aligned(self, selector: str) -> HybridForCausalLM:
        """The stage-1 model (frozen, eval mode, on the device), or a ValueError saying to run stage 1 first."""
        if self.aligned_model is None:
            if self.aligned_dir is None or not (Path(self.aligned_dir) / "config.json").is_file():
                raise ValueError(f"selector {selector!r} swaps in the stage-1 aligned mixers, but stage 1 has not run "
                                 f"(no {self.aligned_dir or 'stages/align/model'}): run `hybridize align` first, or "
                                 "`hybridize convert` with the align stage")
            self.aligned_model = HybridForCausalLM.from_pretrained(self.aligned_dir)
        model = self.aligned_model
        if model.config.num_hidden_layers != self.num_layers or model.config.attention_layers:
            raise ValueError(f"the aligned model must be all-linear with {self.num_layers} layers like the teacher, "
                             f"got layer_types {model.config.layer_types}")
        if not sharded():  # under torchrun FSDP moves the shards of what a selector trains with
            model = model.to(self.device)
        self.aligned_model = model.eval().requires_grad_(False)
        return self.aligned_model

    def filler(self) -> FillerTokens:
        """Haystack text for the synthetic tasks: the conversion's data, tokenized once (at most 2^20 tokens)."""
        if self._filler is None:
            self._filler = FillerTokens.build(self.tokenizer, iter_documents(self.data))
        return self._filler

    def student_config(self, attention_layers: list[int]) -> HybridConfig:
        """The config of the stage-2 hybrid with attention in `attention_layers` (HyPE etc. as the recipe says)."""
        r = self.recipe
        return student_config(self.teacher.config, attention_layers, r.mixer, hype=r.hype, hype_a=r.hype_a,
                              conv_size=r.conv_size)


Selector = Callable[[SelectionContext, int], SelectionResult]


def top_k(scores: Sequence[float], k: int, tiebreak: Sequence | None = None) -> list[int]:
    """The k layers with the highest score, ascending. Equal scores: the higher `tiebreak` (a number or a tuple of
    numbers per layer, compared in order), then the lower index."""
    def key(i: int):
        extra = () if tiebreak is None else tiebreak[i]
        extra = extra if isinstance(extra, tuple) else (extra,)
        return (-scores[i], *(-x for x in extra), i)

    return sorted(sorted(range(len(scores)), key=key)[:k])


def check_groups_per_layer(per_layer: int, num_layers: int, groups: int, k: int) -> None:
    """`select.groups_per_layer` groups in each of `num_layers` layers fit a budget of k KV-head groups and each
    layer's `groups` (ValueError naming the field otherwise)."""
    if per_layer * num_layers > k or per_layer > groups:
        raise ValueError(f"select.groups_per_layer={per_layer}: {num_layers} layers x {per_layer} groups must fit the "
                         f"budget's {k} KV-head groups and each layer's {groups}")


def top_k_groups(scores: Sequence[float], num_layers: int, k: int, per_layer: int = 0,
                 tiebreak: Sequence | None = None) -> list[list[int]]:
    """The k KV-head groups (scores flat, layer-major: num_layers x G) with the highest scores, as each layer's kept
    groups, ascending; with `per_layer`, every layer first keeps its own `per_layer` best, and the rest of k go to the
    best groups left anywhere. Ties as in `top_k`."""
    G = len(scores) // num_layers
    check_groups_per_layer(per_layer, num_layers, G, k)
    chosen: set[int] = set()
    for i in range(num_layers):
        own = range(i * G, (i + 1) * G)
        best = top_k([scores[j] for j in own], per_layer, None if tiebreak is None else [tiebreak[j] for j in own])
        chosen.update(i * G + j for j in best)
    rest = [j for j in range(len(scores)) if j not in chosen]
    extra = top_k([scores[j] for j in rest], k - len(chosen), None if tiebreak is None else [tiebreak[j] for j in rest])
    chosen.update(rest[j] for j in extra)
    return [[j for j in range(G) if i * G + j in chosen] for i in range(num_layers)]


# The fields of a linear mixer's config: what the teacher's config lacks to hold the aligned mixers.
_LINEAR_FIELDS = ("linear_num_heads", "linear_head_dim", "linear_value_head_dim", "linear_rope", "linear_qk_norm",
                  "linear_qkv_bias", "linear_conv_size", "gla_gate_low_rank_dim", "gla_gate_logit_normalizer")


def swap_config(teacher: HybridConfig, aligned: HybridConfig, linear_layers: Sequence[int]) -> HybridConfig:
    """The teacher's config with `linear_layers` turned into the aligned model's mixers; every other layer keeps the
    teacher's attention exactly (its RoPE, no HyPE, no output gate): the setting stage 1 aligned the mixers in."""
    fields = teacher.to_diff_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        fields.pop(key, None)
    linear = set(linear_layers)
    fields.update({name: getattr(aligned, name) for name in _LINEAR_FIELDS})
    fields["layer_types"] = ["linear_attention" if i in linear else t for i, t in enumerate(teacher.layer_types)]
    fields["linear_mixers"] = [aligned.linear_mixers[i] if i in linear else None
                               for i in range(teacher.num_hidden_layers)]
    return HybridConfig(**fields)


def swap_group_config(teacher: HybridConfig, aligned: HybridConfig, layer: int, group: int,
                      intra_fusion: str = "concat", intra_branch_norm: bool = True) -> HybridConfig:
    """The teacher's config with KV-head group `group` of `layer` (its query heads) turned into the aligned mixer's
    heads, an intra-layer block beside the layer's other groups; every other layer and group keeps the teacher's
    attention exactly, as in `swap_config` (HALO's single swap at head level)."""
    G = teacher.num_key_value_heads
    kv = [list(range(G)) for _ in range(teacher.num_hidden_layers)]
    kv[layer] = [g for g in range(G) if g != group]
    fields = student_config(teacher, [], aligned.linear_mixers[layer], hype=False, conv_size=aligned.linear_conv_size,
                            kv_groups=kv, intra_fusion=intra_fusion, intra_branch_norm=intra_branch_norm).to_diff_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        fields.pop(key, None)
    fields.update({name: getattr(aligned, name) for name in _LINEAR_FIELDS})
    return HybridConfig(**fields)


def swapped_model(teacher: HybridForCausalLM, aligned: HybridForCausalLM,
                  linear_layers: Sequence[int] = (), config: HybridConfig | None = None) -> HybridForCausalLM:
    """The teacher with the aligned mixers swapped into `linear_layers` (HALO's single-swap model), or built to
    `config` (`swap_group_config`), on the teacher's device and dtype, frozen, in eval mode."""
    device = next(teacher.parameters()).device
    config = config or swap_config(teacher.config, aligned.config, linear_layers)
    with torch.device(device):  # build on the device: a 1.7B model initialised on the CPU takes a while
        model = build_student(teacher, config, aligned)
    return model.eval().requires_grad_(False)
