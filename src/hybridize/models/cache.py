"""The hybrid cache: transformers' own `DynamicCache`, built from `config.layer_types` (a KV layer for each
attention layer, a `LinearAttentionLayer` with a fixed-size recurrent state for each linear one), plus a count of
the tokens it has seen. transformers asks the first attention layer for that length, which an all-linear model
does not have; the count also gives every layer the same notion of "past length".
"""

from __future__ import annotations

from transformers.cache_utils import Cache, DynamicCache


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
    if isinstance(cache, HybridCache):
        return cache.seen_tokens
    try:
        return int(cache.get_seq_length())
    except ValueError as err:  # transformers' cache of a model without attention layers
        raise ValueError(
            "this cache cannot tell how many tokens it holds (the model has no attention layer); "
            "use hybridize.HybridCache(config)"
        ) from err
