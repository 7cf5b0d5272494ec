"""Mixers: one contract (`base.Mixer`), a registry keyed by the names used in `HybridConfig`."""

from .attention import Attention
from .base import Mixer, SeqInfo
from .gated_deltanet import GatedDeltaNet
from .gla import GLA
from .lightning import Lightning

MIXERS: dict[str, type[Mixer]] = {
    "attention": Attention,
    "lightning": Lightning,
    "gated_deltanet": GatedDeltaNet,
    "gla": GLA,
}
LINEAR_MIXERS = tuple(name for name in MIXERS if name != "attention")


def build_mixer(config, layer_idx: int) -> Mixer:
    name = config.mixer_name(layer_idx)
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r} for layer {layer_idx}; available: {sorted(MIXERS)}")
    return MIXERS[name](config, layer_idx)


__all__ = ["MIXERS", "LINEAR_MIXERS", "Mixer", "SeqInfo", "build_mixer"]
