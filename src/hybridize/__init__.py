"""hybridize: turn a pretrained Transformer LM into a fast hybrid-attention model.

Importing this package registers the `hybridize` model type with transformers' Auto classes, so that
`AutoConfig` / `AutoModelForCausalLM.from_pretrained(dir)` load our checkpoints. It never imports Triton or fla:
the GPU kernels are loaded on first use on a CUDA tensor (`hybridize.mixers.kernels`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models import HybridCache, HybridConfig, HybridForCausalLM, HybridModel, HybridStaticCache

__version__ = "0.1.0"

AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
AutoModel.register(HybridConfig, HybridModel, exist_ok=True)
AutoModelForCausalLM.register(HybridConfig, HybridForCausalLM, exist_ok=True)

__all__ = ["HybridCache", "HybridConfig", "HybridForCausalLM", "HybridModel", "HybridStaticCache", "__version__"]
