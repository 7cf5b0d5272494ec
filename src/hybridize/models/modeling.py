"""`HybridForCausalLM`: a transformers `PreTrainedModel` + `GenerationMixin` whose layers are built from
`HybridConfig.layer_types` / `linear_mixers`.

Block (Llama / Qwen / Mistral): x + mixer(RMSNorm(x)), then + SwiGLU(RMSNorm(.)). The model computes the rotary
table, positions and masks once per forward (`SeqInfo`) and hands each mixer its layer of the cache; it never looks
at what kind of mixer a layer holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update

from ..mixers import SeqInfo, build_mixer, kernels
from ..mixers.base import Mixer, RMSNorm
from ..mixers.fusion import fuse_projections, project
from .cache import HybridCache, HybridStaticCache, cache_kwargs, output_cache, past_length, resolve_cache
from .configuration import HybridConfig


class HybridRotaryEmbedding(nn.Module):
    """RoPE tables for every scaling transformers implements (default, linear, dynamic, yarn, llama3, ...),
    built by transformers' own functions from `config.rope_parameters`."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            if self.rope_type not in ROPE_INIT_FUNCTIONS:
                raise ValueError(
                    f"rope_parameters.rope_type={self.rope_type!r} is not supported; allowed: "
                    f"{['default', *ROPE_INIT_FUNCTIONS]}"
                )
            fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: HybridConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base, dim = config.rope_parameters["rope_theta"], config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fused = kernels.rope_tables(position_ids, self.inv_freq, self.attention_scaling, x.dtype)
        if fused is not None:  # a decode step with the one-kernel paths on: the same tables in one launch
            return fused
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


class HybridMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)); with SiLU, act(.) * up is one fused kernel at inference on the GPU
    (`kernels.silu_mul`)."""

    fused_projections = ("gate_proj", "up_proj")

    def __init__(self, config: HybridConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.silu = config.hidden_act == "silu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(self, x, self.fused_projections)  # one matmul once fused (mixers/fusion.py)
        if self.silu:
            return self.down_proj(kernels.silu_mul(gate, up))
        return self.down_proj(self.act_fn(gate) * up)


class HybridBlock(GradientCheckpointingLayer):
    def __init__(self, config: HybridConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer = build_mixer(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = HybridMLP(config)

    def forward(self, x: torch.Tensor, info: SeqInfo, state=None, delta: torch.Tensor | None = None,
                defer: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x + mixer(norm(x)), then + mlp(norm(.)). Each residual add and the norm after it are one call
        (`kernels.add_rms_norm`: one kernel at inference on the GPU). `delta`: the previous block's last term, not yet
        added (this block's input is x + delta), so that add fuses with this block's input norm too; `defer`: return
        (x, mlp term) unsummed for the next block (or the final norm) to add."""
        if delta is None:
            normed = self.input_layernorm(x)
        else:
            x, normed = kernels.add_rms_norm(x, delta, self.input_layernorm.weight, self.input_layernorm.eps)
        h, _ = self.mixer(normed, info, state)
        norm = self.post_attention_layernorm
        x, normed = kernels.add_rms_norm(x, h, norm.weight, norm.eps)
        out = self.mlp(normed)
        return (x, out) if defer else x + out


class HybridPreTrainedModel(PreTrainedModel):
    config_class = HybridConfig
    config: HybridConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HybridBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Mixer):
            for name, value in module.fresh_parameters().items():
                init.copy_(module.get_parameter(name), value)

    def save_pretrained(self, save_directory, is_main_process: bool = True, *args, **kwargs):
        """transformers' `save_pretrained`, with the model's code beside the weights and `auto_map` in config.json:
        `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` then loads it where hybridize is not
        installed (`hybridize.models.portable`). The code is written first, so that `push_to_hub` uploads it too."""
        from .portable import AUTO_MAP, write_code

        self.config.auto_map = dict(AUTO_MAP)
        if is_main_process:
            write_code(save_directory)
        return super().save_pretrained(save_directory, is_main_process, *args, **kwargs)


