from .cache import HybridCache, HybridStaticCache
from .configuration import HybridConfig
from .modeling import HybridForCausalLM, HybridModel, HybridPreTrainedModel

__all__ = ["HybridCache", "HybridStaticCache", "HybridConfig", "HybridForCausalLM", "HybridModel",
           "HybridPreTrainedModel"]
