"""Each mixer against a definition written out by hand: attention vs explicit softmax, RoPE vs transformers' own
tables for every scaling, Lightning's decays, HyPE's scale, state sizes."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hybridize import HybridConfig, HybridForCausalLM
from hybridize.mixers import LINEAR_MIXERS, MIXERS, SeqInfo
from hybridize.mixers.attention import Attention
from hybridize.mixers.base import hype_scale
from hybridize.mixers.lightning import lightning_log_decay
from hybridize.names import LINEAR_MIXER_NAMES
from hybridize.models.modeling import HybridRotaryEmbedding
from conftest import assert_close, tiny_config

ROPE_CASES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16},
}


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_rope_tables_match_transformers(name):
    """Our rotary tables are transformers' (Llama's) for each scaling, at positions inside and beyond the window."""
    shape = dict(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=32)
    ours = HybridRotaryEmbedding(HybridConfig(rope_parameters=dict(ROPE_CASES[name]), **shape))
    theirs = LlamaRotaryEmbedding(LlamaConfig(rope_parameters=dict(ROPE_CASES[name]), **shape))
    x = torch.zeros(1, dtype=torch.float32)
    for positions in (torch.arange(20)[None], torch.arange(40, 90)[None]):
        cos, sin = ours(x, positions)
        cos_t, sin_t = theirs(x, positions)
        assert_close(cos, cos_t, f"{name} cos")
        assert_close(sin, sin_t, f"{name} sin")


def _naive_attention(mixer: Attention, x, positions, window=None):
    """Softmax attention written with explicit loops over heads: the definition."""
    B, T, _ = x.shape
    H, Hkv, D = mixer.num_heads, mixer.num_kv_heads, mixer.head_dim
    q = mixer.q_proj(x).view(B, T, H, D)
    k = mixer.k_proj(x).view(B, T, Hkv, D)
    v = mixer.v_proj(x).view(B, T, Hkv, D)
    if mixer.q_norm is not None:
        q, k = mixer.q_norm(q), mixer.k_norm(k)
    if mixer.hype_a is not None:
        q = q * (torch.log(positions.float() + mixer.hype_a) / math.log(mixer.hype_a))[..., None, None]
    out = torch.zeros(B, T, H, D)
    for h in range(H):
        kv = h // (H // Hkv)
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / math.sqrt(D)  # (B, T, T)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = (j <= i) & ((i - j < window) if window else True)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, :, h] = scores.softmax(-1) @ v[:, :, kv]
    o = out.reshape(B, T, H * D)
    if mixer.g_proj is not None:
        o = o * torch.sigmoid(mixer.g_proj(x))
    return mixer.o_proj(o)


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("hype", [False, True])
def test_attention_matches_explicit_softmax(sliding, hype):
    config = tiny_config([None], sliding=sliding, attention_rope=False, hype_a=7.0 if hype else None,
                         attention_output_gate=hype)
    mixer = Attention(config, 0)
    x = torch.randn(2, 15, config.hidden_size)
    positions = torch.arange(15)[None].expand(2, 15)
    y, _ = mixer(x, SeqInfo(positions))
    assert_close(y, _naive_attention(mixer, x, positions, config.sliding_window if sliding else None), "attention")


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("lengths", [[7, 1, 12, 0, 5, 3, 9], [4, 4, 4, 4], [2, 13, 1, 6, 9]])
def test_packed_attention_segments_equal_the_whole_row_mask(sliding, lengths):
    """Packed documents: attention over segments of whole documents (`SeqInfo.document_segments`) gives the outputs
    and gradients of attention over the whole row with its (T, T) same-document mask (GQA, HyPE, sliding window)."""
    from hybridize.models.modeling import _positions

    config = tiny_config([None], sliding=sliding, attention_rope=False, hype_a=7.0, attention_output_gate=True)
    mixer = Attention(config, 0)
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    positions = _positions(None, cu, 0, 1, T, "cpu")
    x = torch.randn(1, T, config.hidden_size, requires_grad=True)
    segmented, whole = SeqInfo(positions, cu_seqlens=cu), SeqInfo(positions, cu_seqlens=cu)
    whole._segments = None  # as when the segments would cost more: the (T, T) mask
    segments = segmented.document_segments()
    assert segments is not None and segments.count * segments.size < 2 * T, (segments, T)
    w = torch.randn(1, T, config.hidden_size)
    outs, grads = [], []
    for info in (segmented, whole):
        y, _ = mixer(x, info)
        outs.append(y)
        grads.append(torch.autograd.grad((y * w).sum(), [x, *mixer.parameters()]))
    assert_close(outs[0], outs[1], "packed attention output")
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close(a, b, f"packed attention grad {i}", scale=3)


def test_document_segments_group_whole_documents():
    """Consecutive documents share a segment while they fit; a slot holds one token, a token one slot; one long
    document (no saving) gives None."""
    from hybridize.mixers.base import DocumentSegments

    s = DocumentSegments.build(torch.tensor([0, 3, 5, 9, 10, 11]))  # lengths 3, 2, 4, 1, 1: size 4
    assert (s.count, s.size) == (4, 4)
    assert s.source.tolist() == [0, 1, 2, 11, 3, 4, 11, 11, 5, 6, 7, 8, 9, 10, 11, 11]
    assert torch.equal(s.source[s.slot], torch.arange(11))
    assert DocumentSegments.build(torch.tensor([0, 9, 10])) is None


def test_lightning_decays_and_hype_scale_by_formula():
    H = 8
    gamma = lightning_log_decay(H).exp()
    expected = torch.tensor([math.exp(-(2 ** (-8 * h / H))) for h in range(1, H + 1)])
    assert_close(gamma, expected, "lightning gamma")
    assert gamma[0] < gamma[-1] < 1  # first head forgets fastest
    s = hype_scale(torch.tensor([[0, 1, 99, 10_000]]), 500.0)
    assert_close(s, torch.tensor([[1.0, math.log(501) / math.log(500), math.log(599) / math.log(500),
                                   math.log(10_500) / math.log(500)]]), "hype scale")


def test_state_size_attention_grows_linear_is_constant():
    config = tiny_config("mixed", linear_conv_size=0)
    model = HybridForCausalLM(config)
    kv_per_token = 2 * config.num_key_value_heads * config.head_dim * 2  # K and V, bf16
    attn_full = model.model.layers[1].mixer
    attn_sliding = model.model.layers[4].mixer
    assert attn_full.state_size(1000, torch.bfloat16) == 1000 * kv_per_token
    assert attn_sliding.state_size(1000, torch.bfloat16) == config.sliding_window * kv_per_token
    lin = model.model.layers[0].mixer
    rec = config.linear_num_heads * config.linear_head_dim * config.linear_value_head_dim * 4
    assert lin.state_size(10, torch.bfloat16) == lin.state_size(10**6, torch.bfloat16) == rec
    total = model.state_size(1000, batch_size=3, dtype=torch.bfloat16)
    assert total == 3 * (3 * rec + 1000 * kv_per_token + config.sliding_window * kv_per_token)


def test_registry_matches_config_vocabulary():
    assert set(LINEAR_MIXERS) == set(LINEAR_MIXER_NAMES)
    assert set(MIXERS) == {"attention", "intra", *LINEAR_MIXER_NAMES}


def test_import_does_not_load_triton_or_fla():
    # torch >= 2.13's dynamo (which transformers imports) imports triton itself whenever it is installed, so a look at
    # sys.modules afterwards proves nothing: make every import of the two packages fail instead, then import
    # hybridize, its model and the kernel switch, and check that the fused kernels' module was not reached.
    code = ("import sys; sys.modules['triton'] = sys.modules['fla'] = None; "
            "import hybridize; from hybridize import HybridForCausalLM; import hybridize.mixers.kernels; "
            "assert not any(m.startswith('hybridize.mixers.triton.') for m in sys.modules); "
            "bad = [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('triton', 'fla')]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


# The mixers of the design-space studies, each against its definition written out one step at a time from the paper
# and fla's layer (module docstrings), with the mixer's own weights. No RoPE, QK-norm, bias or convolution here: those
# shared parts are the same code for every mixer and are checked through the model tests.
def _rms(x, w, eps=1e-6):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _step_by_step(name: str, m, x: torch.Tensor) -> torch.Tensor:
    silu, sig = torch.nn.functional.silu, torch.sigmoid
    B, T, _ = x.shape
    if name == "hgrn":
        lb = sig(m.lower_bound.logit)
        h, outs = torch.zeros(B, m.dim), []
        for t in range(T):
            f = lb + (1 - lb) * sig(m.f_proj(x[:, t]))
            h = f * h + (1 - f) * silu(m.i_proj(x[:, t]))
            outs.append(_rms(h, m.o_norm.weight) * silu(m.g_proj(x[:, t])))
        return m.o_proj(torch.stack(outs, 1))
    H, K, V = m.num_heads, m.head_k_dim, m.head_v_dim
    heads = lambda t, d: t.view(B, H, d)  # noqa: E731 (B, H*d) -> (B, H, d)
    S, outs = torch.zeros(B, H, K, V), []
    for t in range(T):
        xt = x[:, t]
        if name == "hgrn2":
            lb = heads(sig(m.lower_bound.logit).expand(B, -1), K)
            f = lb + (1 - lb) * sig(heads(m.f_proj(xt), K))
            q, k, v = silu(heads(m.q_proj(xt), K)), 1 - f, heads(m.i_proj(xt), V)
            S = f.unsqueeze(-1) * S + k.unsqueeze(-1) * v.unsqueeze(-2)
            o = torch.einsum("bhk,bhkv->bhv", q * K**-0.5, S).reshape(B, H * V)
            outs.append(_rms(o, m.o_norm.weight))
            continue
        q, k, v = heads(m.q_proj(xt), K), heads(m.k_proj(xt), K), heads(m.v_proj(xt), V)
        if name == "retnet":
            gamma = (1 - 2.0 ** (-5.0 - torch.arange(H))).view(1, H, 1, 1)
            S = gamma * S + k.unsqueeze(-1) * v.unsqueeze(-2)
            o = torch.einsum("bhk,bhkv->bhv", q * K**-0.5, S)
            o = _rms(o, m.o_norm.weight) * silu(heads(m.g_proj(xt), V))
        elif name == "deltanet":
            q, k, v = (torch.nn.functional.normalize(silu(q), dim=-1), torch.nn.functional.normalize(silu(k), dim=-1),
                       silu(v))
            beta = sig(m.b_proj(xt)).view(B, H, 1)
            S = S + k.unsqueeze(-1) * (beta * (v - torch.einsum("bhk,bhkv->bhv", k, S))).unsqueeze(-2)
            o = _rms(torch.einsum("bhk,bhkv->bhv", q * K**-0.5, S), m.o_norm.weight)
        else:  # mamba2: C = q, B = k, x = v
            C, Bt, X = silu(q), silu(k), silu(v)
            dt = torch.nn.functional.softplus(m.dt_proj(xt) + m.dt_bias).view(B, H, 1, 1)
            S = torch.exp(dt * -m.A_log.exp().view(1, H, 1, 1)) * S + dt * Bt.unsqueeze(-1) * X.unsqueeze(-2)
            y = torch.einsum("bhk,bhkv->bhv", C, S) + m.D.view(1, H, 1) * X
            o = _rms(y * silu(heads(m.g_proj(xt), V)), m.o_norm.weight)
        outs.append(o.reshape(B, H * V))
    return m.o_proj(torch.stack(outs, 1))


@pytest.mark.parametrize("name", ["deltanet", "hgrn", "hgrn2", "retnet", "mamba2"])
def test_design_space_mixers_match_their_step_by_step_definitions(name):
    config = tiny_config([name] * 5, linear_rope=False, linear_qk_norm=False, linear_qkv_bias=False,
                         linear_conv_size=0)
    mixer = MIXERS[name](config, 1)
    with torch.no_grad():
        for p in mixer.parameters():  # unit norms, D = 1 and the lower bound's start would hide a missing term
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 11, config.hidden_size)
    y, _ = mixer(x, SeqInfo(torch.arange(11)[None].expand(2, 11)))
    with torch.no_grad():
        assert_close(y, _step_by_step(name, mixer, x), f"{name} vs its definition")


def test_lower_bounds_start_where_the_cumulative_softmax_starts():
    """HGRN / HGRN-2: layer l of L starts with lower bound l / L (Gamma = 0 in cumsum(softmax(Gamma))); layer 0 has
    none. After `post_init` (what from_pretrained runs too) the bound is at its start."""
    config = tiny_config(["hgrn", "hgrn2", None, "hgrn", "hgrn2"])
    model = HybridForCausalLM(config)
    layers = model.model.layers
    assert layers[0].mixer.lower_bound is None
    for i in (1, 3, 4):
        assert_close(layers[i].mixer.lower_bound(), torch.full_like(layers[i].mixer.lower_bound(), i / 5),
                     f"layer {i} lower bound")


def test_design_space_mixers_state_sizes():
    """HGRN keeps one fp32 number per channel; the others a (H, K, V) fp32 matrix per head; the short convolution adds
    its window over the channels it convolves, in the model's dtype."""
    config = tiny_config("linear_variants", linear_conv_size=4)
    H, K, V = config.linear_num_heads, config.linear_head_dim, config.linear_value_head_dim
    model = HybridForCausalLM(config)
    sizes = {layer.mixer.__class__.__name__: layer.mixer.state_size(10**5, torch.bfloat16)
             for layer in model.model.layers}
    assert sizes["HGRN"] == H * V * 4 + 2 * H * V * 4 * 2
    for name in ("DeltaNet", "HGRN2", "RetNet", "Mamba2"):
        assert sizes[name] == H * K * V * 4 + H * (2 * K + V) * 4 * 2, name