class HybridModel(HybridPreTrainedModel):
    def __init__(self, config: HybridConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(HybridBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        uses_rope = config.attention_rope or (config.linear_rope and config.has_linear)
        self.rotary_emb = HybridRotaryEmbedding(config) if uses_rope else None
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        past_key_values = resolve_cache(past_key_values, cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = HybridCache(self.config)
        if not use_cache:
            past_key_values = None
        if isinstance(past_key_values, HybridStaticCache):
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with a cache")
            info = self.static_seq_info(x, past_key_values, attention_mask, position_ids)
        else:
            info = self.seq_info(x, attention_mask, position_ids, past_length(past_key_values), cu_seqlens)
        hidden_states = [] if output_hidden_states else None
        # in a decode step over the static cache with the one-kernel paths on (`kernels.fused_steps`) each block's last
        # residual add is left to the next block's input norm, one fused kernel; elsewhere, and where anything hooks
        # a block's output (the residual stream: distillation, FlashMorph), every block returns its sum
        defer = (kernels.steps_on() and T == 1 and isinstance(past_key_values, HybridStaticCache)
                 and hidden_states is None and not torch.is_grad_enabled()
                 and not any(layer._forward_hooks for layer in self.layers))
        delta = None
        for i, layer in enumerate(self.layers):
            if hidden_states is not None:
                hidden_states.append(x)
            state = None if past_key_values is None else past_key_values.layers[i]
            if defer:
                x, delta = layer(x, info, state, delta=delta, defer=True)
            else:
                x = layer(x, info, state)
        if delta is not None:
            _, x = kernels.add_rms_norm(x, delta, self.norm.weight, self.norm.eps)
        else:
            x = self.norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        if isinstance(past_key_values, (HybridCache, HybridStaticCache)):
            past_key_values.advance(T)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            **cache_kwargs(past_key_values),
        )


    def seq_info(self, x: torch.Tensor, attention_mask=None, position_ids=None, past: int = 0,
                 cu_seqlens=None) -> SeqInfo:
        """Positions, rotary tables and masks for new tokens x (B, T, hidden), computed once for all layers."""
        B, T = x.shape[:2]
        padding_mask = _padding_mask(attention_mask, B, past, T)
        if cu_seqlens is not None:
            cu_seqlens = _check_cu_seqlens(cu_seqlens, B, T, past, padding_mask)
        if position_ids is None:
            position_ids = _positions(padding_mask, cu_seqlens, past, B, T, x.device)
        cos = sin = None
        if self.rotary_emb is not None:
            cos, sin = self.rotary_emb(x, position_ids)
        return SeqInfo(position_ids, cos, sin, padding_mask, past, cu_seqlens)

    def static_seq_info(self, x: torch.Tensor, cache: HybridStaticCache, attention_mask=None,
                        position_ids=None) -> SeqInfo:
        """The same for a static cache. A one-token step computes everything from the cache's device tensors (no
        host sync, no shape that depends on the past: it can be captured); longer calls may look at the host."""
        B, T = x.shape[:2]
        past = cache.seen_tokens
        cache_position, new, positions = cache.begin(B, T, attention_mask)
        if position_ids is None:
            position_ids = positions
        cos = sin = None
        if self.rotary_emb is not None:
            cos, sin = self.rotary_emb(x, position_ids)
        if T == 1:  # the decode step: always the mask over the whole buffer
            return SeqInfo(position_ids, cos, sin, cache.valid, past, None, cache_position, new)
        if attention_mask is not None and not bool(new.all()):
            cache.padded = True
        if not cache.padded:
            return SeqInfo(position_ids, cos, sin, None, past, None, cache_position)
        return SeqInfo(position_ids, cos, sin, cache.valid, past, None, cache_position, new)


class HybridForCausalLM(HybridPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HybridConfig):
        super().__init__(config)
        self.model = HybridModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        past_key_values = resolve_cache(past_key_values, cache)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cu_seqlens=cu_seqlens,
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **cache_kwargs(output_cache(out))
        )

    @torch.no_grad()
    def prefill(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, *,
                chunk_size: int | None = None, cache: Cache | None = None,
                all_logits: bool = False) -> CausalLMOutputWithPast:
        """Run a prompt into a cache, `chunk_size` tokens at a time, so that prefill memory stays bounded at any
        prompt length: each chunk's attention sees the cache so far plus itself (no chunk x context mask tensor
        without padding), the linear mixers carry their state from chunk to chunk. Logits and cache equal a one-shot
        prefill's (tested).

        input_ids: (B, T), left-padded when rows differ in length, with `attention_mask` (B, T) 0/1; a cache that
        already holds tokens continues (then the mask may also cover them: (B, past + T)).
        cache: a `HybridCache` (dynamic) or `HybridStaticCache`; None makes a `HybridCache`.
        Returns the logits of the last position (B, 1, V), or of every position with `all_logits=True` (which is
        (B, T, V) and defeats the bounded memory), and the cache (`out.cache`; `out.past_key_values` before
        transformers 5.24).
        `generate(..., prefill_chunk_size=N)` (transformers' own option) runs the same chunks."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, tokens) with at least one token, got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if chunk_size is None:
            chunk_size = T
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer (tokens per prefill chunk) or None, got "
                             f"{chunk_size!r}")
        cache = HybridCache(self.config) if cache is None else cache
        past = past_length(cache)
        if attention_mask is not None:
            shape = tuple(attention_mask.shape)
            if len(shape) != 2 or shape[0] != B or shape[1] not in (T, past + T):
                raise ValueError(
                    f"attention_mask must be a 2-D 0/1 padding mask of shape (batch, tokens) = ({B}, {T}) or "
                    f"(batch, past + tokens) = ({B}, {past + T}), got {tuple(attention_mask.shape)}")
            if attention_mask.shape[1] == T and past:
                attention_mask = torch.cat([attention_mask.new_ones(B, past), attention_mask], dim=1)
        logits = []
        for start in range(0, T, chunk_size):
            end = min(start + chunk_size, T)
            out = self(input_ids[:, start:end], past_key_values=cache, use_cache=True,
                       attention_mask=None if attention_mask is None else attention_mask[:, : past + end],
                       logits_to_keep=0 if all_logits else 1)
            logits = [*logits, out.logits] if all_logits else [out.logits]  # only the last chunk's, unless asked
        return CausalLMOutputWithPast(logits=torch.cat(logits, dim=1) if all_logits else logits[-1],
                                      **cache_kwargs(cache))

    # CUDA-graph decode (generate on CUDA with a static cache) fuses the projections before it captures a step (why:
    # hybridize.mixers.fusion); False keeps them apart.
    decode_fusion: bool = True
    # True: the captured decode step runs its matmuls through our split-K GEMV instead of cuBLAS
    # (hybridize.mixers.kernels.decode_gemv); off: slower than cuBLAS on an H100 (results/decode-limit). Read when a
    # step is captured: after changing it, `get_compiled_call().release()` makes the next step capture anew.
    decode_gemv: bool = False
    # True: decode steps over the static cache take the one-kernel paths (hybridize.mixers.kernels.fused_steps: a
    # linear mixer's token, the attention prologue, add + norm, the cache bookkeeping): 1.2-1.3x faster steps and 295
    # kernels per step instead of 658 on an H100, GPU-tested for every mixer that has such a path (results/decode-limit).
    # False runs those ops one by one. Read when a step is captured, like decode_gemv.
    decode_steps: bool = True

    def fuse_projections(self) -> int:
        """Decode: one matmul for q|k|v(|gate) of each mixer and for gate|up of each MLP in steps of at most 64
        tokens (batch x new tokens; prefill was faster unfused), with no memory added
        (the projections' weights become views of the fused ones; saving, loading and training are unchanged).
        Returns the number of fused groups. See hybridize.mixers.fusion."""
        return fuse_projections(self)

    def state_size(self, context_len: int, batch_size: int = 1, dtype: torch.dtype | None = None) -> int:
        """Bytes of decode state (KV caches + recurrent and conv states) after `context_len` tokens."""
        dtype = dtype or self.dtype
        return batch_size * sum(layer.mixer.state_size(context_len, dtype) for layer in self.model.layers)

    def create_masks_for_generate(self, attention_mask=None, **kwargs):
        """generate turns the 2-D padding mask into 4-D masks when the cache is compileable (e.g. all-linear);
        our mixers build their own masks from the 2-D one, so keep it as it is."""
        return attention_mask

    def _prepare_static_cache(self, cache_implementation: str, batch_size: int, max_cache_len: int,
                              prefill_chunk_size: int | None, model_kwargs) -> HybridStaticCache:
        """`generate(..., cache_implementation="static")`: our preallocated hybrid cache instead of transformers'
        `StaticCache` (which has no notion of our tokens-seen count or of padding in a captured step)."""
        if cache_implementation != "static":
            raise ValueError(f"cache_implementation={cache_implementation!r} is not supported by hybrid models; "
                             "allowed: 'static' (HybridStaticCache) or None (the dynamic HybridCache)")
        return HybridStaticCache(self.config, max_cache_len, batch_size, dtype=self.dtype, device=self.device)

    def get_compiled_call(self, compile_config=None) -> Callable:
        """generate's hook for a fast decode step (transformers would `torch.compile` `__call__` here; it asks on CUDA
        when the cache is static): one-token steps on a `HybridStaticCache` replay a CUDA graph, everything else runs
        eagerly. Why a graph and not torch.compile: `hybridize/models/graphs.py`. `compile_config` is not used;
        `generate(..., disable_compile=True)` runs the static cache eagerly."""
        from .graphs import CudaGraphDecoder

        if getattr(self, "_graph_decoder", None) is None:
            self._graph_decoder = CudaGraphDecoder(self)
        return self._graph_decoder

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        # generate's default is a plain DynamicCache; ours is that cache plus a token count (see cache.py).
        for key in ("cache", "past_key_values"):  # the name generate uses since transformers 5.24, and before
            if type(model_kwargs.get(key)) is DynamicCache:
                model_kwargs[key] = HybridCache(self.config)


def _padding_mask(attention_mask: torch.Tensor | None, B: int, past: int, T: int) -> torch.Tensor | None:
    """(B, past + T) bool, or None when nothing is padded."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, past + T):
        raise ValueError(
            f"attention_mask must be a 2-D 0/1 padding mask of shape (batch, past + new tokens) = ({B}, {past + T}), "
            f"got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()
    if mask.shape[1] == T and past:  # only the new tokens given: the past is taken as unpadded
        mask = torch.cat([mask.new_ones(B, past), mask], dim=1)
    return None if bool(mask.all()) else mask


def _check_cu_seqlens(cu: torch.Tensor, B: int, T: int, past: int, padding_mask) -> torch.Tensor:
    if B != 1:
        raise ValueError(f"cu_seqlens packs documents along time in a batch of size 1, got batch size {B}")
    if past or padding_mask is not None:
        raise ValueError("cu_seqlens cannot be combined with a cache or an attention_mask")
    cu = cu.to(dtype=torch.long)
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != T or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing offsets from 0 to the sequence length {T}, got {cu.tolist()}")
    return cu


def _positions(padding_mask, cu_seqlens, past: int, B: int, T: int, device) -> torch.Tensor:
    if padding_mask is not None:  # left padding: count real tokens only
        return (padding_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
    if cu_seqlens is not None:  # packed documents: restart at each document
        idx = torch.arange(T, device=device)
        doc = torch.searchsorted(cu_seqlens[1:], idx, right=True)
        return (idx - cu_seqlens[doc]).unsqueeze(0)
    return torch.arange(past, past + T, device=device).unsqueeze(0).expand(B, T)
