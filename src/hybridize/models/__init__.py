from .cache import HybridCache
from .configuration import HybridConfig
from .modeling import HybridForCausalLM, HybridModel, HybridPreTrainedModel

__all__ = ["HybridCache", "HybridConfig", "HybridForCausalLM", "HybridModel", "HybridPreTrainedModel"]
