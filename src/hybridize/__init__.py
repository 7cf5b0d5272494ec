"""hybridize: turn a pretrained Transformer LM into a fast hybrid-attention model.

Importing this package registers the `hybridize` model type with transformers' Auto classes, so that
`AutoConfig` / `AutoModelForCausalLM.from_pretrained(dir)` load our checkpoints. It never imports Triton or fla:
the GPU kernels are loaded on first use on a CUDA tensor (`hybridize.mixers.kernels`).

Imports go one way, from the lowest layer up (tests/test_imports.py checks it, function-level imports included):

    provenance, distributed    utilities
    data                       text sources, packing, synthetic tasks
    mixers -> models           the token mixers; the hybrid model built from them
    (this package's root)      registers the model type; above models, below everything that imports `hybridize`
    convert                    teacher loading, attention -> mixer weight transfer
    metrics                    token NLL, perplexity windows, recall cells and their scoring
    distill                    losses, recipes, the training loop, curves, the model card
    selection                  the selectors and their registry (they train with distill's loop)
    pipeline                   the conversion: align, select, distill, finetune, export; the recipe's selector
                               is checked against the registry here
    teacher                    training a teacher from scratch
    evaluation                 `hybridize eval`: the runner, the report, the lm-eval adapter
    bench -> demo -> cli       speed benchmarks, the demo, the command line
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models import HybridCache, HybridConfig, HybridForCausalLM, HybridModel, HybridStaticCache

__version__ = "0.1.0"

AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
AutoModel.register(HybridConfig, HybridModel, exist_ok=True)
AutoModelForCausalLM.register(HybridConfig, HybridForCausalLM, exist_ok=True)

__all__ = ["HybridCache", "HybridConfig", "HybridForCausalLM", "HybridModel", "HybridStaticCache", "__version__"]
