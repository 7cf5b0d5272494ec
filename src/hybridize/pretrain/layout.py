"""The layer mix of a hybrid trained from scratch, as the design-space studies name it (METHODS.md): a ratio of
linear to attention layers, where the attention goes, and whether it takes whole layers or heads inside each layer.

    layer_mix(12, 6, "gla", "3:1")                      # attention in layers 3, 7, 11; GLA elsewhere
    layer_mix(12, 6, "gla", "5:1", fusion="intra")      # every layer keeps 1 of its 6 KV-head groups as attention

Ratios:
- "N:1": N linear layers per attention layer. k = round(L / (N + 1)) attention layers (at least one), each closing a
  group of ~L/k layers, so never the first (`placement="uniform"`, the hybrid linear-attention study's layout and our
  `uniform` selector's), or spread evenly over the middle half of the stack (`placement="middle"`, what the fusion
  study recommends). Where L / (N + 1) is not whole the ratio is the nearest one the depth allows: 12 layers at 6:1
  keep 2 (10:2 = 5:1), at 12:1 one (11:1); `mix_summary` says what a config really holds.
- "all-linear": every layer runs the mixer. "transformer": every layer is softmax attention.

Fusion:
- "inter": whole layers are attention or linear.
- "intra": the same number of KV-head groups as the inter-layer mix keeps (k x groups per layer) is spread over every
  layer (`uniform_groups`): each layer keeps some of its groups as softmax attention with their query heads and runs
  the mixer on the other heads (`hybridize.mixers.intra`). At one ratio the two keep the same KV cache and, with
  `concat` fusion, the same projections: the same parameter count up to the per-layer norms and gates
  (`mix_summary` and the sweep record it). 12 layers of 6 groups at 5:1: inter keeps 2 layers x 6 groups, intra 1 group
  in each of the 12 layers, both 12 of 72 groups. The placement of an intra mix is always uniform (every layer).
"""

from __future__ import annotations

import re

from ..names import LAYER_FUSIONS as FUSIONS
from ..names import PLACEMENTS
_RATIO = re.compile(r"^(\d+):1$")


def parse_ratio(text: str) -> str:
    """A ratio as the studies write it: "transformer", "all-linear" or "N:1" (N >= 1 linear layers per attention
    layer); returned normalised."""
    t = str(text).strip().lower()
    if t in ("transformer", "all-linear"):
        return t
    m = _RATIO.match(t)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"ratio {text!r}: allowed: transformer, all-linear, or N:1 with N >= 1 linear layers per "
                         "attention layer (e.g. 24:1, 12:1, 6:1, 3:1)")
    return f"{int(m.group(1))}:1"


def attention_layer_count(num_layers: int, ratio: str) -> int:
    """Attention layers of an inter-layer mix at `ratio` (the number of layers' worth of KV-head groups an intra mix
    keeps)."""
    ratio = parse_ratio(ratio)
    if ratio == "transformer":
        return num_layers
    if ratio == "all-linear":
        return 0
    n = int(ratio.split(":")[0])
    return min(num_layers, max(1, round(num_layers / (n + 1))))


def attention_layers(num_layers: int, k: int, placement: str = "uniform") -> list[int]:
    """Which k layers are attention: `uniform` (each closing a group of ~L/k layers) or `middle` (the same spacing
    inside the middle half of the stack, layers L//4 .. L - L//4 - 1)."""
    from ..selection.uniform import uniform_layers

    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}; allowed: {list(PLACEMENTS)}")
    if placement == "uniform" or k == num_layers:
        return uniform_layers(num_layers, k)
    start = num_layers // 4
    span = num_layers - 2 * start
    if k > span:
        raise ValueError(f"placement 'middle' puts {k} attention layers in the middle {span} of {num_layers} layers; "
                         "use placement 'uniform' or fewer attention layers")
    return [start + i for i in uniform_layers(span, k)]


def layer_mix(num_layers: int, num_kv_heads: int, mixer: str | None, ratio: str, fusion: str = "inter",
              placement: str = "uniform") -> dict:
    """The `HybridConfig` fields of the mix: `layer_types`, `linear_mixers` and `attention_kv_heads`."""
    from ..names import LINEAR_MIXER_NAMES

    ratio = parse_ratio(ratio)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r}; allowed: {list(FUSIONS)}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}; allowed: {list(PLACEMENTS)}")
    L = num_layers
    if ratio == "transformer":
        return {"layer_types": ["full_attention"] * L, "linear_mixers": None, "attention_kv_heads": None}
    if mixer not in LINEAR_MIXER_NAMES:
        raise ValueError(f"mixer {mixer!r}; allowed: {list(LINEAR_MIXER_NAMES)}")
    k = attention_layer_count(L, ratio)
    if fusion == "inter" or k == 0:
        keep = set(attention_layers(L, k, placement)) if k else set()
        types = ["full_attention" if i in keep else "linear_attention" for i in range(L)]
        return {"layer_types": types, "linear_mixers": mixer, "attention_kv_heads": None}
    if placement != "uniform":
        raise ValueError("an intra-layer mix spreads its KV-head groups over every layer: placement must be 'uniform'")
    from ..selection.uniform import uniform_groups

    groups = uniform_groups(L, num_kv_heads, k * num_kv_heads)
    types, kept = [], []
    for g in groups:
        if len(g) == num_kv_heads:
            types.append("full_attention")
            kept.append(None)
        elif not g:
            types.append("linear_attention")
            kept.append(None)
        else:
            types.append("hybrid")
            kept.append(list(g))
    return {"layer_types": types, "linear_mixers": mixer, "attention_kv_heads": kept}


def mix_summary(config) -> dict:
    """What a config's mix holds: attention / linear / hybrid layers, the KV-head groups kept as attention and the
    ratio of linear to attention heads it amounts to (e.g. "5:1")."""
    from fractions import Fraction

    types = list(config.layer_types)
    G = config.num_key_value_heads
    kept_groups = 0
    for i, t in enumerate(types):
        if t in ("full_attention", "sliding_attention"):
            kept_groups += G
        elif t in ("hybrid", "hybrid_sliding"):
            kept_groups += len(config.attention_kv_heads[i])
    total = len(types) * G
    if kept_groups == 0:
        ratio = "all-linear"
    elif kept_groups == total:
        ratio = "transformer"
    else:
        share = Fraction(total - kept_groups, kept_groups)
        ratio = f"{share.numerator}:{share.denominator}"
    return {"attention_layers": [i for i, t in enumerate(types) if t in ("full_attention", "sliding_attention")],
            "hybrid_layers": [i for i, t in enumerate(types) if t in ("hybrid", "hybrid_sliding")],
            "linear_layers": [i for i, t in enumerate(types) if t == "linear_attention"],
            "attention_kv_groups": kept_groups, "kv_groups": total, "actual_ratio": ratio}


__all__ = ["FUSIONS", "PLACEMENTS", "attention_layer_count", "attention_layers", "layer_mix", "mix_summary",
           "parse_ratio"]
