"""Mixers: one contract (`base.Mixer`), a registry keyed by the names used in `HybridConfig`."""

from .attention import Attention
from .base import Mixer, SeqInfo
from .intra import IntraLayer
from .registry import LINEAR

MIXERS: dict[str, type[Mixer]] = {
    "attention": Attention,
    **LINEAR,
    "intra": IntraLayer,  # a 'hybrid' layer: attention heads and a linear mixer's heads side by side
}
LINEAR_MIXERS = tuple(LINEAR)


def build_mixer(config, layer_idx: int) -> Mixer:
    name = config.mixer_name(layer_idx)
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r} for layer {layer_idx}; available: {sorted(MIXERS)}")
    return MIXERS[name](config, layer_idx)


__all__ = ["MIXERS", "LINEAR_MIXERS", "Mixer", "SeqInfo", "build_mixer"]
