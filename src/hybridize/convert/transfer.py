"""Attention -> mixer weight transfer, and assembling a hybrid from a teacher (HALO's step 0, METHODS.md).

* Embeddings, norms, MLPs and the LM head are copied unchanged.
* Kept attention layers copy the teacher's attention; with HyPE they drop RoPE (NoPE), scale queries by
  log(t + a) / log(a) and gain a freshly initialised sigmoid output gate.
* Linear layers take what their mixer class names in `from_attention` (each mixer's docstring says what maps where
  and what starts fresh): q/k/v/o for the query-key mixers (Mamba-2: C, B, x, out from q, k, v, o, as in
  Mamba-in-the-Llama), only v and o for HGRN, q, v and o for HGRN-2. K/V heads are repeated so that linear head i
  owns a copy of KV group floor(i / g) (GQA -> MHA), their biases likewise; the teacher's q/k norms go into the
  mixer's QK-norm. Gates, decays, the output norm and the output gate keep their fresh init; a short convolution
  starts as the identity (its newest tap 1), so the transferred projections reach the recurrence unchanged but for the
  convolution's SiLU. With HyPE the mixers apply RoPE.
"""

from __future__ import annotations

import torch

from ..mixers import MIXERS
from ..models import HybridConfig, HybridForCausalLM

# Teacher tensors stored per KV head: repeated for GQA -> MHA wherever a mixer takes them.
REPEATED = {"k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"}


def student_config(teacher: HybridConfig, attention_layers: list[int], mixer: str, hype: bool = True,
                   hype_a: float = 500.0, conv_size: int = 0, kv_groups: list[list[int]] | None = None,
                   intra_fusion: str = "concat", intra_branch_norm: bool = True) -> HybridConfig:
    """The hybrid's config: the teacher's shapes, attention kept in `attention_layers`, `mixer` elsewhere.

    `kv_groups` (one list per layer) keeps attention at the granularity of KV-head groups instead (an intra-layer
    hybrid, `hybridize.mixers.intra`): a layer keeping all its groups stays attention, one keeping none becomes
    linear, any other a 'hybrid' layer ('hybrid_sliding' for a sliding-window teacher layer) whose other groups' query
    heads run `mixer`; `attention_layers` is then not used."""
    L = teacher.num_hidden_layers
    Hkv = teacher.num_key_value_heads
    if kv_groups is not None:
        if len(kv_groups) != L or any(not 0 <= j < Hkv for kept in kv_groups for j in kept):
            raise ValueError(f"kv_groups must list, for each of the {L} layers, KV-head group indices in 0..{Hkv - 1}")
        attention_layers = [i for i, kept in enumerate(kv_groups) if len(set(kept)) == Hkv]
    bad = [i for i in attention_layers if not 0 <= i < L]
    if bad:
        raise ValueError(f"attention layer indices {bad} are outside 0..{L - 1}")
    layer_types = [teacher.layer_types[i] if i in attention_layers else "linear_attention" for i in range(L)]
    intra = [None] * L
    if kv_groups is not None:
        for i, kept in enumerate(kv_groups):
            if 0 < len(set(kept)) < Hkv:
                layer_types[i] = "hybrid_sliding" if teacher.layer_types[i] == "sliding_attention" else "hybrid"
                intra[i] = sorted(set(kept))
    fields = teacher.to_diff_dict()
    for key in ("model_type", "transformers_version", "architectures", "layer_types", "linear_mixers",
                "attention_kv_heads"):
        fields.pop(key, None)
    fields.update(
        layer_types=layer_types,
        linear_mixers=[None if t in ("full_attention", "sliding_attention") else mixer for t in layer_types],
        attention_kv_heads=intra if any(g is not None for g in intra) else None,
        intra_fusion=intra_fusion, intra_branch_norm=intra_branch_norm,
        attention_rope=not hype, hype_a=hype_a if hype else None, attention_output_gate=hype,
        linear_rope=hype, linear_qk_norm=teacher.qk_norm, linear_qkv_bias=teacher.attention_bias,
        linear_num_heads=teacher.num_attention_heads, linear_head_dim=teacher.head_dim,
        linear_value_head_dim=teacher.head_dim, linear_conv_size=conv_size,
    )
    return HybridConfig(**fields)


