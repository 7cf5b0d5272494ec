"""The model card (README.md) of a converted checkpoint: what it is, how it was made, what each stage measured."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import __version__
from .recipe import STAGES


def _stage_rows(conv, through: str = STAGES[-1]) -> list[str]:
    """One row per stage; a stage after `through` (the last stage in the exported model) that finished in the folder
    is named as not in this model."""
    rows = ["| stage | steps | tokens | seconds | tokens/s | loss (first 10% -> last 10%) | peak GPU GiB | device |",
            "|---|---|---|---|---|---|---|---|"]
    for i, stage in enumerate(STAGES):
        done = conv.done(stage)
        if not done:
            rows.append(f"| {stage} | not run | | | | | | |")
            continue
        if i > STAGES.index(through):
            rows.append(f"| {stage} | not in this model (its run: `stages/{stage}/`) | | | | | | |")
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


def _front_matter(text: str) -> dict:
    """The YAML metadata block at the top of a model card (README.md), or {}."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        meta = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _teacher_card(teacher: str) -> tuple[dict, str | None]:
    """(the teacher's model card metadata, its Hub id or None for a local folder). A Hub teacher's card is read from
    the Hub when it is reachable; without it, the metadata is {}."""
    path = Path(str(teacher)).expanduser()
    if path.exists():
        card = path / "README.md"
        return (_front_matter(card.read_text()) if card.is_file() else {}), None
    try:
        from huggingface_hub import hf_hub_download

        return _front_matter(Path(hf_hub_download(str(teacher), "README.md")).read_text()), str(teacher)
    except Exception:  # offline, no card, gated: the card says what it knows
        return {}, str(teacher)


def model_card_metadata(conv) -> tuple[dict, list[str]]:
    """The Hub metadata of a converted model's card, and comments on what could not be filled in."""
    teacher_meta, hub_id = _teacher_card(conv.teacher)
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["hybridize", "hybrid-attention", "linear-attention", conv.recipe.mixer, "distillation",
                     "custom_code"]}
    notes = []
    if hub_id is not None:
        meta["base_model"] = hub_id
        meta["base_model_relation"] = "finetune"
    else:
        notes.append(f"base_model: the teacher was the local folder {conv.teacher}; put its Hub id here")
    license_ = teacher_meta.get("license")
    meta["license"] = license_ or "other"
    if not license_:
        notes.append("license: the teacher's license applies; its model card did not name one")
    for key in ("license_name", "license_link", "language"):
        if key in teacher_meta:
            meta[key] = teacher_meta[key]
    return meta, notes


def write_model_card(conv, model, through: str = STAGES[-1]) -> None:
    """README.md of a converted checkpoint: a Hugging Face model card (YAML metadata: base_model, library_name,
    tags, license, pipeline_tag), how to load it, how it was made, its recipe. `through`: the last stage whose
    model this is (a stage finished after it is named as not in this model)."""
    config = model.config
    layers = "".join({"linear_attention": "l", "hybrid": "h", "hybrid_sliding": "h"}.get(t, "A")
                     for t in config.layer_types)
    attention = config.attention_layers
    teacher_hash = conv.teacher_hash or "not recorded (the teacher is not a local folder)"
    recipe_yaml = yaml.safe_dump(json.loads(json.dumps(conv.recipe.to_dict())), sort_keys=False)
    meta, notes = model_card_metadata(conv)
    front = yaml.safe_dump(meta, sort_keys=False) + "".join(f"# {n}\n" for n in notes)
    text = f"""---
{front}---

# Hybrid of `{conv.teacher}`

Converted by hybridize {__version__}: {_kept(config, conv.recipe.mixer)}
HyPE: {"on" if conv.recipe.hype else "off"}{f" (a = {conv.recipe.hype_a})" if conv.recipe.hype else ""}.
Layer pattern (A = attention, l = linear, h = heads split between both): `{layers}`.

## Loading

The model's code is in this folder (`modeling_hybridize.py` and the files it imports), so hybridize need not be
installed; torch, transformers >= 5.17 and einops are enough. On CUDA, fla's Triton kernels run the linear mixers
when fla is installed (`pip install fla-core`); everywhere else their PyTorch form runs.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{conv.out}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{conv.out}")
```

Where hybridize is installed, `import hybridize` registers the model type and the same call works without
`trust_remote_code`.

## How it was made

{chr(10).join(_stage_rows(conv, through))}

Teacher weights sha256 (its tensors, `hybridize.provenance.weights_sha256`): {teacher_hash}.

Training data: {conv.data if conv.data is not None else "the built-in offline corpus"}. Per-step metrics are in
`stages/<stage>/metrics.jsonl` (and TensorBoard logs in `stages/<stage>/tb`).

## Recipe

```yaml
{recipe_yaml}```
"""
    (conv.out / "README.md").write_text(text)
