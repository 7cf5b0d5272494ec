"""Named pretrain recipes: the sizes of the design-space sweep (`tiny`, `mini`, `small`: Qwen3-shaped stacks whose layer mix
`--mixer/--ratio/--fusion/--placement` set) and the teachers (`teacher-tiny|small|base`: what `hybridize teacher
--size` trains, the Qwen3 class itself).

    preset_recipe("small", mixer="gated_deltanet", ratio="3:1")      # one cell of the sweep
    preset_recipe("teacher-tiny")                                   # == hybridize teacher --size tiny

Each linear mixer runs as its reference layer defines it (fla's layers, which the hybrid linear-attention study
trained): a short convolution (4) on the inputs of DeltaNet, Gated DeltaNet and Mamba-2, none on the others; RoPE
inside Lightning (HypeNet) and RetNet (xPos), none in the others. Attention keeps RoPE and Qwen3's q/k norm in every
cell (no HyPE: a from-scratch baseline, as the studies trained theirs).
"""

from __future__ import annotations

from ..distill.recipe import StageRecipe
from .layout import layer_mix
from .recipe import PretrainRecipe, apply_overrides, read_recipe_file, recipe_from_dict
from .teachers import teacher_recipe

MIXER_OPTIONS = {
    "lightning": dict(linear_conv_size=0, linear_rope=True),
    "retnet": dict(linear_conv_size=0, linear_rope=True),
    "gla": dict(linear_conv_size=0, linear_rope=False),
    "hgrn": dict(linear_conv_size=0, linear_rope=False),
    "hgrn2": dict(linear_conv_size=0, linear_rope=False),
    "deltanet": dict(linear_conv_size=4, linear_rope=False),
    "gated_deltanet": dict(linear_conv_size=4, linear_rope=False),
    "mamba2": dict(linear_conv_size=4, linear_rope=False),
}


def _size(name: str) -> PretrainRecipe:
    if name == "tiny":
        # A setup check that runs on 2 CPU cores (the tests' sweep): 4 layers of 4 heads x 16 and 4 KV groups, so an
        # intra-layer mix can keep one group in every layer (3:1 in each); ~0.2M parameters, 8 steps of 8 x 192.
        # 192 tokens hold every episode task's template (MQAR's is the longest, ~140 tokens with a 2K-entry BPE).
        return PretrainRecipe(
            name="tiny",
            model=dict(vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=16, qk_norm=True,
                       tie_word_embeddings=True),
            train=StageRecipe(tokens=8 * 8 * 192, seq_len=192, batch_size=8, micro_batch_size=8, lr=2e-3,
                              min_lr=2e-4, warmup_steps=2, weight_decay=0.1, save_every=4),
            episode_rows=4)
    if name == "mini":
        # The design-space grid in one short GPU run (`benchmarks/gpu_run.sh sweep-grid`, which says how its time was
        # estimated): `small`'s 12 layers of 6 heads x 64 (so 12:1, 6:1 and 3:1 keep 1, 2 and 3 attention layers, and
        # an intra-layer mix at 6:1 one KV group in every layer) with a 4K-entry BPE, 256-token rows and 256 steps of
        # 16 rows, half of them retrieval episodes: optimizer steps are what retrieval is learned with, and at this
        # size a step costs Python and kernel launches more than arithmetic. ~23M parameters.
        return PretrainRecipe(
            name="mini",
            model=dict(vocab_size=4096, hidden_size=384, intermediate_size=1024, num_hidden_layers=12,
                       num_attention_heads=6, num_key_value_heads=6, head_dim=64, qk_norm=True,
                       tie_word_embeddings=True),
            train=StageRecipe(tokens=256 * 16 * 256, seq_len=256, batch_size=16, micro_batch_size=16, lr=2e-3,
                              min_lr=2e-4, warmup_steps=25, weight_decay=0.1, save_every=64),
            episode_rows=8)
    if name == "small":
        # 12 layers of 6 heads x 64 and 6 KV groups: 3:1 is exactly 3 attention layers and ~1:5 exactly 2 layers (inter)
        # or one group in every layer (intra). ~27M parameters. The data mix and LR are the `small` teacher's, which
        # learned to retrieve in ~2,000 steps of 32 x 1024 (results/gpu/teachers-small/); 2,048 steps here.
        return PretrainRecipe(
            name="small",
            model=dict(vocab_size=16384, hidden_size=384, intermediate_size=1024, num_hidden_layers=12,
                       num_attention_heads=6, num_key_value_heads=6, head_dim=64, qk_norm=True,
                       tie_word_embeddings=True),
            train=StageRecipe(tokens=2048 * 32 * 1024, seq_len=1024, batch_size=32, micro_batch_size=32, lr=6e-4,
                              min_lr=6e-5, warmup_steps=100, weight_decay=0.1, save_every=200),
            episode_rows=20, data=["builtin:train", "stdlib-code:train"])
    raise AssertionError(name)


