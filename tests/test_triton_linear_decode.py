"""The fixed-decay linear mixers' one-token decode step in one kernel (`hybridize/mixers/triton/linear_decode.py`: q/k
norm, RoPE, the state update in place, the output) against its reference (`reference.linear_decode_step`, the ops the
eager step runs one by one), and the model's decode over the static cache with it.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (`triton_device`), so shapes stay small."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, differing, static_decode_logits, tiny_config, token_rope
from hybridize import HybridForCausalLM
from hybridize.mixers import kernels, reference

DTYPES = [torch.bfloat16, torch.float32]
DTYPE_IDS = ["bf16", "fp32"]


@pytest.fixture
def kernel(triton_device):
    from hybridize.mixers.triton.linear_decode import linear_decode_step

    return linear_decode_step


def _step_inputs(B, H, D, DV, dtype, device, norm: bool, rope: bool):
    """q, k, v as slices of one fused projection row (strided views), a non-zero state, decays, weights, tables."""
    qkv = (2 * torch.randn(B, 1, H * (2 * D + DV), device=device)).to(dtype)
    q, k, v = qkv.split([H * D, H * D, H * DV], dim=-1)
    q, k, v = q.view(B, 1, H, D), k.view(B, 1, H, D), v.view(B, 1, H, DV)
    state = torch.randn(B, H, D, DV, device=device)
    log_decay = -torch.exp2(-8.0 * torch.arange(1, H + 1, device=device) / H)
    w = dict(q_weight=(1 + 0.3 * torch.randn(D, device=device)).to(dtype),
             k_weight=(1 + 0.3 * torch.randn(D, device=device)).to(dtype), eps=1e-6) if norm else {}
    if rope:
        w.update(token_rope(B, D, dtype, device))
    return q, k, v, state, log_decay, w


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm,rope", [(True, True), (False, True), (True, False), (False, False)],
                         ids=["norm-rope", "rope", "norm", "plain"])
@pytest.mark.parametrize("shape", [(2, 3, 16, 24), (1, 2, 64, 96)], ids=["small", "two-v-blocks"])
def test_kernel_matches_reference(kernel, triton_device, dtype, norm, rope, shape):
    """Output and the state updated in place, against the reference ops (which return o and copy the new state);
    the second shape splits V over two programs, the first has V not a power of two."""
    B, H, D, DV = shape
    q, k, v, state, log_decay, w = _step_inputs(B, H, D, DV, dtype, triton_device, norm, rope)
    ref_state = state.clone()
    ref = reference.linear_decode_step(q, k, v, ref_state, log_decay, scale=D**-0.5, **w)
    before = state.data_ptr()
    out = kernel(q, k, v, state, log_decay, scale=D**-0.5, **w)
    assert state.data_ptr() == before and out.dtype == ref.dtype == v.dtype and out.shape == (B, 1, H, DV)
    assert_close(state, ref_state, f"state {shape} {dtype}", dtype=torch.float32)
    assert_close(out, ref, f"o {shape} {dtype}")
    differing(out, ref, f"o {shape} {dtype} norm={norm} rope={rope}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("padded", [False, True], ids=["all-real", "one-padded"])
def test_kernel_with_gla_gates_matches_reference(kernel, triton_device, dtype, padded):
    """GLA: the decay per key channel from the gate's logits (logsigmoid / normaliser) instead of one per head; the
    logits as a strided slice, a padded row neither decayed nor written."""
    B, H, D, DV = 2, 3, 16, 24
    q, k, v, state, _, w = _step_inputs(B, H, D, DV, dtype, triton_device, True, True)
    logits = (3 * torch.randn(B, 1, H, 2 * D, device=triton_device)).to(dtype)[..., :D]  # unit last stride
    mask = torch.tensor([[True], [False]], device=triton_device) if padded else None
    ref_state, before = state.clone(), state.clone()
    gate = dict(gate_logits=logits, gate_normalizer=16.0, mask=mask)
    ref = reference.linear_decode_step(q, k, v, ref_state, None, scale=D**-0.5, **gate, **w)
    out = kernel(q, k, v, state, None, scale=D**-0.5, **gate, **w)
    assert_close(state, ref_state, f"gla state {dtype}", dtype=torch.float32)
    assert_close(out, ref, f"gla o {dtype}")
    if padded:
        assert torch.equal(state[1], before[1]) and not out[1].any()
    with pytest.raises(ValueError, match="log_decay .* or gate_logits"):
        kernel(q, k, v, state, torch.zeros(H, device=triton_device), scale=0.25, gate_logits=logits)


def test_kernel_refuses_what_it_does_not_take(kernel, triton_device):
    q, k, v, state, log_decay, w = _step_inputs(1, 2, 16, 16, torch.float32, triton_device, True, True)
    with pytest.raises(ValueError, match="state must be"):
        kernel(q, k, v, state.to(torch.bfloat16), log_decay, scale=0.25, **w)
    with pytest.raises(ValueError, match="both q_weight and k_weight"):
        kernel(q, k, v, state, log_decay, scale=0.25, q_weight=w["q_weight"])
    with pytest.raises(ValueError, match="one token"):
        kernel(q.expand(1, 2, 2, 16), k.expand(1, 2, 2, 16), v.expand(1, 2, 2, 16), state, log_decay, scale=0.25)


def test_dispatch(monkeypatch, triton_device):
    """CPU tensors (or autograd on) run the reference; with fused inference on, the kernel, except where the dtypes
    differ (the reference rounds the norm's product to the promoted dtype) or the head dim is odd."""
    q, k, v, state, log_decay, w = _step_inputs(1, 2, 16, 16, torch.bfloat16, triton_device, True, True)
    x = torch.randn(1, 1, 44, device=triton_device).to(torch.bfloat16)
    heads = (2, 16, 16)
    assert not kernels.linear_decode_ok(x.cpu(), heads, state.cpu(), w["q_weight"].cpu(), w["cos"].cpu())
    monkeypatch.setattr(kernels, "fused_inference", lambda x: True)
    with torch.no_grad():
        assert kernels.linear_decode_ok(x, heads, state, w["q_weight"], w["cos"])
        assert kernels.linear_decode_ok(x, heads, state, None, None)
        assert not kernels.linear_decode_ok(x, heads, state, w["q_weight"].float(), w["cos"])
        assert not kernels.linear_decode_ok(x, heads, state, w["q_weight"], w["cos"].float())
        assert not kernels.linear_decode_ok(x, (2, 9, 16), state[..., :9, :].contiguous(), None, None)
        assert not kernels.linear_decode_ok(x.expand(1, 2, 44), heads, state, None, None)
        ref_state = state.clone()
        out = kernels.linear_decode_step(q, k, v, state, log_decay, scale=0.25, **w)
        ref = reference.linear_decode_step(q, k, v, ref_state, log_decay, scale=0.25, **w)
    assert_close(out, ref, "dispatched linear decode step")
    assert_close(state, ref_state, "dispatched state", dtype=torch.float32)


@pytest.mark.parametrize("mixer", ["lightning", "retnet", "gla"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_model_decode_over_static_cache(monkeypatch, triton_device, mixer, dtype):
    """A tiny hybrid (no short convolution, RoPE and q/k norm in the linear layers) decoding over the static cache with
    the fused kernels on (the interpreter on the CPU): each step takes the one-kernel path in every linear layer and
    gives the reference decode's logits."""
    config = tiny_config(mixer, linear_conv_size=0, linear_rope=True)
    model = HybridForCausalLM(config).to(triton_device, dtype).eval()
    ids = torch.randint(1, 101, (2, 8), device=triton_device)

    spied = "linear_decode_step"
    (ref, ref_calls), (out, out_calls) = (
        static_decode_logits(monkeypatch, model, ids, spied, on, triton_device, dtype) for on in (False, True))
    assert ref_calls == 0 and out_calls == 3 * 4, (ref_calls, out_calls)  # 3 steps x 4 linear layers
    assert_close(out, ref, f"{mixer} decode logits, one-kernel step vs reference", dtype=dtype)
    differing(out, ref, f"{mixer} decode logits {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernel_with_a_padded_token(kernel, triton_device, dtype):
    """mask (B, 1) False: that row's token is padding: its q, k, v count as zero (the eager step zeroes its input), so
    its state is neither decayed nor written and its output is zero, as in the reference; the other row's step is the
    usual one."""
    q, k, v, state, log_decay, w = _step_inputs(2, 3, 16, 24, dtype, triton_device, True, True)
    mask = torch.tensor([[True], [False]], device=triton_device)
    ref_state, before = state.clone(), state.clone()
    ref = reference.linear_decode_step(q, k, v, ref_state, log_decay, scale=0.25, mask=mask, **w)
    out = kernel(q, k, v, state, log_decay, scale=0.25, mask=mask, **w)
    assert torch.equal(ref_state[1], before[1]) and torch.equal(state[1], before[1])
    assert not torch.equal(state[0], before[0])
    assert not out[1].any() and not ref[1].any()
    assert_close(state, ref_state, f"masked state {dtype}", dtype=torch.float32)
    assert_close(out, ref, f"masked o {dtype}")
