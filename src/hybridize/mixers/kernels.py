"""The one place that chooses how a linear-mixer recurrence runs.

* backend "fla": fla's Triton kernels (`chunk_*` for sequences, `fused_recurrent_*` for decode). CUDA only;
  fla is imported on first use, so importing hybridize never imports Triton.
* backend "torch": the pure-PyTorch references in `reference.py` (chunked form for sequences, recurrent form for
  single steps). Runs anywhere; it is what the CPU tests and CPU training use, and what the GPU tests compare the
  fla kernels against.

* our own Triton kernels (`hybridize/mixers/triton/`) for the inference-only fused ops that neither torch nor fla
  fuse for us: the one-token attention step over a static KV cache, RMSNorm, RoPE. `fused_inference(x)` says when
  they run: CUDA tensors, autograd off, not inside torch.compile's tracing (inductor fuses these ops itself), Triton
  importable, backend not forced to "torch". Their references are the ordinary PyTorch code they replace; the tests
  run the kernels on the CPU in Triton's interpreter (TRITON_INTERPRET=1) and on the GPU, against those references.
  `rms_norm`, `rms_norm_gated`, `rope` and `silu_mul` below choose between a fused kernel (`triton/fused.py`) and
  its reference (`reference.rms_norm`, `reference.apply_rope`, `F.silu(gate) * up`).
* the split-K GEMV (`triton/gemv.py`) for the matmuls of a decode step, opt-in: `linear` chooses between it and
  `F.linear` under the same conditions, for at most `GEMV_MAX_ROWS` rows; `with decode_gemv():` sends every
  `F.linear` (each `nn.Linear`, the fused projections, the lm_head) through `linear`. The CUDA-graph decoder
  (`hybridize/models/graphs.py`) enters it around the step it captures when `model.decode_gemv` is True.

"auto" picks fla for CUDA tensors when fla is installed, else torch. `HYBRIDIZE_BACKEND=torch|fla` or
`with force_backend("torch"):` overrides it (used by the GPU tests to run both on the same inputs).
One exception to "auto": fla refuses the backward of its chunked ops with a per-token decay (the gated delta rule,
simple GLA with `g`) on Hopper with Triton >= 3.4 and < 3.7.1 (wrong gradients, fla issue 640). Where a call needs
gradients, `_fla_backward_works` asks fla once per op and device (a one-chunk forward and backward); where fla
refuses, such calls run the PyTorch chunked form instead, with one warning, so training works on that stack too
(slower; Triton >= 3.7.1 brings fla's kernels back).
The mode ("chunk" or "recurrent") defaults to recurrent for short inference calls (decode) and chunk otherwise,
which is also what fla's own layers do.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import reference

Tensor = torch.Tensor
BACKENDS = ("auto", "torch", "fla")
_forced: str | None = os.environ.get("HYBRIDIZE_BACKEND") or None
# Up to this many tokens an inference call uses the recurrent form (fla's layers use 64 as well).
RECURRENT_MAX_T = 64


@contextlib.contextmanager
def force_backend(name: str | None) -> Iterator[None]:
    """Run the enclosed code with a fixed backend ("torch" or "fla"); None restores automatic choice."""
    global _forced
    if name not in (None, "auto", "torch", "fla"):
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, (None if name == "auto" else name)
    try:
        yield
    finally:
        _forced = previous


@functools.cache
def fla_available() -> bool:
    try:
        import fla.ops  # noqa: F401
    except Exception:  # ImportError, or Triton failing to find a driver
        return False
    return True


@functools.cache
def triton_available() -> bool:
    try:
        import triton.language  # noqa: F401 (imports triton too)
    except Exception:
        return False
    return True


def fused_inference(x: Tensor) -> bool:
    """Whether inference-only fused Triton kernels replace the PyTorch ops for this tensor (see the module doc)."""
    if _forced == "torch" or not x.is_cuda or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return triton_available()


def _fusable(x: Tensor, *others: Tensor) -> bool:
    """`fused_inference(x)`, and x and the others in dtypes the kernels take (others, fp64 say, run the reference)."""
    return fused_inference(x) and all(t.dtype in _FUSED_DTYPES for t in (x, *others))


def decode_attention_ok(q: Tensor) -> bool:
    """Whether `decode_attention` takes this query: `_fusable`, head_dim <= 256 (one tile of the head in
    registers)."""
    return _fusable(q) and q.shape[-1] <= 256


def decode_attention(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None, scale: float,
                     gate: Tensor | None = None) -> Tensor:
    """The one-token attention step over a static KV buffer (Triton, split-K, fp32 scores); q (B, Hkv, G, D),
    k/v (B, Hkv, N, D), pos the new token's slot (device tensor), valid (B, N) or None; gate (B, 1, H * D) or None:
    the output times sigmoid(gate) in the same launch. Callers check `decode_attention_ok` first; without it the
    attention mixer runs masked SDPA, the kernel's reference."""
    from .triton.decode_attention import decode_attention as kernel

    with _on_device(q):
        return kernel(q, k, v, pos, valid, scale, gate=gate)


