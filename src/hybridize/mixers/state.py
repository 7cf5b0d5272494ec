"""Preallocated decode state: the layers of `hybridize.models.HybridStaticCache`.

Every tensor here is allocated once, at its final size, and only ever written in place (`index_copy_`, `copy_`), so
its address never changes: a CUDA graph captured over one decode step replays against the same memory for every
later step. Where a token goes is a device tensor (`SeqInfo.cache_position`), never a Python int, for the same
reason.

* `StaticKV` (full attention): K and V buffers (B, Hkv, max_len, D); token t lives in slot t.
* `StaticKV` with a window (sliding attention): a ring of min(window, max_len) slots; token t lives in slot t % slots.
* `StaticState` (linear mixers): the recurrent state (B, *shape) fp32 ((B, H, K, V) for the matrix-state mixers,
  (B, D) for HGRN) and the short-convolution window (B, C, W), a transformers `LinearAttentionLayer` whose buffers
  exist from the start. Each mixer class says its shapes (`static_layer`).

A one-token step (T = 1) always sees the whole buffer, whatever has been written: its shapes never change, so it can
be captured. Longer calls (prefill, chunked prefill) run eagerly and see only what they need.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin, LinearAttentionLayer

Tensor = torch.Tensor


class StaticKV(CacheLayerMixin):
    is_compileable = True

    def __init__(self, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int, dtype, device,
                 window: int | None = None):
        super().__init__()
        self.window = window
        self.is_sliding = window is not None
        self.slots = max_len if window is None else min(window, max_len)
        shape = (batch_size, num_kv_heads, self.slots, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size, self.dtype, self.device = batch_size, dtype, device
        self.max_cache_len = self.slots
        self.is_initialized = True

    def write(self, k: Tensor, v: Tensor, cache_position: Tensor, past: int
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store the new k, v (B, Hkv, T, D) of tokens `cache_position` (T,) and return what the queries attend to:
        (keys, values, key_positions): key_positions (Lk,) is each key's index in the token stream, -1 for an empty
        slot; None for a longer call of full attention, whose keys are the tokens 0 .. past + T - 1 in order (the
        positions would be as long as the context; the caller builds them only where a mask needs them). `past`
        (tokens before this call) only shapes what a longer, eager call returns."""
        T = k.shape[2]
        if self.window is None:
            self.store(k, v, cache_position)
            if T == 1:  # the captured step: the whole buffer, unwritten slots masked as being in the future
                return self.keys, self.values, torch.arange(self.slots, device=k.device)
            end = past + T
            return self.keys[:, :, :end], self.values[:, :, :end], None
        if T == 1:  # write first: the slot it replaces holds a token just outside the window
            slot = cache_position % self.slots
            self.keys.index_copy_(2, slot, k)
            self.values.index_copy_(2, slot, v)
            return self.keys, self.values, self._ring_positions(cache_position[-1])
        # a longer call reads the ring before writing (its first queries still need the keys it would overwrite)
        if past == 0:
            keys, values, positions = k, v, cache_position
        else:
            positions = torch.cat([self._ring_positions(cache_position[0] - 1), cache_position])
            keys, values = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
        kept = min(T, self.slots)
        slot = cache_position[-kept:] % self.slots
        self.keys.index_copy_(2, slot, k[:, :, -kept:])
        self.values.index_copy_(2, slot, v[:, :, -kept:])
        return keys, values, positions

    def store(self, k: Tensor, v: Tensor, cache_position: Tensor) -> None:
        """Write k, v (B, Hkv, T, D) into the slots `cache_position` (T,) of a full-attention buffer."""
        self.keys.index_copy_(2, cache_position, k)
        self.values.index_copy_(2, cache_position, v)

    def _ring_positions(self, last: Tensor) -> Tensor:
        """(slots,) token held by each ring slot once token `last` (a 0-d tensor) is written; -1 where none yet."""
        j = torch.arange(self.slots, device=self.keys.device)
        t = last - torch.remainder(last - j, self.slots)
        return torch.where(t >= 0, t, torch.full_like(t, -1))

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("StaticKV is written through write(k, v, cache_position, past) by our Attention")

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated in __init__
        return None

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.slots, 0

    def get_seq_length(self) -> int:
        raise NotImplementedError("a StaticKV layer does not count tokens; ask its HybridStaticCache")

    def get_max_length(self) -> int:
        return self.slots

    def reset(self) -> None:
        self.keys.zero_()
        self.values.zero_()

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("beam search is not supported with the static hybrid cache; use the dynamic cache")


class StaticState(LinearAttentionLayer):
    """A `LinearAttentionLayer` whose recurrent state (B, *state_shape) fp32 and conv window (B, C, W) are allocated
    up front and overwritten in place (the mixers always hand over the full new state / window)."""

    # fixed shapes, written in place. generate replays its decode step (our CUDA graph) only for a compileable
    # cache, which transformers computes from its layers; 5.17's LinearAttentionLayer says False
    is_compileable = True

    def __init__(self, batch_size: int, state_shape: tuple[int, ...], conv_channels: int, conv_size: int, dtype,
                 device):
        super().__init__()
        self.batch_size = batch_size
        self.dtype, self.device = dtype, device
        self.recurrent_states[0] = torch.zeros(batch_size, *state_shape, dtype=torch.float32, device=device)
        self.is_recurrent_states_initialized[0] = True
        if conv_size and conv_channels:
            self.conv_states[0] = torch.zeros(batch_size, conv_channels, conv_size, dtype=dtype, device=device)
            self.conv_kernel_size[0] = conv_size
            self.is_conv_states_initialized[0] = True

    def update_recurrent_state(self, recurrent_states: Tensor, state_idx: int = 0, **kwargs) -> Tensor:
        if recurrent_states is not self.recurrent_states[state_idx]:  # a step that updated the buffer in place: no copy
            self.recurrent_states[state_idx].copy_(recurrent_states)
        self.has_previous_state[state_idx] = True
        return self.recurrent_states[state_idx]

    def update_conv_state(self, conv_states: Tensor, state_idx: int = 0, **kwargs) -> Tensor:
        self.conv_states[state_idx].copy_(conv_states)
        return self.conv_states[state_idx]

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("beam search is not supported with the static hybrid cache; use the dynamic cache")


class StaticIntra(CacheLayerMixin):
    """The static cache layer of an intra-layer block: a `StaticKV` for the attention heads beside a `StaticState`
    for the linear heads. The block hands `kv` to its attention branch and `linear` to its linear branch."""

    is_compileable = True

    def __init__(self, kv: StaticKV, linear: StaticState):
        super().__init__()
        self.kv, self.linear = kv, linear
        self.is_sliding = kv.is_sliding
        self.is_initialized = True
        self.max_cache_len = kv.max_cache_len
        # the parts' buffers (allocated once, written in place), seen where a cache layer's tensors are looked for
        self.keys, self.values = kv.keys, kv.values
        self.recurrent_states, self.conv_states = linear.recurrent_states, linear.conv_states
        self.is_conv_states_initialized = linear.is_conv_states_initialized

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("StaticIntra is written by the intra-layer block through its kv and linear parts")

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated in __init__
        return None

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.kv.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        raise NotImplementedError("a StaticIntra layer does not count tokens; ask its HybridStaticCache")

    def get_max_length(self) -> int:
        return self.kv.get_max_length()

    def reset(self) -> None:
        self.kv.reset()
        self.linear.reset()

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("beam search is not supported with the static hybrid cache; use the dynamic cache")
