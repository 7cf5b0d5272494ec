"""`HybridConfig`: one transformers config for every hybrid we build.

The per-layer mix is data. `layer_types` speaks transformers' own vocabulary ("full_attention",
"sliding_attention", "linear_attention", and "hybrid" / "hybrid_sliding" for a layer that holds both), so that
`DynamicCache(config=...)` builds a KV layer, a recurrent-state layer or both for each position exactly as it does
for Qwen3-Next or Falcon-H1. `linear_mixers` names the mixer of each "linear_attention" and "hybrid" layer (None for
the attention layers):

    HybridConfig(num_hidden_layers=4,
                 layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
                 linear_mixers="gated_deltanet")   # a string is shorthand for "every linear layer"

An intra-layer hybrid splits a layer's heads instead: in a "hybrid" layer the KV-head groups listed in
`attention_kv_heads` keep softmax attention (with their query heads) and the query heads of the other groups run the
linear mixer, side by side on the same input (`hybridize.mixers.intra`):

    HybridConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                 layer_types=["hybrid", "hybrid"], linear_mixers="gla",
                 attention_kv_heads=[[0, 2], [1, 3]], intra_fusion="concat")
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from ..names import INTRA_FUSIONS, LINEAR_MIXER_NAMES

ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
INTRA_LAYER_TYPES = ("hybrid", "hybrid_sliding")  # attention and a linear mixer side by side in one layer
LAYER_TYPES = ATTENTION_LAYER_TYPES + ("linear_attention",) + INTRA_LAYER_TYPES




class HybridConfig(PreTrainedConfig):
    r"""Configuration of a hybrid causal LM: pre-norm blocks (RMSNorm -> mixer -> residual -> RMSNorm -> SwiGLU ->
    residual), each mixer either softmax attention or a linear-attention mixer with a fixed-size state.

    Attention options follow the Llama / Qwen2 / Qwen3 / Mistral families (GQA, q/k/v bias, q/k RMSNorm, head_dim
    independent of hidden_size, RoPE scalings through `rope_parameters`) plus HypeNet's HyPE pieces:
    `attention_rope=False` (NoPE), `hype_a` (query scaling log(t + a) / log(a)) and `attention_output_gate`.
    """

    model_type = "hybridize"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    # Attention (the teacher's layers)
    attention_bias: bool = False  # bias on q/k/v (Qwen2; Llama's attention_bias sets this and the next)
    attention_out_bias: bool = False  # bias on o_proj (Llama attention_bias=True)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    sliding_window: int | None = None  # used by "sliding_attention" layers
    attention_rope: bool = True  # False: no position encoding in attention layers (HyPE)
    hype_a: float | None = None  # HyPE query scaling s_t = log(t + a) / log(a); None: off
    attention_output_gate: bool = False  # sigmoid(x W_g) on the attention output, before o_proj
    # Layer mix
    layer_types: list[str] | None = None
    linear_mixers: list[str | None] | str | None = None
    # Intra-layer ("hybrid") layers: the KV-head groups that keep softmax attention in each (None elsewhere)
    attention_kv_heads: list[list[int] | None] | None = None
    intra_fusion: str = "concat"
    intra_branch_norm: bool = True  # RMSNorm per head on the attention branch (the linear branch has its own norm)
    # Linear mixers
    linear_num_heads: int | None = None  # default: num_attention_heads (GQA K/V heads are repeated on transfer)
    linear_head_dim: int | None = None  # key head dim; default: head_dim
    linear_value_head_dim: int | None = None  # default: linear_head_dim
    linear_rope: bool = True  # RoPE on q/k inside the linear mixers (HyPE); hgrn / hgrn2 have no q.k and take none
    linear_qk_norm: bool = False  # per-head RMSNorm on q/k (C/B for mamba2); lightning always has it, hgrn(2) never
    linear_qkv_bias: bool = False  # bias on the mixers' q/k/v (holds a Qwen2 teacher's attention biases)
    linear_conv_size: int = 0  # short causal convolution on each mixer's inputs (q|k|v, x|B|C, i|f); 0 = off
    gla_gate_low_rank_dim: int = 16
    gla_gate_logit_normalizer: float = 16.0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; give head_dim explicitly or choose sizes that divide"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        _positive(self, "num_key_value_heads", "head_dim")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of num_key_value_heads="
                f"{self.num_key_value_heads} (grouped-query attention)"
            )
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}; "
                "give one entry per layer"
            )
        for i, t in enumerate(self.layer_types):
            if t not in LAYER_TYPES:
                raise ValueError(f"layer_types[{i}]={t!r} is not a layer type; allowed: {list(LAYER_TYPES)}")
        self.linear_mixers = self._resolve_linear_mixers(self.linear_mixers)
        if {"sliding_attention", "hybrid_sliding"} & set(self.layer_types) and not self.sliding_window:
            raise ValueError("sliding_window must be a positive integer when layer_types has 'sliding_attention' or "
                             "'hybrid_sliding'")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be a positive integer or None, got {self.sliding_window}")
        if self.hype_a is not None and not self.hype_a > 1:
            raise ValueError(f"hype_a must be > 1 (HyPE scale log(t + a) / log(a)), got {self.hype_a}")
        if self.linear_num_heads is None:
            self.linear_num_heads = self.num_attention_heads
        if self.linear_head_dim is None:
            self.linear_head_dim = self.head_dim
        if self.linear_value_head_dim is None:
            self.linear_value_head_dim = self.linear_head_dim
        _positive(self, "linear_num_heads", "linear_head_dim", "linear_value_head_dim", "gla_gate_low_rank_dim")
        if self.linear_conv_size < 0:
            raise ValueError(f"linear_conv_size must be >= 0 (0 turns the short convolution off), got {self.linear_conv_size}")
        if self.gla_gate_logit_normalizer <= 0:
            raise ValueError(f"gla_gate_logit_normalizer must be > 0, got {self.gla_gate_logit_normalizer}")
        self._check_intra_layers()
        if self.linear_rope and self.linear_head_dim != self.head_dim and self.has_linear:
            raise ValueError(
                f"linear_rope=True needs linear_head_dim == head_dim (the mixers share the model's rotary table), "
                f"got linear_head_dim={self.linear_head_dim}, head_dim={self.head_dim}"
            )
        if self.head_dim % 2 and (self.attention_rope or self.linear_rope):
            raise ValueError(f"head_dim must be even to apply RoPE, got {self.head_dim}")
        if self.rope_parameters is None and "rope_theta" not in kwargs and "rope_scaling" not in kwargs:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)

    def _check_intra_layers(self) -> None:
        intra = [t in INTRA_LAYER_TYPES for t in self.layer_types]
        if self.intra_fusion not in INTRA_FUSIONS:
            raise ValueError(f"intra_fusion={self.intra_fusion!r}; allowed: {list(INTRA_FUSIONS)}")
        groups = self.attention_kv_heads
        if groups is None:
            if any(intra):
                raise ValueError("attention_kv_heads must list, for each 'hybrid' layer, the KV-head groups that keep "
                                 f"attention (0..{self.num_key_value_heads - 1}), and None for the other layers")
            self.attention_kv_heads = [None] * self.num_hidden_layers
            return
        groups = list(groups)
        if len(groups) != self.num_hidden_layers:
            raise ValueError(f"attention_kv_heads has {len(groups)} entries but num_hidden_layers="
                             f"{self.num_hidden_layers}; give one per layer (None for layers that are not 'hybrid')")
        Hkv = self.num_key_value_heads
        for i, (kept, is_intra) in enumerate(zip(groups, intra)):
            if not is_intra:
                if kept is not None:
                    raise ValueError(f"attention_kv_heads[{i}]={kept!r} but layer_types[{i}]={self.layer_types[i]!r}; "
                                     "only 'hybrid' layers split their heads (None elsewhere)")
                continue
            if (not isinstance(kept, (list, tuple)) or not kept or len(set(kept)) != len(kept)
                    or any(not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < Hkv for g in kept)
                    or len(kept) == Hkv):
                raise ValueError(f"attention_kv_heads[{i}]={kept!r}: a 'hybrid' layer keeps some but not all of its "
                                 f"KV-head groups, as distinct indices in 0..{Hkv - 1} (all kept: 'full_attention')")
            groups[i] = sorted(kept)
        self.attention_kv_heads = groups
        if any(intra) and self.linear_num_heads != self.num_attention_heads:
            raise ValueError(f"'hybrid' layers split the query heads between the branches: linear_num_heads "
                             f"({self.linear_num_heads}) must equal num_attention_heads ({self.num_attention_heads})")
        if self.intra_fusion != "concat":
            g = self.num_attention_heads // Hkv
            for i, kept in enumerate(groups):
                if kept is None:
                    continue
                widths = (len(kept) * g * self.head_dim, (Hkv - len(kept)) * g * self.linear_value_head_dim)
                if widths[0] != widths[1]:
                    raise ValueError(
                        f"intra_fusion={self.intra_fusion!r} joins two branches of one width, but layer {i}'s attention "
                        f"branch is {widths[0]} wide and its linear branch {widths[1]}: keep half of the groups "
                        "(with equal head sizes) or use intra_fusion='concat'")

    @property
    def has_linear(self) -> bool:
        """Whether any layer runs a linear mixer (a 'linear_attention' or a 'hybrid' layer)."""
        return any(m is not None for m in self.linear_mixers)

    def _resolve_linear_mixers(self, value: list[str | None] | str | None) -> list[str | None]:
        linear = [t == "linear_attention" or t in INTRA_LAYER_TYPES for t in self.layer_types]
        if value is None:
            if any(linear):
                raise ValueError(
                    "linear_mixers must name the mixer of each 'linear_attention' layer; "
                    f"allowed: {list(LINEAR_MIXER_NAMES)}"
                )
            return [None] * self.num_hidden_layers
        if isinstance(value, str):
            value = [value if is_lin else None for is_lin in linear]
        value = list(value)
        if len(value) != self.num_hidden_layers:
            raise ValueError(
                f"linear_mixers has {len(value)} entries but num_hidden_layers={self.num_hidden_layers}; "
                "give one entry per layer (None for attention layers) or a single mixer name"
            )
        for i, (name, is_lin) in enumerate(zip(value, linear)):
            if is_lin and name not in LINEAR_MIXER_NAMES:
                raise ValueError(
                    f"linear_mixers[{i}]={name!r} is not a linear mixer; allowed: {list(LINEAR_MIXER_NAMES)}"
                )
            if not is_lin and name is not None:
                raise ValueError(
                    f"linear_mixers[{i}]={name!r} but layer_types[{i}]={self.layer_types[i]!r}; "
                    "attention layers take None"
                )
        return value

    def mixer_name(self, layer_idx: int) -> str:
        """The registry name of layer `layer_idx`'s mixer: "attention", a linear mixer, or "intra" (a 'hybrid'
        layer: attention and its linear mixer side by side)."""
        if self.layer_types[layer_idx] in INTRA_LAYER_TYPES:
            return "intra"
        return self.linear_mixers[layer_idx] or "attention"

    @property
    def attention_layers(self) -> list[int]:
        """Layers that are softmax attention throughout (not the intra-layer ones)."""
        return [i for i, t in enumerate(self.layer_types) if t in ATTENTION_LAYER_TYPES]

    @property
    def intra_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t in INTRA_LAYER_TYPES]


def _positive(config: HybridConfig, *fields: str) -> None:
    for name in fields:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
