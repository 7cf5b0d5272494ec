"""CUDA-graph replay of the one-token decode step over a `HybridStaticCache`.

Decode of a small model at small batch is launch-bound: a 28-layer step is some 400 small kernels, each a few
microseconds of CPU work, while the GPU needs ~1.5 ms to stream the weights (METHODS.md: the stock Qwen3-1.7B
eager step takes 37-73 ms, its compiled static step 8.2 ms, the bandwidth bound 1.5 ms at 8K). Replaying a
captured graph launches the whole step at once.

Why a manual `torch.cuda.CUDAGraph` capture and not `torch.compile(mode="reduce-overhead")`:
* the linear mixers' decode kernels are fla's Triton kernels behind `torch.autograd.Function`s with their own
  autotuners; a capture records whatever the step launches, while dynamo would have to trace through (or break
  around) fla's Python wrappers, and a graph break splits the step into several graphs;
* no compile time (minutes for 28 layers) and no recompile per batch size: a capture takes one eager step plus a
  recording, per (cache, batch size);
* the captured code is exactly the eager code the CPU tests run (`HybridStaticCache` on the CPU runs the same step
  without graphs), so what the tests check is what replays.
What it gives up: the kernel fusion inductor would do on the small elementwise ops (norms, rotary, gates); those
read and write (B, hidden)-sized tensors, small next to the weights and the KV cache that bound the step.

Before each capture the decoder fuses the model's input projections (`hybridize.mixers.fusion`: one matmul for
q|k|v|gate and one for gate|up; measured there), unless `model.decode_fusion` is False. With `model.decode_gemv` True
(default False: opt-in until a GPU measurement says otherwise) the captured step runs its matmuls through our split-K
GEMV (`hybridize.mixers.kernels.decode_gemv`, `hybridize/mixers/triton/gemv.py`) instead of cuBLAS.

What keeps the step capturable (see `HybridModel.static_seq_info` and `hybridize.mixers.state`): every buffer the
step touches has a fixed address; where the new token goes and its position are device tensors; T = 1 attends over
the whole buffer under a mask built from tensors; nothing reads a value back to the host. RoPE scalings that
recompute their tables from the largest position ("dynamic", "longrope") read back and run eagerly instead.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..mixers import kernels
from ..mixers.fusion import fuse_projections
from .cache import HybridStaticCache, cache_kwargs, resolve_cache

# generate's per-step arguments that the captured step takes care of (or that do not change its result);
# `position_ids` is replayed through a buffer of its own; `cache_position` is ignored: the static cache tracks
# where each token goes on the device. Arguments that are None or False change nothing either.
_HANDLED = {"input_ids", "attention_mask", "past_key_values", "cache", "use_cache", "return_dict", "logits_to_keep",
            "position_ids", "cache_position"}


@dataclass
class _Captured:
    cache: HybridStaticCache
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor  # (B, 1) long: copied into before each replay
    new_mask: torch.Tensor  # (B, 1) long
    logits: torch.Tensor  # (B, 1, V): written by each replay
    position_ids: torch.Tensor | None  # (B, 1) long when the step was captured with them


class CudaGraphDecoder:
    """Call it like the model. A one-token step on a CUDA `HybridStaticCache` replays a graph captured for that
    cache and batch size (captured on first use: one eager step, which is a real step, then a recording); anything
    else runs the model eagerly. The logits it returns live in the graph's output buffer and are overwritten by the
    next replay (generate copies them at once). The last graph keeps its cache alive until `release()` or the next
    capture."""

    def __init__(self, model):
        # The model keeps its decoder (`get_compiled_call`); the decoder refers back weakly, so that `del model` frees
        # the weights and the captured graph at once instead of at the next full garbage collection (a reference cycle
        # kept each earlier model of a `hybridize bench` run on the GPU: 3.2-3.6 GiB per Qwen3-1.7B-shaped variant).
        self._model = weakref.ref(model)
        self.captured: _Captured | None = None
        self.replays = 0
        self.eager_reason: str | None = None  # why the last call ran eagerly (None: it replayed or captured)
        rope = (model.config.rope_parameters or {}).get("rope_type", "default")  # fixed by the config: checked once
        self._rope_reason = (f"rope_type {rope!r} recomputes its tables on the host"
                             if rope in ("dynamic", "longrope") else None)

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this decode step was deleted; call get_compiled_call() on a live model")
        return model

    def why_not_capturable(self, input_ids, past_key_values, kwargs) -> str | None:
        """None when this call can replay a graph, else the reason (kept in `eager_reason` for diagnosis)."""
        extra = sorted(k for k, v in kwargs.items() if k not in _HANDLED and v is not None and v is not False)
        position_ids = kwargs.get("position_ids")
        for failed, reason in (
            (not isinstance(past_key_values, HybridStaticCache), "the cache is not a HybridStaticCache"),
            (input_ids is None, "no input_ids (inputs_embeds run eagerly)"),
            (input_ids is not None and input_ids.shape[1] != 1, "more than one new token"),
            (bool(extra), f"arguments the captured step does not take: {extra}"),
            (position_ids is not None and tuple(position_ids.shape) != (input_ids.shape[0], 1),
             "position_ids are not (batch, 1)"),
            (self._rope_reason is not None, self._rope_reason),
            (torch.is_grad_enabled(), "autograd is on (decode under torch.no_grad())"),
            (not input_ids.is_cuda, "input_ids are not on a CUDA device"),  # last: the CPU tests check the rest
        ):
            if failed:
                return reason
        return None

    def __call__(self, input_ids=None, attention_mask=None, past_key_values=None, cache=None, **kwargs):
        past_key_values = resolve_cache(past_key_values, cache)  # `cache` is generate's name since transformers 5.24
        self.eager_reason = self.why_not_capturable(input_ids, past_key_values, kwargs)
        if self.eager_reason is not None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                              **kwargs)
        cache = past_key_values
        if cache.seen_tokens + 1 > cache.max_cache_len:  # the replay would write past the buffer, unchecked
            raise ValueError(f"the static cache holds max_cache_len={cache.max_cache_len} tokens and is full")
        B = input_ids.shape[0]
        new_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask[:, -1:].long()
        position_ids = kwargs.get("position_ids")
        c = self.captured
        if (c is None or c.cache is not cache or c.input_ids.shape[0] != B
                or (c.position_ids is None) != (position_ids is None)):
            if getattr(self.model, "decode_fusion", False):
                fuse_projections(self.model)  # no-op once fused; again after a .to() replaced the weights
            return self._capture(cache, input_ids, new_mask, position_ids)
        c.input_ids.copy_(input_ids)
        c.new_mask.copy_(new_mask)
        if position_ids is not None:
            c.position_ids.copy_(position_ids)
        c.graph.replay()
        cache.advance(1)
        self.replays += 1
        return CausalLMOutputWithPast(logits=c.logits, **cache_kwargs(cache))

    def release(self) -> None:
        """Drop the captured graph, its memory pool and its hold on the cache (the next step captures anew)."""
        self.captured = None

    def _step(self, cache, input_ids, new_mask, position_ids):
        model = self.model
        with (kernels.decode_gemv() if getattr(model, "decode_gemv", False) else contextlib.nullcontext(),
              kernels.fused_steps(getattr(model, "decode_steps", False))):
            return model(input_ids=input_ids, attention_mask=new_mask, past_key_values=cache, use_cache=True,
                         logits_to_keep=1, position_ids=position_ids).logits

    def _capture(self, cache: HybridStaticCache, input_ids, new_mask, position_ids) -> CausalLMOutputWithPast:
        self.captured = None  # release the previous graph's memory pool first
        ids, mask = input_ids.clone(), new_mask.clone()
        pos = None if position_ids is None else position_ids.clone()
        # The warm-up is this step, for real, on a side stream (lazy cuBLAS / Triton autotuning happen here, outside
        # the capture, as torch.cuda.graphs asks).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self._step(cache, ids, mask, pos).clone()
        torch.cuda.current_stream().wait_stream(side)
        # Recording runs the Python once but no kernel: undo the host-side count it advanced.
        seen = cache.seen_tokens
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._step(cache, ids, mask, pos)
        cache.seen_tokens = seen
        self.captured = _Captured(cache, graph, ids, mask, out, pos)
        return CausalLMOutputWithPast(logits=logits, **cache_kwargs(cache))
