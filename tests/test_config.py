"""Every invalid config raises ValueError naming the field and what is allowed."""

from __future__ import annotations

import pytest

from hybridize import HybridConfig, HybridForCausalLM

BASE = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            layer_types=["linear_attention", "full_attention", "linear_attention"], linear_mixers="lightning")

BAD = {
    "unknown mixer": (dict(linear_mixers="mamba9"), r"linear_mixers\[0\]='mamba9' is not a linear mixer; allowed: \['lightning'"),
    "missing mixer": (dict(linear_mixers=None), "linear_mixers must name the mixer"),
    "mixer on attention layer": (dict(linear_mixers=["gla", "gla", "gla"]), r"linear_mixers\[1\]='gla' but layer_types\[1\]='full_attention'"),
    "mixer list length": (dict(linear_mixers=["gla", None]), "linear_mixers has 2 entries but num_hidden_layers=3"),
    "layer list length": (dict(num_hidden_layers=4), "layer_types has 3 entries but num_hidden_layers=4"),
    "unknown layer type": (dict(layer_types=["linear_attention", "mamba", "linear_attention"]), r"layer_types\[1\]='mamba' is not a layer type; allowed"),
    "heads do not divide hidden": (dict(hidden_size=30), "hidden_size=30 is not divisible by num_attention_heads=4"),
    "kv heads do not divide heads": (dict(num_key_value_heads=3), "num_attention_heads=4 must be a multiple of num_key_value_heads=3"),
    "negative hidden": (dict(hidden_size=-8), "hidden_size must be a positive integer, got -8"),
    "zero layers": (dict(num_hidden_layers=0, layer_types=[], linear_mixers=[]), "num_hidden_layers must be a positive integer"),
    "negative head_dim": (dict(head_dim=-2), "head_dim must be a positive integer"),
    "hype a = 1": (dict(hype_a=1.0), r"hype_a must be > 1"),
    "hype a < 1": (dict(hype_a=0.5), r"hype_a must be > 1"),
    "sliding without window": (dict(layer_types=["linear_attention", "sliding_attention", "linear_attention"]), "sliding_window must be a positive integer"),
    "negative window": (dict(sliding_window=-4), "sliding_window must be a positive integer or None"),
    "negative conv": (dict(linear_conv_size=-1), "linear_conv_size must be >= 0"),
    "linear heads": (dict(linear_num_heads=0), "linear_num_heads must be a positive integer"),
    "rope dims differ": (dict(linear_head_dim=12), "linear_rope=True needs linear_head_dim == head_dim"),
    "odd head dim with rope": (dict(head_dim=7, hidden_size=32), "head_dim must be even"),
    "gla normalizer": (dict(gla_gate_logit_normalizer=0.0), "gla_gate_logit_normalizer must be > 0"),
    # intra-layer ('hybrid') layers, 4 heads in 2 KV-head groups
    "hybrid without groups": (dict(num_key_value_heads=2, layer_types=["hybrid", "full_attention", "linear_attention"]),
                              r"attention_kv_heads must list, for each 'hybrid' layer, the KV-head groups .* \(0..1\)"),
    "groups on a linear layer": (dict(num_key_value_heads=2, attention_kv_heads=[[0], None, None]),
                                 r"attention_kv_heads\[0\]=\[0\] but layer_types\[0\]='linear_attention'"),
    "all groups kept": (dict(num_key_value_heads=2, layer_types=["hybrid", "full_attention", "linear_attention"],
                             attention_kv_heads=[[0, 1], None, None]), "keeps some but not all of its KV-head groups"),
    "group out of range": (dict(num_key_value_heads=2, layer_types=["hybrid", "full_attention", "linear_attention"],
                                attention_kv_heads=[[2], None, None]), r"distinct indices in 0..1"),
    "groups list length": (dict(num_key_value_heads=2, attention_kv_heads=[None]), "attention_kv_heads has 1 entries"),
    "unknown fusion": (dict(intra_fusion="mean"), r"intra_fusion='mean'; allowed: \['concat', 'subtract', 'sum', 'gate'\]"),
    "subtract of unequal widths": (dict(num_attention_heads=8, num_key_value_heads=4, hidden_size=64,
                                        layer_types=["hybrid", "full_attention", "linear_attention"],
                                        attention_kv_heads=[[0], None, None], intra_fusion="subtract"),
                                   "intra_fusion='subtract' joins two branches of one width, but layer 0's attention "
                                   "branch is 16 wide and its linear branch 48"),
    "split heads need as many linear heads": (dict(num_key_value_heads=2, linear_num_heads=8,
                                                   layer_types=["hybrid", "full_attention", "linear_attention"],
                                                   attention_kv_heads=[[0], None, None]),
                                              r"linear_num_heads \(8\) must equal num_attention_heads \(4\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_config_names_field_and_allowed_values(case):
    overrides, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        HybridConfig(**{**BASE, **overrides})


def test_unknown_rope_type_is_rejected_when_building():
    with pytest.raises((ValueError, KeyError)) as err:
        HybridForCausalLM(HybridConfig(**BASE, rope_parameters={"rope_type": "spiral", "rope_theta": 1e4}))
    assert "spiral" in str(err.value)


def test_valid_config_defaults_and_shorthand():
    c = HybridConfig(**BASE)
    assert c.linear_mixers == ["lightning", None, "lightning"]
    assert c.head_dim == 8 and c.num_key_value_heads == 4 and c.linear_num_heads == 4
    assert c.attention_layers == [1]
    assert [c.mixer_name(i) for i in range(3)] == ["lightning", "attention", "lightning"]
    assert HybridConfig(vocab_size=10, hidden_size=16, num_attention_heads=2, num_hidden_layers=2).layer_types == [
        "full_attention", "full_attention"]
