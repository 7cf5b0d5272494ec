"""Shapes of the teacher families we benchmark against, as transformers config fields (weights are random in
benchmarks: speed does not depend on their values). Sources: the public config.json of each checkpoint; "tiny" is
ours, for CPU runs."""

from __future__ import annotations

SHAPES: dict[str, dict] = {
    # A Qwen3-shaped toy for CPU runs of the benchmarks and their tests (not a real checkpoint).
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
    ),
    "qwen3-0.6b": dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
    ),
    "qwen3-1.7b": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
    ),
    "qwen3-8b": dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, qk_norm=True, tie_word_embeddings=False, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
    ),
    "qwen3-32b": dict(
        vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, qk_norm=True, tie_word_embeddings=False, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
    ),
    "llama-3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, qk_norm=False, tie_word_embeddings=True, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5,
    ),
}


def shape_config(name: str, **overrides) -> dict:
    """Config fields of a built-in shape, with overrides."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; built in: {sorted(SHAPES)}")
    return {**SHAPES[name], **overrides}