def linear_from_attention(attn_state: dict[str, torch.Tensor], config: HybridConfig,
                          mixer: str) -> dict[str, torch.Tensor]:
    """A `mixer`'s transferred tensors from one attention layer's state dict (keys relative to the mixer)."""
    groups = config.num_attention_heads // config.num_key_value_heads
    out = {}
    for ours, theirs in MIXERS[mixer].from_attention.items():
        if theirs not in attn_state:
            continue
        t = attn_state[theirs]
        if theirs in REPEATED and groups > 1:
            # (Hkv * D, ...) -> (Hkv, D, ...) -> each KV head repeated g times -> (H * D, ...)
            t = t.view(config.num_key_value_heads, config.head_dim, *t.shape[1:])
            t = t.repeat_interleave(groups, dim=0).reshape(config.num_attention_heads * config.head_dim, *t.shape[2:])
        out[ours] = t
    return out


def _identity_conv(state: dict, prefix: str, new: dict) -> None:
    """A transferred mixer's short convolution (C, 1, W) starts as the identity: the newest input passes through."""
    conv = prefix + "conv.weight"
    if conv in state:
        new[conv] = torch.zeros_like(state[conv])
        new[conv][..., -1] = 1.0


def _rows(t: torch.Tensor, heads: list[int], per_head: int, dim: int = 0) -> torch.Tensor:
    """The blocks of `per_head` entries along `dim` that belong to `heads`, in that order."""
    index = torch.tensor([h * per_head + j for h in heads for j in range(per_head)], device=t.device)
    return t.index_select(dim, index)


