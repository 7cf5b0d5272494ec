"""Our models as an lm-eval model named "hybridize" (lm-eval 0.4.13, the optional `[lm-eval]` extra).

lm-eval's `HFLM` already does the work: batched loglikelihood (right-padded, no mask: causal models never look at
the padding after a sequence), rolling loglikelihood, and `generate_until` through `model.generate` on left-padded
batches with stop strings. `HybridizeLM` subclasses it so that `pretrained=DIR` loads a hybridize checkpoint
(`import hybridize` registers it with `AutoModelForCausalLM`), the backend is causal without guessing, the device
and dtype default to CUDA + bf16 when there is a GPU (CPU + fp32 otherwise), and nothing asks the Hugging Face Hub
about a local folder.

lm-eval's command line discovers no plugins: a model is known only once its module is imported in the same process.
`hybridize lm-eval ARGS...` (`main`) imports this module and then runs lm-eval's own command line on ARGS, so
`hybridize lm-eval --model hybridize --model_args pretrained=DIR --tasks arc_easy` behaves exactly like `lm_eval`
would with the model built in. From Python::

    import lm_eval
    from hybridize.evaluation.lm_eval_adapter import HybridizeLM
    lm_eval.simple_evaluate(model=HybridizeLM(pretrained="out/hybrid", batch_size=8), tasks=["arc_easy"])
"""

from __future__ import annotations

import os
import sys

import torch

try:
    from lm_eval.api.registry import model_registry, register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as err:  # an optional extra: say how to get it
    raise ImportError(
        f"the lm-eval adapter needs lm-eval 0.4.13 and accelerate ({err}); install them with "
        "pip install 'hybridize[lm-eval]'"
    ) from err

import hybridize  # noqa: F401  (registers the hybridize model type with transformers' Auto classes)

MODEL_NAME = "hybridize"


class HybridizeLM(HFLM):
    """`HFLM` for hybridize checkpoints (any `AutoModelForCausalLM` folder works too, e.g. the teacher).

    `pretrained` is a folder, a hub id, or a model object (then `tokenizer` must be given). Every other `HFLM`
    argument passes through (`batch_size`, `max_length`, `dtype`, `device`, ...)."""

    def __init__(self, pretrained, device: str | None = None, dtype: str | torch.dtype | None = None,
                 backend: str = "causal", **kwargs):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        if isinstance(pretrained, os.PathLike):
            pretrained = str(pretrained)
        super().__init__(pretrained=pretrained, device=device, dtype=dtype, backend=backend, **kwargs)

    def get_model_info(self) -> dict:
        info = {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                "model_dtype": str(self._model.dtype), "model_revision": self.revision, "model_sha": ""}
        if isinstance(self.pretrained, str) and not os.path.isdir(self.pretrained):
            info = {**super().get_model_info(), **{k: v for k, v in info.items() if k != "model_sha"}}
        return info


def _register() -> None:
    """Register once per process. lm-eval refuses a second class under one name, and a second import of this module
    (importlib.reload, a test that re-imports it) makes a second class: keep the first."""
    current = model_registry.get(MODEL_NAME, None)
    if current is None:
        register_model(MODEL_NAME)(HybridizeLM)
    elif (getattr(current, "__module__", None), getattr(current, "__qualname__", None)) != (__name__, "HybridizeLM"):
        raise ValueError(f"lm-eval already has a model named {MODEL_NAME!r}: {current}")


_register()


def main(argv: list[str]) -> None:
    """Run lm-eval's command line on `argv` with the "hybridize" model registered (this module is imported)."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
