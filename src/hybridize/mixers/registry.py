"""The linear mixers by the names `HybridConfig.linear_mixers` uses (`hybridize.names.LINEAR_MIXER_NAMES`): what a
linear layer and an intra-layer block's linear branch are built from. `hybridize.mixers.MIXERS` adds attention and
the intra-layer block."""

from .base import Mixer
from .deltanet import DeltaNet
from .gated_deltanet import GatedDeltaNet
from .gla import GLA
from .hgrn import HGRN
from .hgrn2 import HGRN2
from .lightning import Lightning
from .mamba2 import Mamba2
from .retnet import RetNet

LINEAR: dict[str, type[Mixer]] = {
    "lightning": Lightning,
    "gated_deltanet": GatedDeltaNet,
    "gla": GLA,
    "deltanet": DeltaNet,
    "hgrn": HGRN,
    "hgrn2": HGRN2,
    "retnet": RetNet,
    "mamba2": Mamba2,
}
