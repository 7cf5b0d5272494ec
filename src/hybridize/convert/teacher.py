"""Loading a Hugging Face teacher (Llama, Qwen2, Qwen3, Mistral) as a `HybridForCausalLM` with every layer kept as
attention, so that teacher and student run through one implementation. The logits equal the original transformers
class's (tests check every family); the state dict moves over by a declarative key map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from ..models import HybridConfig, HybridForCausalLM

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")

# HF name -> ours; everything not listed keeps its name.
KEY_MAP = {".self_attn.": ".mixer."}


@dataclass
class Teacher:
    model: HybridForCausalLM  # all-attention, the teacher's own semantics (RoPE, no HyPE)
    tokenizer: object
    family: str
    source: str  # the directory or hub id it came from
    saved_dtype: torch.dtype  # the dtype its checkpoint was saved in (a converted model is saved the same way)


def teacher_config(hf: PreTrainedConfig) -> HybridConfig:
    """Our config for an HF config of a supported family: same shapes, same attention, every layer attention."""
    family = hf.model_type
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unsupported architecture {getattr(hf, 'architectures', None) or family} (model_type "
                         f"{family!r}); supported model types: {list(SUPPORTED_FAMILIES)}")
    L = hf.num_hidden_layers
    bias = bool(getattr(hf, "attention_bias", False))
    fields = dict(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_hidden_layers=L, num_attention_heads=hf.num_attention_heads,
        num_key_value_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        hidden_act=hf.hidden_act, max_position_embeddings=hf.max_position_embeddings, rms_norm_eps=hf.rms_norm_eps,
        tie_word_embeddings=bool(hf.tie_word_embeddings), rope_parameters=dict(hf.rope_parameters),
        initializer_range=getattr(hf, "initializer_range", 0.02), bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id, pad_token_id=getattr(hf, "pad_token_id", None),
        # Qwen2 always has q/k/v bias and no o bias; Llama / Qwen3 put attention_bias on all four; Mistral none.
        attention_bias=True if family == "qwen2" else (bias if family in ("llama", "qwen3") else False),
        attention_out_bias=bias if family in ("llama", "qwen3") else False,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)), qk_norm=family == "qwen3",
    )
    layer_types = list(getattr(hf, "layer_types", None) or [])
    window = getattr(hf, "sliding_window", None)
    if family == "mistral":  # Mistral applies its window (when set) to every layer
        layer_types = ["sliding_attention" if window else "full_attention"] * L
    if not layer_types:
        layer_types = ["full_attention"] * L
    unknown = set(layer_types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"teacher layer_types {sorted(unknown)} are not supported; only full and sliding attention")
    fields["layer_types"] = layer_types
    fields["sliding_window"] = window if "sliding_attention" in layer_types else None
    return HybridConfig(**fields)


def convert_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in hf_state.items():
        for old, new in KEY_MAP.items():
            name = name.replace(old, new)
        out[name] = tensor
    return out


def _check_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"teacher folder {path} has no config.json")
    weights = list(path.glob("*.safetensors"))
    if not weights:
        found = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(f"teacher folder {path} has no .safetensors weights (found: {found})")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"teacher folder {path} has no tokenizer (tokenizer.json or tokenizer.model)")


def load_teacher(source: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Teacher:
    """A local checkpoint folder (config.json + safetensors + tokenizer) or a hub id (when the hub is reachable)."""
    path = Path(source).expanduser()
    local = path.exists()
    if local:
        if not path.is_dir():
            raise FileNotFoundError(f"teacher must be a checkpoint folder or a hub id, got the file {path}")
        _check_dir(path)
    elif str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"teacher folder not found: {source}")
    if local:  # say "unsupported" before transformers tries to resolve an architecture it may not know
        family = json.loads((path / "config.json").read_text()).get("model_type")
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(f"unsupported architecture (model_type {family!r} in {path / 'config.json'}); "
                             f"supported model types: {list(SUPPORTED_FAMILIES)}")
    hf_config = AutoConfig.from_pretrained(str(source))
    config = teacher_config(hf_config)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    _check_vocab(tokenizer, config.vocab_size, source)
    hf_model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    state = convert_state_dict(hf_model.state_dict())
    del hf_model
    model = HybridForCausalLM(config).to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"teacher weights of {source} do not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    saved = hf_config.dtype if isinstance(hf_config.dtype, torch.dtype) else torch.float32
    return Teacher(model.to(device).eval(), tokenizer, hf_config.model_type, str(source), saved)


def _check_vocab(tokenizer, vocab_size: int, source) -> None:
    largest = max(tokenizer.get_vocab().values())
    if largest >= vocab_size:
        raise ValueError(f"the tokenizer of {source} has token ids up to {largest}, but the model's vocab_size is "
                         f"{vocab_size}: tokenizer and model do not match")
