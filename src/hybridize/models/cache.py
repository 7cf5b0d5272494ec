"""The hybrid cache: transformers' own `DynamicCache`, built from `config.layer_types` (a KV layer for each
attention layer, a `LinearAttentionLayer` with a fixed-size recurrent state for each linear one), plus a count of
the tokens it has seen. transformers asks the first attention layer for that length, which an all-linear model
does not have; the count also gives every layer the same notion of "past length".
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..mixers import kernels

# transformers 5.24 renamed the cache argument of `forward`/`generate` and the output field from `past_key_values` to
# `cache` (the old name is still accepted with a deprecation warning); 5.17-5.23 know only `past_key_values`. Our
# models take either name and fill in the field this transformers has, so both work.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(cache: Cache | None) -> dict:
    """{CACHE_FIELD: cache}: the keyword under which an output class of this transformers holds a cache."""
    return {CACHE_FIELD: cache}


def output_cache(out) -> Cache | None:
    """The cache a model output holds, under either transformers' name."""
    return getattr(out, CACHE_FIELD)


def resolve_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """One cache from the two names a forward may be given it under (`cache` since transformers 5.24)."""
    if cache is None:
        return past_key_values
    if past_key_values is not None and past_key_values is not cache:
        raise ValueError("give the cache once: as `cache` or as `past_key_values` (the same argument), not both")
    return cache


class HybridCache(DynamicCache):
    def __init__(self, config, **kwargs):
        super().__init__(config=config, **kwargs)
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def advance(self, num_tokens: int) -> None:
        """Called by the model once per forward, after every layer has written its state."""
        self.seen_tokens += num_tokens

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a recurrent state cannot be rolled back; re-run the prefix instead")


def past_length(cache: Cache | None) -> int:
    """Tokens a cache has seen, for ours and for the caches transformers builds."""
    if cache is None:
        return 0
    if isinstance(cache, (HybridCache, HybridStaticCache)):
        return cache.seen_tokens
    try:
        return int(cache.get_seq_length())
    except ValueError as err:  # transformers' cache of a model without attention layers
        raise ValueError(
            "this cache cannot tell how many tokens it holds (the model has no attention layer); "
            "use hybridize.HybridCache(config)"
        ) from err


class HybridStaticCache(Cache):
    """A preallocated hybrid cache for fast decode: every buffer has its final size and address from the start.

    Per layer (see `hybridize.mixers.state`): a KV buffer of `max_cache_len` tokens for full attention, a ring of
    `sliding_window` slots for sliding attention, the fixed-size recurrent state (+ conv window) for linear mixers.
    Shared by all layers, as device tensors written in place:
        length (0-d long): tokens written so far = the slot of the next token;
        valid (B, max_cache_len) bool: which slots hold real tokens (left padding is False);
        real (B,) long: real tokens per row, from which the next position ids follow.
    `seen_tokens` is the same count as a Python int, for the eager code; a replayed CUDA graph advances the tensors
    itself and its runner (`hybridize.models.graphs`) advances `seen_tokens`.

        cache = HybridStaticCache(model.config, max_cache_len=4096, batch_size=8, dtype=torch.bfloat16, device="cuda")
        model.prefill(prompt_ids, attention_mask=mask, cache=cache, chunk_size=2048)

    `generate(..., cache_implementation="static")` builds one sized for the call.
    """

    def __init__(self, config, max_cache_len: int, batch_size: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        from ..mixers import MIXERS

        for name, value in (("max_cache_len", max_cache_len), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        device = torch.device(device)
        layers = [MIXERS[config.mixer_name(i)].static_layer(config, i, batch_size, max_cache_len, dtype, device)
                  for i in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        self._max_cache_len = max_cache_len
        self._max_batch_size = batch_size
        self.length = torch.zeros((), dtype=torch.long, device=device)
        self.valid = torch.zeros(batch_size, max_cache_len, dtype=torch.bool, device=device)
        self.real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.seen_tokens = 0
        self.padded = False  # some prefill token was padding: longer calls then need the padding mask

    # transformers 5.17 makes both read-only properties of the base class (computed from its layers)
    @property
    def max_cache_len(self) -> int:
        return self._max_cache_len

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    def begin(self, B: int, T: int, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
        """Register T new tokens (B rows): mark their slots, advance the counters. Returns (cache_position (T,),
        new-token mask (B, T) bool, position ids (B, T)), all computed on the device without reading it back."""
        if B != self.max_batch_size:
            raise ValueError(f"this HybridStaticCache holds batch_size={self.max_batch_size}, got a batch of {B}")
        if self.seen_tokens + T > self.max_cache_len:
            raise ValueError(f"the static cache holds max_cache_len={self.max_cache_len} tokens; {self.seen_tokens} "
                             f"are in it and {T} more do not fit (build it with a larger max_cache_len)")
        past = self.seen_tokens
        if attention_mask is not None:
            shape = tuple(attention_mask.shape)
            if len(shape) != 2 or shape[0] != B or shape[1] not in (T, past + T):
                raise ValueError(
                    f"attention_mask must be a 2-D 0/1 padding mask of shape (batch, past + new tokens) = "
                    f"({B}, {past + T}) or (batch, new tokens) = ({B}, {T}), got {tuple(attention_mask.shape)}")
        if T == 1 and kernels.steps_on():  # a decode step: one kernel inside `kernels.fused_steps` on the GPU
            fused = kernels.decode_begin(self.length, self.valid, self.real,
                                         None if attention_mask is None else attention_mask[:, -1])
            if fused is not None:
                return fused
        if attention_mask is None:
            new = torch.ones(B, T, dtype=torch.bool, device=self.valid.device)
        else:
            new = attention_mask[:, -T:].to(torch.bool)
        cache_position = self.length + torch.arange(T, device=self.valid.device)
        self.valid.index_copy_(1, cache_position, new)
        position_ids = (self.real[:, None] + new.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens only
        self.real.add_(new.long().sum(-1))
        self.length.add_(T)
        return cache_position, new, position_ids

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_cache_len

    @property
    def batch_size(self) -> int:
        return self.max_batch_size

    def advance(self, num_tokens: int) -> None:
        """Called by the model once per forward, after every layer has written its state."""
        self.seen_tokens += num_tokens

    def reset(self) -> None:
        super().reset()
        self.length.zero_()
        self.valid.zero_()
        self.real.zero_()
        self.seen_tokens = 0
        self.padded = False

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a recurrent state cannot be rolled back; re-run the prefix instead")