def slice_heads(full: dict[str, torch.Tensor], mixer: str, config, heads: list[int],
                sub_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """A linear mixer's tensors for a subset of its heads: `full` holds the tensors of the mixer with all
    `config.linear_num_heads` heads (keys relative to the mixer), `sub_shapes` the shapes of the mixer built for
    `heads` alone. Along every dimension whose size differs, each head owns a block of size / heads (its q/k/v/gate
    rows, its o_proj columns, its decay or gate entries); the short convolution's channels are cut per part
    (q|k|v, ...) as the mixer's `conv_segments` say. Tensors of the same shape (per-head norm weights, low-rank gate
    bases) are shared as they are."""
    cls, H = MIXERS[mixer], config.linear_num_heads
    out = {}
    for name, shape in sub_shapes.items():
        if name not in full:
            continue
        t = full[name]
        if t.shape == shape:
            out[name] = t
        elif name == "conv.weight":
            parts = t.split([H * w for w in cls.conv_segments(config)], dim=0)
            out[name] = torch.cat([_rows(p, heads, w) for p, w in zip(parts, cls.conv_segments(config))], dim=0)
        else:
            for dim, (a, b) in enumerate(zip(t.shape, shape)):
                if a != b:
                    t = _rows(t, heads, a // H, dim)
            out[name] = t
    return out


def _intra_from_teacher(i: int, config: HybridConfig, t_attn: dict, aligned_mixer: dict | None,
                        sub_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """An intra layer's tensors (keys relative to the block): the attention branch takes the kept groups' q/k/v rows
    (norms and biases with them), the linear branch its heads of the all-heads mixer (the stage-1 one when given, else
    the transfer from attention), the output projection the teacher's columns of the attention heads followed, for
    concat, by the linear heads' (the stage-1 mixer's own when given)."""
    from ..mixers.intra import split_heads

    D, H = config.head_dim, config.num_attention_heads
    attention_heads, linear_heads = split_heads(config, i)
    kept = config.attention_kv_heads[i]
    out = {}
    for name, t in t_attn.items():
        part = name.split(".")[0]
        if part == "q_proj":
            out[f"attention.{name}"] = _rows(t, attention_heads, D)
        elif part in ("k_proj", "v_proj"):
            out[f"attention.{name}"] = _rows(t, kept, D)
        elif part in ("q_norm", "k_norm"):
            out[f"attention.{name}"] = t
    mixer = config.linear_mixers[i]
    linear_shapes = {k.removeprefix("linear."): v for k, v in sub_shapes.items() if k.startswith("linear.")}
    full = aligned_mixer if aligned_mixer is not None else linear_from_attention(t_attn, config, mixer)
    out.update({f"linear.{k}": v for k, v in slice_heads(full, mixer, config, linear_heads, linear_shapes).items()})
    wo = t_attn["o_proj.weight"]  # (hidden, H * D)
    columns = [_rows(wo, attention_heads, D, dim=1)]
    if config.intra_fusion == "concat":
        # the stage-1 model loads on the CPU, the teacher may be on the GPU
        source = aligned_mixer["o_proj.weight"].to(wo) if aligned_mixer is not None else wo
        columns.append(_rows(source, linear_heads, source.shape[1] // H, dim=1))
    out["o_proj.weight"] = torch.cat(columns, dim=1)
    if "o_proj.bias" in t_attn and "o_proj.bias" in sub_shapes:
        out["o_proj.bias"] = t_attn["o_proj.bias"]
    return out


@torch.no_grad()
def build_student(teacher: HybridForCausalLM, config: HybridConfig,
                  aligned: HybridForCausalLM | None = None) -> HybridForCausalLM:
    """Assemble a student for `config` from the teacher, taking each linear layer's mixer from `aligned` (a model
    whose layer i holds the stage-1 mixer of layer i) when given, else by transfer from the teacher's attention.
    Intra-layer ('hybrid') layers take their attention heads from the teacher and their linear heads from the same
    two sources (`_intra_from_teacher`)."""
    student = HybridForCausalLM(config).to(teacher.dtype)
    state = student.state_dict()
    t_state = teacher.state_dict()
    a_state = aligned.state_dict() if aligned is not None else None
    new = {}
    for i, layer_type in enumerate(config.layer_types):
        prefix = f"model.layers.{i}.mixer."
        if a_state is not None and config.linear_mixers[i] is not None \
                and aligned.config.linear_mixers[i] != config.linear_mixers[i]:
            raise ValueError(f"aligned layer {i} holds a {aligned.config.linear_mixers[i]!r} mixer, the "
                             f"student wants {config.linear_mixers[i]!r}")
        attn = {k[len(prefix):]: v for k, v in t_state.items() if k.startswith(prefix)}
        if layer_type == "linear_attention":
            if a_state is not None:
                new.update({k: v for k, v in a_state.items() if k.startswith(prefix)})
            else:
                new.update({prefix + k: v for k, v in
                            linear_from_attention(attn, config, config.linear_mixers[i]).items() if prefix + k in state})
                _identity_conv(state, prefix, new)
        elif config.attention_kv_heads[i] is not None:
            sub_shapes = {k[len(prefix):]: v.shape for k, v in state.items() if k.startswith(prefix)}
            aligned_mixer = None if a_state is None else {k[len(prefix):]: v for k, v in a_state.items()
                                                           if k.startswith(prefix)}
            new.update({prefix + k: v for k, v in
                        _intra_from_teacher(i, config, attn, aligned_mixer, sub_shapes).items()})
            if a_state is None:
                _identity_conv(state, prefix + "linear.", new)
        else:
            new.update({k: v for k, v in t_state.items() if k.startswith(prefix) and k in state})
    for k, v in t_state.items():  # embeddings, norms, MLPs, head
        if ".mixer." not in k and k in state:
            new[k] = v
    for k, v in new.items():
        if state[k].shape != v.shape:
            raise ValueError(f"cannot transfer {k}: teacher shape {tuple(v.shape)} != student {tuple(state[k].shape)}")
        state[k].copy_(v)
    if config.tie_word_embeddings:
        student.tie_weights()
    return student
