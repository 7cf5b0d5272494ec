"""An attention layer's decode token before the attention in one kernel
(`hybridize/mixers/triton/attention_prologue.py`: q/k norm, RoPE or HyPE's scale, k and v into the static cache at the
token's slot) against its reference
(`reference.attention_decode_prologue`, the ops the eager step runs), and the model's decode through it.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (`triton_device`), so shapes stay small."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, differing, static_decode_logits, token_rope
from hybridize import HybridConfig, HybridForCausalLM
from hybridize.mixers import kernels, reference

DTYPES = [torch.bfloat16, torch.float32]
DTYPE_IDS = ["bf16", "fp32"]


@pytest.fixture
def kernel(triton_device):
    from hybridize.mixers.triton.attention_prologue import attention_decode_prologue

    return attention_decode_prologue


def _inputs(B, H, HK, D, slots, dtype, device, norm: bool, rope: bool, hype: bool = False):
    qkv = (2 * torch.randn(B, 1, (H + 2 * HK) * D, device=device)).to(dtype)
    q, k, v = qkv.split([H * D, HK * D, HK * D], dim=-1)
    q, k, v = q.view(B, 1, H, D), k.view(B, 1, HK, D), v.view(B, 1, HK, D)
    keys = torch.randn(B, HK, slots, D, device=device).to(dtype)
    values = torch.randn(B, HK, slots, D, device=device).to(dtype)
    w = dict(q_weight=(1 + 0.3 * torch.randn(D, device=device)).to(dtype),
             k_weight=(1 + 0.3 * torch.randn(D, device=device)).to(dtype), eps=1e-6) if norm else {}
    if rope:
        w.update(token_rope(1, D, dtype, device, first=5.0))
    if hype:
        w.update(hype_a=6.0, position_ids=torch.tensor([[5 + 900 * b] for b in range(B)], device=device))
    return q, k, v, keys, values, w


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm,rope,hype", [(True, True, False), (False, True, False), (True, False, False),
                                            (False, False, False), (True, False, True)],
                         ids=["norm-rope", "rope", "norm", "plain", "norm-hype"])
@pytest.mark.parametrize("shape", [(2, 4, 2, 10), (1, 8, 2, 64)], ids=["gqa-odd-half", "gqa-64"])
def test_kernel_matches_reference(kernel, triton_device, dtype, norm, rope, hype, shape):
    """The new q, and the cache buffers (the token's slot written, every other slot as it was)."""
    B, H, HK, D = shape
    q, k, v, keys, values, w = _inputs(B, H, HK, D, 7, dtype, triton_device, norm, rope, hype)
    pos = torch.tensor([5], device=triton_device)
    rk, rv = keys.clone(), values.clone()
    ref = reference.attention_decode_prologue(q, k, v, rk, rv, pos, **w)
    out = kernel(q, k, v, keys, values, pos, **w)
    assert out.shape == (B, 1, H, D) and out.is_contiguous()
    assert torch.equal(values, rv)
    others = [i for i in range(7) if i != 5]
    assert torch.equal(keys[:, :, others], rk[:, :, others])
    assert_close(out, ref, f"q {shape} {dtype}")
    assert_close(keys, rk, f"keys {shape} {dtype}")
    differing(out, ref, f"q {shape} {dtype} norm={norm} rope={rope}")
    differing(keys, rk, f"keys {shape} {dtype} norm={norm} rope={rope}")


def test_dispatch(monkeypatch, triton_device):
    q, k, v, keys, values, w = _inputs(1, 4, 2, 16, 5, torch.bfloat16, triton_device, True, True)
    assert not kernels.attention_prologue_ok(q.cpu(), k.cpu(), v.cpu(), keys.cpu(), w["q_weight"].cpu(), None)
    monkeypatch.setattr(kernels, "fused_inference", lambda x: True)
    with torch.no_grad():
        assert kernels.attention_prologue_ok(q, k, v, keys, w["q_weight"], w["cos"])
        assert not kernels.attention_prologue_ok(q, k, v, keys.float(), w["q_weight"], w["cos"])
        assert not kernels.attention_prologue_ok(q, k, v, keys, w["q_weight"].float(), None)
        assert not kernels.attention_prologue_ok(q, k, v, keys, None, w["cos"].float())
        assert not kernels.attention_prologue_ok(q.expand(1, 2, 4, 16), k, v, keys, None, None)
        pos = torch.tensor([3], device=triton_device)
        rk, rv = keys.clone(), values.clone()
        out = kernels.attention_decode_prologue(q, k, v, keys, values, pos, **w)
        ref = reference.attention_decode_prologue(q, k, v, rk, rv, pos, **w)
    assert_close(out, ref, "dispatched prologue q")
    assert_close(keys, rk, "dispatched prologue keys")
    assert torch.equal(values, rv)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("hype", [False, True], ids=["rope", "nope-hype"])
def test_model_decode_through_the_prologue(monkeypatch, triton_device, dtype, hype):
    """A tiny hybrid (q/k norm and RoPE in attention, a Lightning layer) decoding over the static cache with the fused
    kernels on (the interpreter on the CPU), or HyPE's NoPE attention with the query scale: every full-attention step
    takes the one-kernel prologue and the decode attention kernel, and gives the reference decode's logits."""
    mixers = [None, "lightning", None]
    config = HybridConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=12, qk_norm=True,
                          layer_types=["full_attention" if m is None else "linear_attention" for m in mixers],
                          linear_mixers=mixers, max_position_embeddings=32, pad_token_id=0,
                          **(dict(attention_rope=False, hype_a=6.0) if hype else {}))
    model = HybridForCausalLM(config).to(triton_device, dtype).eval()
    ids = torch.randint(1, 96, (2, 8), device=triton_device)

    spied = "attention_decode_prologue"
    (ref, ref_calls), (out, out_calls) = (
        static_decode_logits(monkeypatch, model, ids, spied, on, triton_device, dtype) for on in (False, True))
    assert ref_calls == 0 and out_calls == 3 * 2, (ref_calls, out_calls)  # 3 steps x 2 attention layers
    assert_close(out, ref, "decode logits, one-kernel prologue vs reference", dtype=dtype)
    differing(out, ref, f"decode logits {dtype}")
