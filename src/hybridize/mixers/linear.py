"""What the linear mixers share: the fixed-size state (`RecurrentMixer`) and, for the mixers built on a query-key
product (`LinearMixer`: Lightning, RetNet, GLA, DeltaNet, GatedDeltaNet, Mamba-2), the projections, optional short
convolution, QK-norm, RoPE, the cache state, and the output RMSNorm + gate. Each mixer file adds only its gates and
its recurrence (`_recur`). HGRN and HGRN-2, which have no key projection, build on `RecurrentMixer` alone.

Data flow of a `LinearMixer` for x (B, T, hidden):
    q, k, v = x Wq, x Wk, x Wv                      (B, T, H*K), (B, T, H*K), (B, T, H*V)
    [short conv + SiLU on q|k|v]  or the mixer's own activation
    q, k -> heads, [RMSNorm per head], [RoPE]       (B, T, H, K)
    o, S = recurrence(q, k, v, gates(x), S)         (B, T, H, V), state (B, H, K, V) fp32
    y = (RMSNorm(o) * gate(x Wz)) Wo                 (B, T, hidden); without an output gate y = RMSNorm(o) Wo
Padded positions (left padding) get zero k and v and neutral gates, so they never touch the state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, RMSNorm, SeqInfo, Tensor, dtype_bytes, qk_prep
from . import kernels
from .fusion import project
from .state import StaticState

# A linear mixer's transferred tensors: its name -> the teacher attention's name (hybridize.convert.transfer).
QKVO_FROM_ATTENTION = {
    "q_proj.weight": "q_proj.weight", "k_proj.weight": "k_proj.weight", "v_proj.weight": "v_proj.weight",
    "o_proj.weight": "o_proj.weight", "q_proj.bias": "q_proj.bias", "k_proj.bias": "k_proj.bias",
    "v_proj.bias": "v_proj.bias", "q_norm.weight": "q_norm.weight", "k_norm.weight": "k_norm.weight",
}


class ShortConv(nn.Conv1d):
    """Depthwise causal convolution over the concatenated inputs of a mixer (q|k|v, x|B|C, i|f, ...), followed by
    `activation` (SiLU, or None for HGRN's gates); the weights of an `nn.Conv1d`, the computation in `kernels`."""

    def __init__(self, channels: int, kernel_size: int, activation: str | None = "silu"):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=False)
        self.activation = activation

    def forward(self, x: Tensor, state: Tensor | None, cu_seqlens: Tensor | None) -> tuple[Tensor, Tensor]:
        return kernels.short_conv(x, self.weight.squeeze(1), None, state, cu_seqlens, self.activation)


