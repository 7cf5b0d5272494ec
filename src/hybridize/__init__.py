"""hybridize: turn a pretrained Transformer LM into a fast hybrid-attention model.

Importing this package registers the `hybridize` model type with transformers' Auto classes, so that
`AutoConfig` / `AutoModelForCausalLM.from_pretrained(dir)` load our checkpoints (a saved checkpoint also carries its
own code: `trust_remote_code=True` loads it without hybridize, `hybridize.models.portable`). It imports neither
torch nor transformers itself (together ~2.5 s, which `hybridize --help` should not wait for): the model classes load
on first use (`hybridize.HybridConfig`, ...), and the registration runs once transformers' Auto classes are imported,
at once if they already are (`hybridize.models` registers when it is imported). It never imports Triton or fla: the
GPU kernels are loaded on first use on a CUDA tensor (`hybridize.mixers.kernels`).

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
    pretrain                   training any model from scratch: layer mixes, presets, the teachers' recipes
    teacher                    training a teacher from scratch (the Transformer preset of pretrain)
    evaluation                 `hybridize eval`: the runner, the report, the lm-eval adapter
    sweep                      `hybridize sweep`: grids of pretrain runs scored on perplexity and recall
    bench -> demo -> cli       speed benchmarks, the demo, the command line
"""

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_MODELS = ("HybridCache", "HybridConfig", "HybridForCausalLM", "HybridModel", "HybridStaticCache")
_AUTO = "transformers.models.auto"  # the module of transformers' Auto classes


def __getattr__(name: str):
    if name in _MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODELS))


def _register() -> None:
    from . import models  # noqa: F401  (registers the model type; nothing to do while it is being imported)


class _ThenRegister(importlib.abc.Loader):
    """The loader of transformers' Auto module, then `_register`."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class _RegisterWithAutoClasses(importlib.abc.MetaPathFinder):
    """Watches for the import of transformers' Auto module (once) and registers the model type right after it."""

    def find_spec(self, name, path=None, target=None):
        if name != _AUTO:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


if _AUTO in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterWithAutoClasses) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithAutoClasses())

__all__ = [*_MODELS, "__version__"]
