"""Mixers: one contract (`base.Mixer`), a registry keyed by the names used in `HybridConfig`."""

from .attention import Attention
from .base import Mixer, SeqInfo
from .deltanet import DeltaNet
from .gated_deltanet import GatedDeltaNet
from .gla import GLA
from .hgrn import HGRN
from .hgrn2 import HGRN2
from .lightning import Lightning
from .mamba2 import Mamba2
from .retnet import RetNet

MIXERS: dict[str, type[Mixer]] = {
    "attention": Attention,
    "lightning": Lightning,
    "gated_deltanet": GatedDeltaNet,
    "gla": GLA,
    "deltanet": DeltaNet,
    "hgrn": HGRN,
    "hgrn2": HGRN2,
    "retnet": RetNet,
    "mamba2": Mamba2,
}
LINEAR_MIXERS = tuple(name for name in MIXERS if name != "attention")


def build_mixer(config, layer_idx: int) -> Mixer:
    name = config.mixer_name(layer_idx)
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r} for layer {layer_idx}; available: {sorted(MIXERS)}")
    return MIXERS[name](config, layer_idx)


__all__ = ["MIXERS", "LINEAR_MIXERS", "Mixer", "SeqInfo", "build_mixer"]
