"""Loading models and tokenizers for evaluation, and choosing where to run."""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA + bf16 when a GPU is there, CPU + fp32 otherwise; either can be forced."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use device='cpu'")
    dt = DTYPES[dtype] if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    return dev, dt


def check_model_dir(path: str | Path, what: str = "model") -> Path:
    """A folder holding a transformers config.json, or a FileNotFoundError that says what is missing."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory {path} has no config.json (not a saved transformers model)")
    return p


def has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_tokenizer(path: str | Path):
    """The tokenizer saved in `path`, left-padding, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not has_tokenizer(p):
        raise FileNotFoundError(f"no tokenizer in {path} (tokenizer.json / tokenizer_config.json); "
                                "give one with --tokenizer DIR")
    tok = AutoTokenizer.from_pretrained(p)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"the tokenizer in {path} has neither a pad nor an EOS token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, device: torch.device, dtype: torch.dtype):
    """Any `AutoModelForCausalLM` folder (hybridize checkpoints included), in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    import hybridize  # noqa: F401  (registers our model type with the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(check_model_dir(path), dtype=dtype)
    return model.to(device).eval()
