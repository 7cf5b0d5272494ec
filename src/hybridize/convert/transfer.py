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
                   hype_a: float = 500.0, conv_size: int = 0) -> HybridConfig:
    """The hybrid's config: the teacher's shapes, attention kept in `attention_layers`, `mixer` elsewhere."""
    L = teacher.num_hidden_layers
    bad = [i for i in attention_layers if not 0 <= i < L]
    if bad:
        raise ValueError(f"attention layer indices {bad} are outside 0..{L - 1}")
    fields = teacher.to_diff_dict()
    for key in ("model_type", "transformers_version", "architectures", "layer_types", "linear_mixers"):
        fields.pop(key, None)
    fields.update(
        layer_types=[teacher.layer_types[i] if i in attention_layers else "linear_attention" for i in range(L)],
        linear_mixers=[None if i in attention_layers else mixer for i in range(L)],
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


@torch.no_grad()
def build_student(teacher: HybridForCausalLM, config: HybridConfig,
                  aligned: HybridForCausalLM | None = None) -> HybridForCausalLM:
    """Assemble a student for `config` from the teacher, taking each linear layer's mixer from `aligned` (a model
    whose layer i holds the stage-1 mixer of layer i) when given, else by transfer from the teacher's attention."""
    student = HybridForCausalLM(config).to(teacher.dtype)
    state = student.state_dict()
    t_state = teacher.state_dict()
    a_state = aligned.state_dict() if aligned is not None else None
    new = {}
    for i, layer_type in enumerate(config.layer_types):
        prefix = f"model.layers.{i}.mixer."
        if layer_type == "linear_attention":
            if a_state is not None:
                if aligned.config.linear_mixers[i] != config.linear_mixers[i]:
                    raise ValueError(f"aligned layer {i} holds a {aligned.config.linear_mixers[i]!r} mixer, the "
                                     f"student wants {config.linear_mixers[i]!r}")
                new.update({k: v for k, v in a_state.items() if k.startswith(prefix)})
            else:
                attn = {k[len(prefix):]: v for k, v in t_state.items() if k.startswith(prefix)}
                new.update({prefix + k: v for k, v in
                            linear_from_attention(attn, config, config.linear_mixers[i]).items() if prefix + k in state})
                conv = prefix + "conv.weight"
                if conv in state:  # (C, 1, W): the identity, the newest input passes through
                    new[conv] = torch.zeros_like(state[conv])
                    new[conv][..., -1] = 1.0
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
