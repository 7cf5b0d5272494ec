"""GPU: the linear mixers' one-kernel decode steps (`hybridize/mixers/triton/linear_decode.py` for Lightning and
RetNet, `gdn_decode.py` for GatedDeltaNet) against their references at a real model's sizes (16 heads of 128 x 128,
B = 1, 8 and 64), state updated in place. The model-level check is tests/gpu/test_decode_gpu.py: its Lightning,
RetNet and GatedDeltaNet patterns (no short convolution) decode through these kernels, in CUDA graphs and eagerly.
Run on a CUDA machine:

    pytest -m gpu tests/gpu/test_linear_decode_gpu.py -s
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, differing, require_gpu
from hybridize.mixers import reference

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    require_gpu(fla=False, triton=True)
    yield


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("B", [1, 8, 64])
def test_linear_decode_kernel_at_scale(B, dtype):
    from hybridize.mixers.triton.linear_decode import linear_decode_step

    H, D = 16, 128
    g = torch.Generator(device="cuda").manual_seed(B)
    qkv = torch.randn(B, 1, 3 * H * D, device="cuda", generator=g).to(dtype)
    q, k, v = (t.view(B, 1, H, D) for t in qkv.split(H * D, dim=-1))
    state = torch.randn(B, H, D, D, device="cuda", generator=g)
    log_decay = -torch.exp2(-8.0 * torch.arange(1, H + 1, device="cuda") / H)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device="cuda").float() / D))
    emb = torch.cat([(1000.0 + torch.arange(B, device="cuda"))[:, None, None] * inv] * 2, dim=-1)
    w = dict(q_weight=(1 + 0.2 * torch.randn(D, device="cuda", generator=g)).to(dtype),
             k_weight=(1 + 0.2 * torch.randn(D, device="cuda", generator=g)).to(dtype), eps=1e-6,
             cos=emb.cos().to(dtype), sin=emb.sin().to(dtype))
    ref_state = state.clone()
    ref = reference.linear_decode_step(q, k, v, ref_state, log_decay, scale=D**-0.5, **w)
    out = linear_decode_step(q, k, v, state, log_decay, scale=D**-0.5, **w)
    # the state is fp32, but with bf16 inputs a k element the kernel rounds one bf16 ulp away from the reference (a
    # rounding tie after RoPE's fused multiply-adds) moves a whole state row by that ulp times v: bf16's tolerance
    # there, and the state as a whole within 1e-3 (norm) either way
    assert_close(state, ref_state, f"state B={B} {dtype}", dtype=dtype, scale=2 if dtype == torch.bfloat16 else 1)
    rel = ((state.double() - ref_state.double()).norm() / ref_state.double().norm()).item()
    assert rel < 1e-3, f"state B={B} {dtype}: relative (norm) error {rel:.2e}"
    assert_close(out, ref, f"o B={B} {dtype}")
    differing(out, ref, f"o B={B} {dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("decay", [True, False], ids=["gated", "deltanet"])
def test_gdn_decode_kernel_at_scale(B, dtype, decay):
    from hybridize.mixers.triton.gdn_decode import gdn_decode_step

    H, D = 16, 128
    g = torch.Generator(device="cuda").manual_seed(B)
    row = torch.randn(B, 1, 3 * H * D + 2 * H, device="cuda", generator=g).to(dtype)
    q, k, v, a, b = row.split([H * D, H * D, H * D, H, H], dim=-1)
    q, k, v = (t.reshape(B, 1, H, D) for t in (q, k, v))
    A_log = torch.rand(H, device="cuda", generator=g).mul(16).log().to(dtype)
    dt_bias = torch.randn(H, device="cuda", generator=g).to(dtype)
    state = 0.1 * torch.randn(B, H, D, D, device="cuda", generator=g)
    w = dict(q_weight=(1 + 0.2 * torch.randn(D, device="cuda", generator=g)).to(dtype),
             k_weight=(1 + 0.2 * torch.randn(D, device="cuda", generator=g)).to(dtype), eps=1e-6)
    if not decay:  # DeltaNet's step
        a = A_log = dt_bias = None
    ref_state = state.clone()
    ref = reference.gdn_decode_step(q, k, v, a, b, A_log, dt_bias, ref_state, scale=D**-0.5, **w)
    out = gdn_decode_step(q, k, v, a, b, A_log, dt_bias, state, scale=D**-0.5, **w)
    assert_close(state, ref_state, f"gdn state B={B} {dtype}", dtype=torch.float32, scale=4)
    assert_close(out, ref, f"gdn o B={B} {dtype}", scale=4)
    differing(out, ref, f"gdn o B={B} {dtype}")


@pytest.mark.parametrize("pattern", ["lightning", "retnet", "gla", "gated_deltanet", "deltanet", "mixed"])
def test_graph_decode_with_fused_steps(pattern):
    """`model.decode_steps`: the CUDA graph replays the one-kernel paths (linear mixers' tokens, attention prologue
    with HyPE and the output gate, add + norm); its tokens equal the graph decode without them in fp32, and its
    logits stay within bf16 rounding of it in bf16."""
    from test_decode_gpu import _model, _prompts

    for dtype in (torch.float32, torch.bfloat16):
        model = _model(pattern, dtype)
        model.decode_steps = False  # on by default: the graph without the steps first
        ids, mask = _prompts(8)
        kw = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, return_dict_in_generate=True,
                  output_logits=True, cache_implementation="static")
        plain = model.generate(ids, **kw)
        model.decode_steps = True
        model.get_compiled_call().release()  # the next step captures anew, with the fused paths
        steps = model.generate(ids, **kw)
        assert model._graph_decoder.replays >= 12, "the decode steps did not replay a CUDA graph"
        # fp32: the same tokens and logits within 1e-4 at every step. bf16: logits within bf16 rounding up to and
        # including the first step where a near-tie of this random model's logits picks another token; after it the
        # two continue different sequences, whose logits are not comparable
        new = steps.sequences[:, ids.shape[1]:]
        flips = (new != plain.sequences[:, ids.shape[1]:]).any(0).nonzero()
        equal = int(flips[0]) if len(flips) else len(plain.logits)
        last = len(plain.logits) if dtype == torch.float32 else min(equal + 1, len(plain.logits))
        print(f"{pattern} {dtype}: the same tokens for {equal} of {len(plain.logits)} steps")
        for step, (a, b) in enumerate(zip(steps.logits[:last], plain.logits[:last])):
            rel = ((a.double() - b.double()).norm() / b.double().norm()).item()
            assert rel < (3e-2 if dtype == torch.bfloat16 else 1e-4), f"{pattern} {dtype} step {step}: rel {rel:.2e}"
        if dtype == torch.float32:
            assert torch.equal(steps.sequences, plain.sequences), f"{pattern}: fused steps changed the tokens"
