"""The hybrid model: its config, the causal LM built from it, its caches. Importing this package registers the
`hybridize` model type with transformers' Auto classes (`AutoConfig`, `AutoModel`, `AutoModelForCausalLM`)."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import HybridCache, HybridStaticCache
from .configuration import HybridConfig
from .modeling import HybridForCausalLM, HybridModel, HybridPreTrainedModel

AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
AutoModel.register(HybridConfig, HybridModel, exist_ok=True)
AutoModelForCausalLM.register(HybridConfig, HybridForCausalLM, exist_ok=True)

__all__ = ["HybridCache", "HybridStaticCache", "HybridConfig", "HybridForCausalLM", "HybridModel",
           "HybridPreTrainedModel"]
