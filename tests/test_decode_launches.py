"""Launches of one decode step (`benchmarks/decode_launches.py`: counted on the CPU with the GPU's fused kernels in
Triton's interpreter): per layer, what the fused decode path has brought them down to, so that a change that adds
launches to the step the GPU replays fails here, with the breakdown printed."""

from __future__ import annotations

import torch

from conftest import load_script
from hybridize import HybridConfig, HybridForCausalLM


def _model(**overrides) -> HybridForCausalLM:
    mixers = ["lightning", None, "retnet", "gated_deltanet", None, "deltanet", "gla"]
    types = ["linear_attention" if m else "full_attention" for m in mixers]
    fields = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=len(mixers), num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, qk_norm=True, layer_types=types, linear_mixers=mixers,
                  max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(0)
    return HybridForCausalLM(HybridConfig(**{**fields, **overrides})).to(torch.bfloat16).eval()


def test_decode_step_launches_per_layer(triton_device):
    script = load_script("benchmarks/decode_launches.py")
    for name, overrides in [("rope", {}),
                            ("hype + output gate", dict(attention_rope=False, hype_a=500.0,
                                                        attention_output_gate=True))]:
        counted = script.count_step(_model(**overrides))
        for layer in counted["by_layer"]:
            print(name, layer["layer"], layer["type"], layer["mixer"], layer["launches"], layer["ops"])
        print(name, "outside the layers", counted["outside"])
        linear = [lay["launches"] for lay in counted["by_layer"]
                  if lay["type"] == "linear_attention" and lay["mixer"] != "GLA"]
        gla = [lay["launches"] for lay in counted["by_layer"] if lay["mixer"] == "GLA"]
        attention = [lay["launches"] for lay in counted["by_layer"] if lay["type"] == "full_attention"]
        # norm + add-norm, 4 matmuls (GatedDeltaNet's gate inputs in the first), the one-kernel mixer step, the gated
        # output norm, SiLU * up (the first layer has no previous add to fuse, so a plain norm); attention: 2
        # add-norms, 4 matmuls, prologue, split, merge, SiLU * up
        assert max(linear) <= 9, linear
        assert gla and max(gla) <= 11, gla  # its gate's two low-rank matmuls besides
        assert max(attention) <= 10, attention
        assert counted["outside"]["launches"] <= 6, counted["outside"]  # embedding, cache bookkeeping, rotary tables,
        # final add-norm, lm_head and a cast
        assert counted["total"] == sum(linear) + sum(gla) + sum(attention) + counted["outside"]["launches"]


def test_the_count_sees_the_unfused_step(triton_device):
    """The counter is not blind: the same step as the CPU runs it (every norm, RoPE, the recurrence and the cache
    writes as PyTorch operators) counts far more launches."""
    script = load_script("benchmarks/decode_launches.py")
    model = _model(attention_rope=False, hype_a=500.0, attention_output_gate=True)
    fused, unfused = script.count_step(model)["total"], script.count_step(model, fused=False)["total"]
    print("launches per step: fused", fused, "unfused", unfused)
    assert unfused > 2 * fused, (fused, unfused)