def _on_device(x: Tensor):
    """Triton launches on the current CUDA device, not on its arguments' one: a model placed on another GPU (a
    `device_map` over several) needs the current device switched around each launch, as fla's kernels do."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fused():
    from .triton import fused  # imports Triton: only ever on this path

    return fused


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim (`RMSNorm.forward`): one fused kernel at inference on the GPU, else
    `reference.rms_norm`."""
    if _fusable(x, weight) and weight.dim() == 1:
        with _on_device(x):
            return _fused().rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def add_rms_norm(x: Tensor, h: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x + h, RMSNorm(x + h)): the residual add and the norm after it, one fused kernel at inference on the GPU
    inside `fused_steps`, else `x + h` and the norm (`rms_norm`)."""
    if _steps and _fusable(x, h, weight) and weight.dim() == 1 and h.shape == x.shape and h.dtype == x.dtype:
        with _on_device(x):
            return _fused().add_rms_norm(x, h, weight, eps)
    s = x + h
    return s, rms_norm(s, weight, eps)


def rms_norm_gated(x: Tensor, weight: Tensor, eps: float, gate: Tensor, activation: str) -> Tensor:
    """RMSNorm(x) * act(gate) with act "sigmoid" or "silu" (the linear mixers' output norm and gate): one fused
    kernel at inference on the GPU, else those ops."""
    if (_fusable(x, weight) and weight.dim() == 1 and gate.shape == x.shape
            and gate.dtype == torch.promote_types(weight.dtype, x.dtype)):
        with _on_device(x):
            return _fused().rms_norm(x, weight, eps, gate, activation)
    act = torch.sigmoid(gate) if activation == "sigmoid" else F.silu(gate)
    return reference.rms_norm(x, weight, eps) * act


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE on q (B, T, H, D) and k (B, T, Hk, D) with cos, sin (B or 1, T, D): one fused kernel for
    both at inference on the GPU, else `reference.apply_rope`."""
    if _fusable(q, k, cos) and _rope_fusable(q, k, cos, sin):
        with _on_device(q):
            return _fused().apply_rope(q, k, cos, sin)
    return reference.apply_rope(q, k, cos, sin)


def _rope_fusable(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> bool:
    """The shapes the kernel takes; anything else (that the reference may still broadcast) runs the reference."""
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or cos.shape != sin.shape or cos.dtype != sin.dtype:
        return False
    B, T, _, D = q.shape
    return (k.shape[:2] == (B, T) and k.shape[3] == D and cos.shape[2] == D and D % 2 == 0
            and cos.shape[0] in (1, B) and cos.shape[1] in (1, T))


def attention_prologue_ok(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, q_weight: Tensor | None,
                          cos: Tensor | None) -> bool:
    """Whether `attention_decode_prologue` takes this one-token step in one kernel: fused inference, q, k, v and the
    cache in one dtype (and the norm weights and RoPE tables: the reference rounds their products to it), an even
    head dim of at most 256."""
    if not _fusable(q, k, v) or q.dim() != 4 or q.shape[1] != 1 or k.dim() != 4 or v.shape != k.shape:
        return False
    D = q.shape[-1]
    return (q.dtype == k.dtype == v.dtype == keys.dtype and D % 2 == 0 and D <= 256 and k.shape[-1] == D
            and keys.stride(-1) == 1 and (q_weight is None or q_weight.dtype == q.dtype)
            and (cos is None or cos.dtype == q.dtype))


def attention_decode_prologue(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor, pos: Tensor, *,
                              q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                              cos: Tensor | None = None, sin: Tensor | None = None, hype_a: float | None = None,
                              position_ids: Tensor | None = None) -> Tensor:
    """An attention layer's decode token before the attention: q/k norm, RoPE, HyPE's query scale, k and v into the
    static cache's buffers at slot `pos`; one kernel where `attention_prologue_ok` says so
    (`triton/attention_prologue.py`), else `reference.attention_decode_prologue`. Returns q (B, 1, H, D)."""
    args = dict(q_weight=q_weight, k_weight=k_weight, eps=eps, cos=cos, sin=sin, hype_a=hype_a,
                position_ids=position_ids)
    if attention_prologue_ok(q, k, v, keys, q_weight, cos):
        from .triton.attention_prologue import attention_decode_prologue as kernel

        with _on_device(q):
            return kernel(q, k, v, keys, values, pos, **args)
    return reference.attention_decode_prologue(q, k, v, keys, values, pos, **args)


def linear_decode_ok(x: Tensor, heads: tuple[int, int, int], state: Tensor, q_weight: Tensor | None,
                     cos: Tensor | None) -> bool:
    """Whether `linear_decode_step` takes the one-token step of input x (B, 1, hidden) with `heads` (H, K, V) (q, k,
    v in x's dtype): fused inference, the norm weights and RoPE tables in x's dtype (the reference rounds their
    products to it), an fp32 contiguous (B, H, K, V) state, an even head dim of at most 256 (the two halves of one
    head in registers)."""
    if not _fusable(x) or x.dim() != 3 or x.shape[1] != 1:
        return False
    H, K, V = heads
    return (K % 2 == 0 and K <= 256 and state.dtype == torch.float32 and state.is_contiguous()
            and state.shape == (x.shape[0], H, K, V) and (q_weight is None or q_weight.dtype == x.dtype)
            and (cos is None or cos.dtype == x.dtype))


def _step_ok(q: Tensor, k: Tensor, v: Tensor, state: Tensor, q_weight: Tensor | None, cos: Tensor | None) -> bool:
    """`linear_decode_ok` for the projections q, k (B, 1, H, K), v (B, 1, H, V) themselves."""
    return (q.dim() == 4 and q.dtype == k.dtype == v.dtype and k.shape == q.shape
            and linear_decode_ok(q[:, :, 0], (q.shape[2], q.shape[3], v.shape[-1]), state, q_weight, cos))


def linear_decode_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Tensor | None, *, scale: float,
                       q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                       cos: Tensor | None = None, sin: Tensor | None = None, mask: Tensor | None = None,
                       gate_logits: Tensor | None = None, gate_normalizer: float = 1.0) -> Tensor:
    """One decode token of a linear mixer with a decay: q/k norm, RoPE, S = exp(g) S + k^T v (state updated in
    place; none where `mask` (B, 1) is False, whose q, k, v count as zero), o = scale q S, with g the fixed per-head
    `log_decay` (Lightning, RetNet) or GLA's logsigmoid(gate_logits) / gate_normalizer per key channel, in one kernel
    where `linear_decode_ok` says so (`triton/linear_decode.py`), else `reference.linear_decode_step`. Returns o
    (B, 1, H, V)."""
    args = dict(scale=scale, q_weight=q_weight, k_weight=k_weight, eps=eps, cos=cos, sin=sin, mask=mask,
                gate_logits=gate_logits, gate_normalizer=gate_normalizer)
    if _step_ok(q, k, v, state, q_weight, cos):
        from .triton.linear_decode import linear_decode_step as kernel

        with _on_device(q):
            return kernel(q, k, v, state, log_decay, **args)
    return reference.linear_decode_step(q, k, v, state, log_decay, **args)


def gdn_decode_step(q: Tensor, k: Tensor, v: Tensor, a: Tensor | None, b: Tensor, A_log: Tensor | None,
                    dt_bias: Tensor | None, state: Tensor, *, scale: float, activation: str | None = "silu",
                    q_weight: Tensor | None = None, k_weight: Tensor | None = None, eps: float = 1e-6,
                    cos: Tensor | None = None, sin: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """One decode token of Gated DeltaNet from its raw projections (activations, norms, RoPE, gates, L2 norm, the
    delta rule with the state updated in place), in one kernel where `linear_decode_ok` says so
    (`triton/gdn_decode.py`), else `reference.gdn_decode_step`; a, A_log, dt_bias None: DeltaNet's step (no decay).
    Returns o (B, 1, H, V)."""
    args = dict(scale=scale, activation=activation, q_weight=q_weight, k_weight=k_weight, eps=eps, cos=cos, sin=sin,
                mask=mask)
    if _step_ok(q, k, v, state, q_weight, cos):
        from .triton.gdn_decode import gdn_decode_step as kernel

        with _on_device(q):
            return kernel(q, k, v, a, b, A_log, dt_bias, state, **args)
    return reference.gdn_decode_step(q, k, v, a, b, A_log, dt_bias, state, **args)


def rope_tables(position_ids: Tensor, inv_freq: Tensor, scaling: float, dtype: torch.dtype
                ) -> tuple[Tensor, Tensor] | None:
    """cos, sin (B, T, D) of a decode step's positions in one kernel inside `fused_steps` on the GPU
    (`fused.rope_tables`); None elsewhere (the caller computes them with PyTorch operators)."""
    if not (_steps and _fusable(inv_freq) and dtype in _FUSED_DTYPES and position_ids.dim() == 2
            and inv_freq.dim() == 1):
        return None
    with _on_device(inv_freq):
        return _fused().rope_tables(position_ids, inv_freq, scaling, dtype)


def decode_begin(length: Tensor, valid: Tensor, real: Tensor, mask: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor] | None:
    """A static cache's bookkeeping for one new token (slot, padding bit, position, counters) in one kernel inside
    `fused_steps` on the GPU (`fused.decode_begin`); None elsewhere (the cache runs its PyTorch operators)."""
    if not (_steps and fused_inference(real) and real.dtype == torch.long and length.dtype == torch.long
            and valid.dtype == torch.bool and valid.is_contiguous()
            and (mask is None or (mask.dim() == 1 and not mask.is_floating_point()))):
        return None
    with _on_device(real):
        return _fused().decode_begin(length, valid, real, mask)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU's `F.silu(gate) * up`: one fused kernel at inference on the GPU, else those two ops."""
    if _fusable(gate, up) and gate.shape == up.shape:
        with _on_device(gate):
            return _fused().silu_mul(gate, up)
    return F.silu(gate) * up


# A decode step's matmuls have batch x 1 rows; up to this many the GEMV replaces F.linear under `decode_gemv()`
# (the kernel takes up to 16: `triton.gemv.MAX_ROWS`).
GEMV_MAX_ROWS = 8


def gemv_ok(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether `linear` runs the split-K GEMV: `fused_inference(x)`, at most GEMV_MAX_ROWS rows, x, weight (and bias)
    of one dtype the kernel takes, weight 2-D with a contiguous last dim."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        return False
    if x.numel() > GEMV_MAX_ROWS * x.shape[-1] or weight.stride(1) != 1 or weight.dtype != x.dtype:
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.shape != (weight.shape[0],)):
        return False
    return _fusable(x)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:  # noqa: A002 (F.linear's names)
    """`F.linear(input, weight, bias)`: the split-K GEMV (`triton/gemv.py`) where `gemv_ok`, else F.linear."""
    if gemv_ok(input, weight, bias):
        from .triton.gemv import gemv  # imports Triton: only ever on this path

        with _on_device(input):
            return gemv(input, weight, bias)
    return F.linear(input, weight, bias)


class _LinearsThroughGemv(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return linear(*args, **kwargs)
        return func(*args, **kwargs)


_steps = False


@contextlib.contextmanager
def fused_steps(enabled: bool = True) -> Iterator[None]:
    """Inside (enabled), a decode step takes the one-kernel paths: a linear mixer's token (`linear_decode_step`,
    `gdn_decode_step`), an attention layer's prologue with its output gate in the attention's merge, and each
    residual add fused with the norm after it (`add_rms_norm`), where `fused_inference` allows the fused kernels.
    Outside, those ops run one by one as before. The model's `decode_steps` switches it around its decode steps
    (off by default until the GPU tests of these kernels pass on a GPU)."""
    global _steps
    before, _steps = _steps, enabled
    try:
        yield
    finally:
        _steps = before


def steps_on() -> bool:
    """Whether the one-kernel decode paths may run (`fused_steps`)."""
    return _steps


@contextlib.contextmanager
def decode_gemv() -> Iterator[None]:
    """Inside, every `F.linear` call (nn.Linear's forward, the fused projections, the lm_head) goes through `linear`:
    the GEMV for decode-sized inputs on the GPU, F.linear for the rest. Meant around a decode step that is captured
    in a CUDA graph: the mode costs Python time per operator, which a replay does not pay."""
    with _LinearsThroughGemv():
        yield


def backend_for(x: Tensor) -> str:
    if _forced is not None:
        if _forced == "fla" and not x.is_cuda:
            raise RuntimeError("the fla backend needs CUDA tensors; unset HYBRIDIZE_BACKEND or use 'torch'")
        if _forced not in ("torch", "fla"):
            raise ValueError(f"HYBRIDIZE_BACKEND must be one of {BACKENDS}, got {_forced!r}")
        return _forced
    return "fla" if x.is_cuda and fla_available() else "torch"


def _needs_grad(*xs: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


@functools.cache
def _fla_backward_works(op: str, device: torch.device) -> bool:
    """Whether fla's chunked `op` ("gated_delta_rule" or "simple_gla", each with a per-token log decay) runs its
    backward on `device` with the Triton installed: a one-chunk forward and backward, once per op and device. fla
    raises there on Hopper with Triton >= 3.4 and < 3.7.1 unless another of its backends takes the op; any error of
    the probe counts as a refusal, named in the warning."""
    with torch.enable_grad(), (torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()):
        x = torch.randn(1, 64, 1, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
        g = F.logsigmoid(torch.randn(1, 64, 1, device=device)).requires_grad_(True)
        try:
            if op == "gated_delta_rule":
                from fla.ops.gated_delta_rule import chunk_gated_delta_rule

                beta = torch.rand(1, 64, 1, device=device, dtype=torch.bfloat16)
                o, _ = chunk_gated_delta_rule(x, x, x, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
            else:
                from fla.ops.simple_gla import chunk_simple_gla

                o, _ = chunk_simple_gla(x, x, x, g=g)
            o.float().sum().backward()
        except Exception as e:  # fla's RuntimeError on that stack; anything else is as unusable for training
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"fla's chunked {op} has no backward here ({first}): calls that need gradients run "
                          "hybridize's PyTorch chunked form instead (slower; Triton >= 3.7.1 restores fla's kernels)",
                          RuntimeWarning, stacklevel=3)
            return False
    return True


def _gated_backend(x: Tensor, op: str, mode: str, *grad_inputs: Tensor | None) -> str:
    """`backend_for(x)`, except a chunked call of a gated op that needs gradients where fla has no backward for it
    (`_fla_backward_works`; not when the backend is forced): "torch" then."""
    backend = backend_for(x)
    if (backend == "fla" and _forced is None and mode == "chunk" and _needs_grad(*grad_inputs)
            and not torch.compiler.is_compiling() and not _fla_backward_works(op, x.device)):
        return "torch"
    return backend


def _common_dtype(*xs: Tensor) -> tuple[Tensor, ...]:
    """The kernels want q, k, v in one dtype. Under autocast a norm with an fp32 weight hands back fp32 q/k while v
    stays bf16: use the autocast dtype then, else v's."""
    v = xs[-1]
    dtype = torch.get_autocast_dtype(v.device.type) if torch.is_autocast_enabled(v.device.type) else v.dtype
    return tuple(x.to(dtype) for x in xs)


def _mode(T: int, mode: str) -> str:
    if mode == "auto":
        return "recurrent" if T <= RECURRENT_MAX_T and not torch.is_grad_enabled() else "chunk"
    if mode not in ("chunk", "recurrent"):
        raise ValueError(f"mode must be 'auto', 'chunk' or 'recurrent', got {mode!r}")
    return mode


def gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    g_gamma: Tensor | None = None,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Gated linear attention S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    Give exactly one decay: `g` (B, T, H) per head or (B, T, H, K) per key channel, or `g_gamma` (H,) a constant
    per-head log decay (Lightning / RetNet). Returns (o (B, T, H, V), final state (N, H, K, V) fp32)."""
    if (g is None) == (g_gamma is None):
        raise ValueError("give exactly one of g and g_gamma")
    q, k, v = _common_dtype(q, k, v)
    mode = _mode(q.shape[1], mode)
    per_head = g is not None and g.dim() == 3  # fla's simple_gla with a per-token decay
    backend = _gated_backend(q, "simple_gla", mode, q, k, v, g, initial_state) if per_head else backend_for(q)
    if backend == "fla":
        return _fla_gla(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, mode)
    if g is None:
        g = g_gamma.float().view(1, 1, -1).expand(*q.shape[:3])
    fn = reference.gla_recurrent if mode == "recurrent" else reference.gla_chunk
    return fn(q, k, v, g, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens)


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Gated delta rule on L2-normalised q and k (normalised here, as fla does in its kernel).

    g: (B, T, H) log decay; beta: (B, T, H) in [0, 1]. Returns (o (B, T, H, V), final state (N, H, K, V) fp32)."""
    q, k, v = _common_dtype(q, k, v)
    beta = beta.to(v.dtype)
    mode = _mode(q.shape[1], mode)
    if _gated_backend(q, "gated_delta_rule", mode, q, k, v, g, beta, initial_state) == "fla":
        return _fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, cu_seqlens, mode)
    q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)
    fn = reference.gated_delta_rule_recurrent if mode == "recurrent" else reference.gated_delta_rule_chunk
    return fn(q, k, v, g, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens)


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The delta rule (DeltaNet) S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t on L2-normalised q and k: the
    gated delta rule without decay. beta: (B, T, H). Returns (o (B, T, H, V), final state (N, H, K, V) fp32).
    fla's `chunk_delta_rule` refuses fp32 inputs (an assert; seen on an H100): fp32 chunks run its gated kernel with a
    zero log decay, the same recurrence."""
    q, k, v = _common_dtype(q, k, v)
    beta = beta.to(v.dtype)
    mode = _mode(q.shape[1], mode)
    fp32_chunk = mode == "chunk" and q.dtype == torch.float32  # fla's gated kernel with a zero decay
    backend = _gated_backend(q, "gated_delta_rule", mode, q, k, v, beta, initial_state) if fp32_chunk \
        else backend_for(q)
    if backend == "fla":
        if fp32_chunk:
            g = beta.new_zeros(beta.shape, dtype=torch.float32)
            return _fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, cu_seqlens, mode)
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

        fn = fused_recurrent_delta_rule if mode == "recurrent" else chunk_delta_rule
        return fn(q, k, v, beta=beta, scale=scale, initial_state=initial_state, output_final_state=True,
                  use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens)
    q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)
    g = beta.new_zeros(beta.shape, dtype=torch.float32)
    fn = reference.gated_delta_rule_recurrent if mode == "recurrent" else reference.gated_delta_rule_chunk
    return fn(q, k, v, g, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens)


def hgrn(
    x: Tensor,
    g: Tensor,
    *,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """HGRN's elementwise recurrence h_t = exp(g_t) * h_{t-1} + x_t. x, g: (B, T, D) (g the log forget gate, <= 0).
    Returns (o = h (B, T, D), final state (N, D) fp32). fla's chunked kernel takes no `cu_seqlens`: packed
    documents run its fused recurrent kernel (forward and backward), as fla's own HGRN layer does. fla's chunked
    kernel also passes no gradient back through the returned final state (its backward ignores it; seen on an H100 as
    a 0.8% error in dx at T = 63 with a loss on the state): training, which never puts a loss on the state, is exact;
    a loss on the carried state (truncated backpropagation through segments) would miss that part on the GPU."""
    mode = _mode(x.shape[1], mode)
    if backend_for(x) == "fla":
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

        if mode == "recurrent" or cu_seqlens is not None:
            return fused_recurrent_hgrn(x, g, initial_state=initial_state, output_final_state=True,
                                        cu_seqlens=cu_seqlens)
        o, state = chunk_hgrn(x, g, initial_state=initial_state, output_final_state=True)
        return o, state.float()
    fn = reference.hgrn_recurrent if mode == "recurrent" else reference.hgrn_chunk
    return fn(x, g, initial_state=initial_state, cu_seqlens=cu_seqlens)


def short_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv, then `activation` ("silu" or None). x: (B, T, D); weight: (D, W); state: (N, D, W).
    Returns (y, final state)."""
    if backend_for(x) == "fla":
        from fla.modules.causal_conv1d import causal_conv1d

        y, state = causal_conv1d(
            x=x,
            weight=weight,
            bias=bias,
            initial_state=initial_state,
            output_final_state=True,
            activation=activation,
            cu_seqlens=cu_seqlens,
        )
        return y, state
    return reference.causal_conv1d(x, weight, bias, initial_state, cu_seqlens, activation=activation)


def _fla_gla(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, mode):
    common = dict(scale=scale, initial_state=initial_state, output_final_state=True, cu_seqlens=cu_seqlens)
    if g is None or g.dim() == 3:  # per-head decay: fla's simple_gla kernels
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        fn = fused_recurrent_simple_gla if mode == "recurrent" else chunk_simple_gla
        return fn(q, k, v, g=g, g_gamma=g_gamma, **common)
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    if mode == "recurrent":
        return fused_recurrent_gla(q, k, v, gk=g, **common)
    return chunk_gla(q, k, v, g=g, **common)


def _fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, cu_seqlens, mode):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    fn = fused_recurrent_gated_delta_rule if mode == "recurrent" else chunk_gated_delta_rule
    return fn(
        q,
        k,
        v,
        g=g,
        beta=beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
        cu_seqlens=cu_seqlens,
    )
