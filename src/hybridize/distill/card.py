"""The model card (README.md) of a converted checkpoint: what it is, how it was made, what each stage measured."""

from __future__ import annotations

import json

import yaml

from .. import __version__
from .recipe import STAGES


def _stage_rows(conv) -> list[str]:
    rows = ["| stage | steps | tokens | seconds | tokens/s | loss (first 10% -> last 10%) | peak GPU GiB | device |",
            "|---|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        done = conv.done(stage)
        if not done:
            rows.append(f"| {stage} | not run | | | | | | |")
            continue
        if stage == "select":
            rows.append(f"| select | {done['selector']}: layers {done['layers']} | {done['tokens']} | "
                        f"{done['seconds']:.1f} | | | | {done['device']} |")
            continue
        r = done["result"]
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        rows.append(f"| {stage} | {r['steps']} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
                    f"{r['loss_first']:.4g} -> {r['loss_last']:.4g} | {peak} | {done['device']} |")
    return rows


def _kept(config, mixer: str) -> str:
    """What keeps softmax attention, in a sentence."""
    attention, L = config.attention_layers, config.num_hidden_layers
    if not config.intra_layers:
        return (f"{len(attention)} of {L} layers keep softmax attention (layers {attention}), the others are `{mixer}` "
                "mixers with a fixed-size state.")
    G = config.num_key_value_heads
    kept = sum(len(g) for g in config.attention_kv_heads if g is not None) + G * len(attention)
    groups = {i: g for i, g in enumerate(config.attention_kv_heads) if g is not None}
    return (f"{kept} of {L * G} KV-head groups keep softmax attention (whole layers {attention}; in the layers that "
            f"split their heads, the groups {groups}), the other heads are `{mixer}` mixers with a fixed-size state, "
            f"joined by {config.intra_fusion} (intra-layer hybrid).")


def write_model_card(conv, model) -> None:
    config = model.config
    layers = "".join({"linear_attention": "l", "hybrid": "h", "hybrid_sliding": "h"}.get(t, "A")
                     for t in config.layer_types)
    attention = config.attention_layers
    recipe_yaml = yaml.safe_dump(json.loads(json.dumps(conv.recipe.to_dict())), sort_keys=False)
    text = f"""---
library_name: transformers
tags: [hybridize, hybrid-attention, linear-attention, distillation]
base_model: {conv.teacher}
---

# Hybrid of `{conv.teacher}`

Converted by hybridize {__version__}: {_kept(config, conv.recipe.mixer)}
HyPE: {"on" if conv.recipe.hype else "off"}{f" (a = {conv.recipe.hype_a})" if conv.recipe.hype else ""}.
Layer pattern (A = attention, l = linear, h = heads split between both): `{layers}`.

```python
import hybridize  # registers the model type with transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{conv.out}")
tokenizer = AutoTokenizer.from_pretrained("{conv.out}")
```

## How it was made

{chr(10).join(_stage_rows(conv))}

Training data: {conv.data if conv.data is not None else "the built-in offline corpus"}. Per-step metrics are in
`stages/<stage>/metrics.jsonl` (and TensorBoard logs in `stages/<stage>/tb`).

## Recipe

```yaml
{recipe_yaml}```
"""
    (conv.out / "README.md").write_text(text)
