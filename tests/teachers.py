"""Tiny random teachers of each supported family, saved like real checkpoints (config + safetensors + tokenizer).

Every parameter (biases and norm weights included) is drawn at random, so a key-map mistake cannot hide behind a
zero bias or a unit norm."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, AutoModelForCausalLM

from hybridize.data.tokenizer import train_bpe_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A hybrid model keeps a few attention layers and replaces the rest with linear mixers.",
    "The passkey is 48213. Remember it. What is the passkey? The passkey is 48213.",
    "def main():\n    print('hello world')\n    return 0\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20.",
] * 4
VOCAB = 300  # tokenizer size; the models get a few spare rows, as real checkpoints often do

FAMILIES = {
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB + 4, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        max_position_embeddings=256, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "qwen3": lambda: Qwen3Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "mistral": lambda: MistralConfig(
        vocab_size=VOCAB + 4, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=1, sliding_window=9, tie_word_embeddings=False, max_position_embeddings=128,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                         "original_max_position_embeddings": 64}),
}


def make_tokenizer():
    return train_bpe_tokenizer(TEXTS, VOCAB, min_frequency=1)


def make_teacher(family: str, out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = FAMILIES[family]()
    tok = make_tokenizer()
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = tok.bos_token_id
    config.pad_token_id = tok.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
