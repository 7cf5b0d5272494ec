"""GPU: the split-K GEMV (`hybridize/mixers/triton/gemv.py`) at the Qwen3-1.7B shape's decode matmuls against its
fp32 reference and cuBLAS, the CUDA-graph decode with `model.decode_gemv` against the decode without it, and a
prefill chunk's bounded attention (`hybridize/mixers/blocked_attention.py`) on CUDA. Run on a CUDA machine:

    pytest -m gpu tests/gpu/test_gemv_gpu.py -s

Speed is measured by benchmarks/gemv.py and `hybridize bench --variants hybrid-fused,hybrid-gemv`, not here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, differing, require_gpu, tiny_config
from hybridize import HybridForCausalLM, HybridStaticCache

pytestmark = pytest.mark.gpu

# (N, K) of the Qwen3-1.7B decode step: fused q|k|v, o_proj, fused gate|up, down_proj, lm_head
SHAPES = [(4096, 2048), (2048, 2048), (12288, 2048), (2048, 6144), (151936, 2048)]


@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    require_gpu(fla=False, triton=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    yield


@pytest.mark.parametrize("M", [1, 8])
@pytest.mark.parametrize("N,K", SHAPES)
def test_gemv_at_model_sizes(M, N, K):
    from hybridize.mixers.triton.gemv import gemv, reference_gemv

    g = torch.Generator(device="cuda").manual_seed(N + K)
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    w = (torch.randn(N, K, device="cuda", generator=g) * K**-0.5).bfloat16()
    out, ref = gemv(x, w), reference_gemv(x, w)
    assert_close(out, ref, f"gemv M={M} N={N} K={K}")
    # fp32 sums in another order: a flipped bf16 rounding now and then, never more than one ulp
    assert differing(out, ref, f"gemv M={M} N={N} K={K}") / out.numel() < 5e-2
    assert_close(out, F.linear(x, w), f"gemv vs cuBLAS M={M} N={N} K={K}")
    for split_k in (1, 3, 8):  # every split count sums to the same result
        assert_close(gemv(x, w, split_k=split_k), ref, f"gemv split_k={split_k}")


def _model(pattern: str, dtype):
    config = tiny_config(pattern, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, vocab_size=512, max_position_embeddings=256,
                         pad_token_id=0)
    torch.manual_seed(0)
    model = HybridForCausalLM(config).to("cuda", dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


def _kernel_names(model, batch: int = 8) -> list[str]:
    """The kernels of replayed decode steps of `model` (a static cache with room, a graph captured first)."""
    from torch.profiler import ProfilerActivity, profile

    cache = HybridStaticCache(model.config, 32, batch, model.dtype, "cuda")
    token = torch.ones(batch, 1, dtype=torch.long, device="cuda")
    model.prefill(token.repeat(1, 4), cache=cache)
    step = model.get_compiled_call()
    with torch.no_grad():
        for _ in range(2):  # the capture, then a replay
            step(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
    step.release()
    return [e.name for e in prof.events() if str(e.device_type).endswith("CUDA")]


@pytest.mark.parametrize("pattern", ["mixed", "all_attention"])
def test_graph_decode_with_gemv_equals_without(pattern):
    """generate on CUDA (fused projections, CUDA-graph replay) with `decode_gemv` on and off: fp32 tokens equal,
    bf16 first-step logits within bf16; the replayed steps launch our GEMV kernel only with the switch on (and the
    profiler sees kernels inside graph replays, which `hybridize bench` counts per step)."""
    ids = torch.randint(1, 512, (8, 24), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    kw = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, return_dict_in_generate=True,
              output_logits=True, cache_implementation="static")
    for dtype in (torch.float32, torch.bfloat16):
        plain, gemv = _model(pattern, dtype), _model(pattern, dtype)
        gemv.decode_gemv = True
        a, b = plain.generate(ids, **kw), gemv.generate(ids, **kw)
        assert gemv._graph_decoder.replays >= 12
        if dtype == torch.float32:
            assert torch.equal(a.sequences, b.sequences), f"{pattern}: tokens differ with the GEMV"
        rel = ((a.logits[0].double() - b.logits[0].double()).norm() / a.logits[0].double().norm()).item()
        print(f"{pattern} {dtype}: first-step logits, GEMV vs cuBLAS: relative {rel:.2e}")
        assert rel < (2e-2 if dtype == torch.bfloat16 else 1e-4)
    with_gemv, without = _kernel_names(gemv), _kernel_names(plain)
    print(f"{pattern}: {len(with_gemv) / 3:.0f} kernels per replayed step with the GEMV, {len(without) / 3:.0f} "
          "without")
    assert any("_gemv_kernel" in n for n in with_gemv) and not any("_gemv_kernel" in n for n in without)


@pytest.mark.parametrize("padded", [False, True])
def test_blocked_prefill_attention_on_cuda(monkeypatch, padded):
    """A chunked bf16 prefill with the workspace set small: padded chunks take the bounded attention, unpadded ones
    keep SDPA (a flash / memory-efficient kernel takes the lower-right causal bias of bf16 GQA as it is); both give
    the one-shot prefill's logits."""
    from hybridize.mixers import blocked_attention

    q = torch.randn(1, 16, 64, 128, device="cuda").bfloat16()
    kv = torch.randn(1, 8, 4096, 128, device="cuda").bfloat16()
    assert blocked_attention.native_lower_right(q, kv, kv)
    model = _model("all_attention", torch.bfloat16)
    ids = torch.randint(1, 512, (2, 96), device="cuda")
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :20] = 0
    one = model.prefill(ids, attention_mask=mask, cache=HybridStaticCache(model.config, 96, 2, torch.bfloat16, "cuda"),
                        all_logits=True)
    calls = []
    attend = blocked_attention.attend
    monkeypatch.setattr(blocked_attention, "attend", lambda *a, **k: calls.append(1) or attend(*a, **k))
    monkeypatch.setattr(blocked_attention, "WORKSPACE_BYTES", 1 << 10)
    chunked = model.prefill(ids, attention_mask=mask,
                            cache=HybridStaticCache(model.config, 96, 2, torch.bfloat16, "cuda"), chunk_size=32,
                            all_logits=True)
    assert bool(calls) == padded
    rel = ((chunked.logits.double() - one.logits.double()).norm() / one.logits.double().norm()).item()
    print(f"blocked prefill padded={padded}: relative logits error vs one shot {rel:.2e}")
    assert rel < 2e-2