SIZES = ("tiny", "mini", "small")
TEACHER_PRESETS = ("teacher-tiny", "teacher-small", "teacher-base")
PRESETS = SIZES + TEACHER_PRESETS


def preset_recipe(name: str, mixer: str | None = None, ratio: str | None = None, fusion: str = "inter",
                  placement: str = "uniform") -> PretrainRecipe:
    """The recipe of a preset. For a sweep size, `ratio` (with `mixer` unless "transformer") sets the layer mix
    (`layout.layer_mix`); without it the size is the Transformer."""
    if name not in PRESETS:
        raise ValueError(f"unknown pretrain preset {name!r}; allowed: {list(PRESETS)}")
    if name in TEACHER_PRESETS:
        if mixer is not None or ratio is not None:
            raise ValueError(f"preset {name!r} is a teacher (a Transformer): --mixer and --ratio apply to the sweep "
                             f"sizes {list(SIZES)}")
        return teacher_recipe(name.removeprefix("teacher-")).pretrain_recipe()
    recipe = _size(name)
    return with_mix(recipe, mixer, ratio or "transformer", fusion, placement)


def with_mix(recipe: PretrainRecipe, mixer: str | None, ratio: str, fusion: str = "inter",
             placement: str = "uniform") -> PretrainRecipe:
    """`recipe` with the layer mix of (mixer, ratio, fusion, placement) and the mixer's own options."""
    m = recipe.model
    mix = layer_mix(m["num_hidden_layers"], m.get("num_key_value_heads") or m["num_attention_heads"], mixer, ratio,
                    fusion, placement)
    model = {k: v for k, v in m.items() if k not in ("layer_types", "linear_mixers", "attention_kv_heads")}
    model.update({k: v for k, v in mix.items() if v is not None})
    if mix["linear_mixers"] is not None:
        model.update(MIXER_OPTIONS[mix["linear_mixers"]])
    name = recipe.name if ratio == "transformer" else f"{recipe.name}/{mixer}/{ratio}/{fusion}/{placement}"
    import dataclasses

    return dataclasses.replace(recipe, model=model, name=name)


MIX_FIELDS = ("layer_types", "linear_mixers", "attention_kv_heads")  # what --mixer / --ratio / --fusion set


def build_recipe(preset: str | None = None, config=None, *, mixer: str | None = None, ratio: str | None = None,
                 fusion: str | None = None, placement: str | None = None, overrides: list[str] | None = None,
                 data=None) -> PretrainRecipe:
    """What `hybridize pretrain` trains: a preset (`PRESETS`) or a recipe file (JSON / YAML, `recipe.py`'s layout),
    with `key=value` overrides, then the layer mix of (mixer, ratio, fusion, placement) when any of them is given
    (`with_mix`: the mixer's own options, then the overrides again, so that what the user set wins), and `data`
    instead of the recipe's. Validated: a bad value raises a ValueError naming its field."""
    if (preset is None) == (config is None):
        raise ValueError(f"give one of a preset (--preset {{{','.join(PRESETS)}}}) or a recipe file (--config FILE)")
    if config is not None:
        from pathlib import Path

        recipe = recipe_from_dict(read_recipe_file(config), name=Path(config).name)
    else:
        recipe = preset_recipe(preset)
    recipe = apply_overrides(recipe, overrides)
    if any(v is not None for v in (mixer, ratio, fusion, placement)):
        if recipe.model_type != "hybridize":
            raise ValueError(f"--mixer / --ratio / --fusion / --placement set a hybrid's layer mix, but "
                             f"model.model_type={recipe.model_type!r} (the teachers are Transformers); allowed with "
                             f"model_type 'hybridize', e.g. the presets {list(SIZES)}")
        set_by_hand = sorted(k.split("=", 1)[0] for k in overrides or [] if k.split("=", 1)[0] in
                             {f"model.{f}" for f in MIX_FIELDS})
        if set_by_hand:
            raise ValueError(f"{set_by_hand[0]} is what --ratio sets; give the layer mix one way, not both")
        if ratio is None:
            raise ValueError("--ratio is missing: the layer mix needs one of transformer, all-linear or N:1 "
                             "(N linear layers per attention layer)")
        recipe = apply_overrides(with_mix(recipe, mixer, ratio, fusion or "inter", placement or "uniform"), overrides)
    if data is not None:
        recipe.data = data
    recipe.validate()
    return recipe


__all__ = ["MIXER_OPTIONS", "MIX_FIELDS", "PRESETS", "SIZES", "TEACHER_PRESETS", "build_recipe", "preset_recipe",
           "with_mix"]
