"""Gated DeltaNet's (and DeltaNet's: no decay) one-token decode step in one kernel (`hybridize/mixers/triton/gdn_decode.py`: activations, q/k
norm, RoPE, L2 norm, gates, the delta-rule update of the state in place, the output) against its reference
(`reference.gdn_decode_step`, the ops the eager step runs), and the model's decode over the static cache with it.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (`triton_device`), so shapes stay small."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, differing, static_decode_logits, tiny_config, token_rope
from hybridize import HybridForCausalLM
from hybridize.mixers import reference

DTYPES = [torch.bfloat16, torch.float32]
DTYPE_IDS = ["bf16", "fp32"]


@pytest.fixture
def kernel(triton_device):
    from hybridize.mixers.triton.gdn_decode import gdn_decode_step

    return gdn_decode_step


def _inputs(B, H, D, DV, dtype, device, norm: bool, rope: bool, decay: bool = True):
    row = (2 * torch.randn(B, 1, H * (2 * D + DV) + 2 * H, device=device)).to(dtype)
    q, k, v, a, b = row.split([H * D, H * D, H * DV, H, H], dim=-1)
    q, k, v = q.view(B, 1, H, D), k.view(B, 1, H, D), v.view(B, 1, H, DV)
    A_log = torch.empty(H, device=device).uniform_(0, 3).log().to(dtype)
    dt_bias = (0.5 * torch.randn(H, device=device)).to(dtype)
    state = 0.3 * torch.randn(B, H, D, DV, device=device)
    w = dict(q_weight=(1 + 0.3 * torch.randn(D, device=device)).to(dtype),
             k_weight=(1 + 0.3 * torch.randn(D, device=device)).to(dtype), eps=1e-6) if norm else {}
    if rope:
        w.update(token_rope(B, D, dtype, device))
    if not decay:  # DeltaNet
        a = A_log = dt_bias = None
    return (q, k, v, a, b, A_log, dt_bias), state, w


@pytest.mark.parametrize("decay", [True, False], ids=["gated", "deltanet"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm,rope", [(True, True), (False, False)], ids=["norm-rope", "plain"])
@pytest.mark.parametrize("shape", [(2, 3, 16, 24), (1, 2, 64, 96)], ids=["small", "two-v-blocks"])
def test_kernel_matches_reference(kernel, triton_device, dtype, norm, rope, shape, decay):
    B, H, D, DV = shape
    args, state, w = _inputs(B, H, D, DV, dtype, triton_device, norm, rope, decay)
    ref_state = state.clone()
    ref = reference.gdn_decode_step(*args, ref_state, scale=D**-0.5, **w)
    out = kernel(*args, state, scale=D**-0.5, **w)
    assert out.dtype == ref.dtype and out.shape == (B, 1, H, DV)
    assert_close(state, ref_state, f"state {shape} {dtype}", dtype=torch.float32, scale=4)
    assert_close(out, ref, f"o {shape} {dtype}", scale=4)
    differing(out, ref, f"o {shape} {dtype} norm={norm} rope={rope}")


@pytest.mark.parametrize("decay", [True, False], ids=["gated", "deltanet"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernel_with_a_padded_token(kernel, triton_device, dtype, decay):
    """mask False: the row's token is padding: its state stays as it is and its output is zero, as in the reference."""
    args, state, w = _inputs(2, 3, 16, 24, dtype, triton_device, True, True, decay)
    mask = torch.tensor([[True], [False]], device=triton_device)
    ref_state, before = state.clone(), state.clone()
    ref = reference.gdn_decode_step(*args, ref_state, scale=0.25, mask=mask, **w)
    out = kernel(*args, state, scale=0.25, mask=mask, **w)
    assert torch.equal(ref_state[1], before[1]) and torch.equal(state[1], before[1])
    assert not out[1].any() and not ref[1].any()
    assert_close(state, ref_state, f"masked state {dtype}", dtype=torch.float32, scale=4)
    assert_close(out, ref, f"masked o {dtype}", scale=4)


@pytest.mark.parametrize("mixer", ["gated_deltanet", "deltanet"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_model_decode_over_static_cache(monkeypatch, triton_device, dtype, mixer):
    """A tiny GatedDeltaNet or DeltaNet hybrid (no short convolution; q/k norm and RoPE in the linear layers) decoding
    over the static cache with the fused kernels on (the interpreter on the CPU): each step takes the one-kernel path
    in every linear layer and gives the reference decode's logits."""
    config = tiny_config(mixer, linear_conv_size=0, linear_rope=True)
    model = HybridForCausalLM(config).to(triton_device, dtype).eval()
    ids = torch.randint(1, 101, (2, 8), device=triton_device)

    spied = "gdn_decode_step"
    (ref, ref_calls), (out, out_calls) = (
        static_decode_logits(monkeypatch, model, ids, spied, on, triton_device, dtype) for on in (False, True))
    assert ref_calls == 0 and out_calls == 3 * 4, (ref_calls, out_calls)  # 3 steps x 4 linear layers
    assert_close(out, ref, f"{mixer} decode logits, one-kernel step vs reference", dtype=dtype)
    differing(out, ref, f"{mixer} decode logits {dtype}")


def test_kernel_refuses_half_a_decay(kernel, triton_device):
    (q, k, v, a, b, A_log, dt_bias), state, w = _inputs(1, 2, 16, 16, torch.float32, triton_device, False, False)
    with pytest.raises(ValueError, match="a, A_log and dt_bias go together"):
        kernel(q, k, v, a, b, None, dt_bias, state, scale=0.25)