class RecurrentMixer(Mixer):
    """A mixer whose decode state has a fixed size: a recurrent state `state_shape(config)` per sequence (fp32) and,
    with `linear_conv_size`, the short convolution's window over `conv_channels(config)` channels."""

    layer_type = "linear_attention"

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self._state_shape = self.state_shape(config)
        self._conv_channels = self.conv_channels(config) if config.linear_conv_size else 0
        self._conv_size = config.linear_conv_size

    @classmethod
    def state_shape(cls, config) -> tuple[int, ...]:
        """Shape of one sequence's recurrent state (fp32)."""
        raise NotImplementedError

    @classmethod
    def conv_segments(cls, config) -> tuple[int, ...]:
        """The short convolution's input, per head: the widths of the concatenated parts (q|k|v: (K, K, V)); each
        part holds linear_num_heads such blocks, head after head."""
        raise NotImplementedError

    @classmethod
    def conv_channels(cls, config) -> int:
        """Channels of the short convolution (its decode state is (channels, linear_conv_size))."""
        return config.linear_num_heads * sum(cls.conv_segments(config))

    @classmethod
    def static_layer(cls, config, layer_idx, batch_size, max_cache_len, dtype, device) -> StaticState:
        conv = cls.conv_channels(config) if config.linear_conv_size else 0
        return StaticState(batch_size, cls.state_shape(config), conv, config.linear_conv_size, dtype, device)

    def state_size(self, context_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
        return math.prod(self._state_shape) * 4 + self._conv_channels * self._conv_size * dtype_bytes(dtype)


class LinearMixer(RecurrentMixer):
    fused_projections = ("q_proj", "k_proj", "v_proj", "g_proj")  # what reads x (g_proj: the output gate); fusion.py
    from_attention = QKVO_FROM_ATTENTION
    #: activation applied to q, k, v when there is no short convolution (fla: SiLU for GatedDeltaNet)
    qkv_activation: str | None = None
    #: output gate nonlinearity: "sigmoid" (Lightning) or "silu" (fla's swish gate for GatedDeltaNet and GLA)
    gate_activation: str = "silu"
    #: False: no output gate, y = RMSNorm(o) Wo (fla's DeltaNet layer)
    output_gate: bool = True
    #: True: y = RMSNorm(o * act(gate)) Wo (Mamba-2's gated norm) instead of RMSNorm(o) * act(gate)
    gate_before_norm: bool = False
    always_qk_norm: bool = False

    def __init__(self, config, layer_idx: int, project_output: bool = True):
        super().__init__(config, layer_idx)
        self.num_heads = H = config.linear_num_heads
        self.head_k_dim = K = config.linear_head_dim
        self.head_v_dim = V = config.linear_value_head_dim
        self.scale = K**-0.5
        self.use_rope = config.linear_rope
        hidden = config.hidden_size
        bias = config.linear_qkv_bias
        self.q_proj = nn.Linear(hidden, H * K, bias=bias)
        self.k_proj = nn.Linear(hidden, H * K, bias=bias)
        self.v_proj = nn.Linear(hidden, H * V, bias=bias)
        self.g_proj = nn.Linear(hidden, H * V, bias=False) if self.output_gate else None
        self.o_proj = nn.Linear(H * V, hidden, bias=False) if project_output else None
        qk_norm = self.always_qk_norm or config.linear_qk_norm
        self.q_norm = RMSNorm(K, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(K, config.rms_norm_eps) if qk_norm else None
        self.o_norm = RMSNorm(V, config.rms_norm_eps)
        self.conv = ShortConv(self._conv_channels, self._conv_size) if self._conv_size else None

    @classmethod
    def state_shape(cls, config) -> tuple[int, ...]:
        return (config.linear_num_heads, config.linear_head_dim, config.linear_value_head_dim)

    @classmethod
    def conv_segments(cls, config) -> tuple[int, ...]:
        return (config.linear_head_dim, config.linear_head_dim, config.linear_value_head_dim)  # q | k | v

    def forward(self, x: Tensor, info: SeqInfo, state=None) -> tuple[Tensor, object]:
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        mask = info.token_mask  # (B, T) or None
        rec, conv_state = read_state(state)
        plan = self._decode_in_place(x, rec, state, info)  # not None: the one-kernel step, which masks by itself
        if mask is not None and plan is None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        # one matmul once fused; projections beyond the first four (GatedDeltaNet's gate inputs) only for the
        # one-kernel step, the other paths compute them where they use them
        q, k, v, gate, *extra = project(self, x, self.fused_projections if plan is not None
                                        else self.fused_projections[:4])
        if mask is not None and plan is None and self.v_proj.bias is not None:  # biases make padded k, v non-zero
            keep = mask.unsqueeze(-1).to(x.dtype)
            q, k, v = q * keep, k * keep, v * keep
        if self.conv is not None:
            qkv, conv_state = self.conv(torch.cat([q, k, v], dim=-1), conv_state, info.cu_seqlens)
            q, k, v = qkv.split([H * K, H * K, H * V], dim=-1)
        elif self.qkv_activation == "silu" and plan is None:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
        if plan is not None:
            o = self._decode_step(x, q, k, v, rec, info, mask, plan, extra)
        else:
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if self.use_rope:
                q, k = kernels.rope(q, k, info.cos, info.sin)
            o, rec = self._recur(x, q, k, v, mask, rec, info.cu_seqlens)
        if state is not None:
            state.update_recurrent_state(rec)
            if conv_state is not None:
                state.update_conv_state(conv_state)  # given a full (N, D, W) window, this stores it as is
        o = self._output_norm(o.to(x.dtype), None if gate is None else gate.view(B, T, H, V))
        o = o.reshape(B, T, H * V)
        return (o if self.o_proj is None else self.o_proj(o)), state

    def _output_norm(self, o: Tensor, gate: Tensor | None) -> Tensor:
        """(B, T, H, V): RMSNorm per head with the output gate (before or after the norm), or without one."""
        w, eps = self.o_norm.weight, self.o_norm.eps
        if gate is None:
            return kernels.rms_norm(o, w, eps)
        if self.gate_before_norm:
            act = torch.sigmoid(gate) if self.gate_activation == "sigmoid" else F.silu(gate)
            return kernels.rms_norm(o * act, w, eps)
        return kernels.rms_norm_gated(o, w, eps, gate, self.gate_activation)

    def _recur(self, x, q, k, v, mask, initial_state, cu_seqlens) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _log_decay(self, device: torch.device) -> Tensor | None:
        """(H,) the fixed log decay of a mixer whose recurrence is S = exp(log_decay) S + k^T v (Lightning, RetNet),
        else None."""
        return None

    def _decode_plan(self, device: torch.device):
        """What the one-kernel decode step needs beyond the tensors (not None: this mixer has one): here the fixed log
        decay of a mixer without q/k/v activation."""
        log_decay = self._log_decay(device)
        return log_decay if self.qkv_activation is None else None

    def _decode_step(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, rec: Tensor, info: SeqInfo,
                     mask: Tensor | None, plan, extra: list) -> Tensor:
        """The one-kernel step (`_decode_in_place` said so): o (B, 1, H, V), the state `rec` updated in place;
        `extra`: the projections of `fused_projections` beyond q, k, v and the gate."""
        return kernels.linear_decode_step(q, k, v, rec, plan, scale=self.scale, mask=mask,
                                          **qk_prep(self.q_norm, self.k_norm, self.use_rope, info))

    def _decode_in_place(self, x: Tensor, rec: Tensor | None, state, info: SeqInfo):
        """`_decode_plan` when this call is a one-token step the mixer's one kernel takes (`_decode_step`: norms,
        RoPE, the recurrence over the static cache's state buffer, updated in place; padded tokens masked inside the
        kernel), else None: then the ops run one by one, as on the CPU."""
        if (not kernels.steps_on() or x.shape[1] != 1 or not isinstance(state, StaticState) or rec is None
                or self.conv is not None
                or self.q_proj.weight.dtype != x.dtype or torch.is_autocast_enabled(x.device.type)):
            return None
        plan = self._decode_plan(x.device)
        if plan is None:
            return None
        prep = qk_prep(self.q_norm, self.k_norm, self.use_rope, info)
        heads = (self.num_heads, self.head_k_dim, self.head_v_dim)
        return plan if kernels.linear_decode_ok(x, heads, rec, prep["q_weight"], prep["cos"]) else None


def read_state(layer) -> tuple[Tensor | None, Tensor | None]:
    """(recurrent state, conv state) held by a transformers `LinearAttentionLayer`, None where not yet written."""
    if layer is None:
        return None, None
    rec = layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None
    conv = layer.conv_states[0] if layer.is_conv_states_initialized[0] else None
    return rec, conv


def masked(gate: Tensor, mask: Tensor | None, neutral: float = 0.0) -> Tensor:
    """Set a (B, T, ...) gate to its neutral value at padded positions."""
    if mask is None:
        return gate
    shape = mask.shape + (1,) * (gate.dim() - 2)
    return torch.where(mask.view(shape), gate, torch.full_like(gate, neutral))


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def lower_bounded_log_forget(f: Tensor, lower_bound: Tensor | None) -> Tensor:
    """HGRN's forget gate in log space: log(lb + (1 - lb) * sigmoid(f)), the gate lifted above a lower bound lb in
    [0, 1) (None: no bound, log sigmoid(f)). f: (..., D) logits, lower_bound: (D,). fp32."""
    g = F.logsigmoid(f.float())
    if lower_bound is None:
        return g
    lb = lower_bound.float()
    return torch.logaddexp(lb.log(), torch.log1p(-lb) + g)


class LowerBound(nn.Module):
    """A learned per-channel lower bound lb = sigmoid(logit) in (0, 1) on a forget gate (HGRN, HGRN-2).

    The papers learn the bounds of all layers together, lb_l = cumsum(softmax(Gamma))_l over the layers, so that they
    rise with depth; fla's models hold Gamma in the model. Here each layer holds its own bound (a mixer owns all its
    parameters, and the model never special-cases a mixer), started where that parameterisation starts
    (Gamma = 0: lb_l = l / L, layer l of L): deeper layers begin with longer memories, but the order is not enforced
    while training. Layer 0 has no bound (fla: "the lower bound for the first layer is zero")."""

    def __init__(self, channels: int, layer_idx: int, num_layers: int):
        super().__init__()
        self.init_value = layer_idx / num_layers
        self.logit = nn.Parameter(torch.full((channels,), logit(self.init_value)))

    def forward(self) -> Tensor:
        return torch.sigmoid(self.logit.float())

    def fresh(self) -> Tensor:
        return torch.full_like(self.logit, logit(self.init_value))


_DECAY_CACHE: dict[tuple, Tensor] = {}


def fixed_log_decay(fn, num_heads: int, device: torch.device) -> Tensor:
    """`fn(num_heads, device)`, a fixed per-head log decay (Lightning, RetNet), computed once per (fn, heads, device)
    for inference: a decode step would otherwise spend a few small kernels per layer on it. Training (and
    torch.compile's tracing) computes it in place."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fn(num_heads, device)
    key = (fn, num_heads, device)
    if key not in _DECAY_CACHE:
        with torch.inference_mode(False):  # an ordinary tensor, usable outside inference mode too
            _DECAY_CACHE[key] = fn(num_heads, device)
    return _DECAY_CACHE[key]
