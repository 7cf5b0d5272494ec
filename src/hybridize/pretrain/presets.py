"""Named pretrain recipes: the sizes of the design-space sweep (`tiny`, `small`: a Qwen3-shaped stack whose layer mix
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
from .recipe import PretrainRecipe

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
        # The shipped tiny teacher's shape with 4 KV heads instead of 2, so that an intra-layer mix can keep one group
        # in every layer (3:1 in each); ~1.1M parameters, seconds per hundred steps on 2 CPU cores.
        return PretrainRecipe(
            name="tiny",
            model=dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=32, qk_norm=True,
                       tie_word_embeddings=True),
            train=StageRecipe(tokens=2_048_000, seq_len=256, batch_size=16, micro_batch_size=16, lr=1.2e-3,
                              min_lr=1.2e-4, warmup_steps=50, weight_decay=0.1, save_every=100),
            episode_rows=10)
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


SIZES = ("tiny", "small")
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
        from ..teacher.recipe import teacher_recipe

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


__all__ = ["MIXER_OPTIONS", "PRESETS", "SIZES", "TEACHER_PRESETS", "preset_recipe", "with_mix"]
