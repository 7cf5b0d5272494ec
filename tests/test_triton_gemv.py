"""The split-K GEMV (hybridize/mixers/triton/gemv.py) against its fp32 reference and `F.linear`, and its place in the
decode step: the dispatch in `kernels.py` and the model switch `decode_gemv`. On the CPU the kernel runs in Triton's
interpreter, so shapes stay small: odd N and K (no multiple of a tile), 1 to 8 rows, one and several K splits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, differing, tiny_config

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
DTYPE_IDS = ["bf16", "fp16", "fp32"]


@pytest.fixture
def gemv_mod(triton_device):
    from hybridize.mixers.triton import gemv

    return gemv


def _operands(device, dtype, M, N, K, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype).to(device)
    w = (torch.randn(N, K, generator=g) * K**-0.5).to(dtype).to(device)
    b = torch.randn(N, generator=g).to(dtype).to(device) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("M", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("N,K,split_k", [
    (77, 130, None),  # one N block and a ragged one, K below a tile
    (200, 1000, 3),  # K split three ways, the last range ragged
    (33, 47, 2),  # every dimension odd, two splits of one partial tile each
    (1, 17, None),  # one output
    (96, 512, 4),  # whole tiles: the unmasked-K loads
])
def test_gemv_matches_reference(gemv_mod, triton_device, dtype, M, N, K, split_k):
    x, w, b = _operands(triton_device, dtype, M, N, K, bias=M % 2 == 1)
    out = gemv_mod.gemv(x, w, b, split_k=split_k)
    ref = gemv_mod.reference_gemv(x, w, b)
    assert out.dtype == dtype and out.shape == (M, N)
    # fp32 sums of exact products in another order than the reference's: an fp32 rounding or two, which rarely moves
    # a bf16 / fp16 result by one ulp
    assert_close(out, ref, f"gemv M={M} N={N} K={K} split_k={split_k}")
    differing(out, ref, f"gemv M={M} N={N} K={K} {dtype}")
    assert_close(out, F.linear(x, w, b).to(dtype), "gemv vs F.linear", dtype=dtype)


def test_gemv_leading_dims_strided_rows_and_tiles(gemv_mod, triton_device):
    """x as the decode step hands it over ((B, 1, K), and a strided slice of a wider tensor), every tile knob."""
    dtype = torch.bfloat16
    wide, w, b = _operands(triton_device, dtype, 6, 70, 2 * 90)
    x = wide[:, :90].reshape(6, 1, 90)[:, :, :]  # rows 180 apart
    w = w[:, :90]  # rows of W 180 apart as well (a fused projection's slice is contiguous; any row stride works)
    assert x.stride(0) == 180 and w.stride(0) == 180
    ref = torch.einsum("btk,nk->btn", x.float(), w.float()) + b.float()
    for knobs in ({}, dict(block_n=16, block_k=16, split_k=5), dict(block_n=32, block_k=64, split_k=1, num_warps=2,
                                                                     num_stages=2)):
        out = gemv_mod.gemv(x, w, b, **knobs)
        assert out.shape == (6, 1, 70)
        assert_close(out, ref.to(dtype), f"gemv strided {knobs}")


def test_gemv_refuses_what_it_does_not_take(gemv_mod, triton_device):
    x, w, b = _operands(triton_device, torch.bfloat16, 2, 8, 16)
    with pytest.raises(ValueError, match="must share K"):
        gemv_mod.gemv(x, w[:, :15], b)
    with pytest.raises(ValueError, match="one dtype"):
        gemv_mod.gemv(x.float(), w, b)
    with pytest.raises(ValueError, match="bias must have shape"):
        gemv_mod.gemv(x, w, b[:7])
    with pytest.raises(ValueError, match="at most 16 rows"):
        gemv_mod.gemv(x.repeat(9, 1), w, b)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        gemv_mod.gemv(x, w.T.contiguous().T, b)


# ------------------------------------------------------------------------------------------------------- dispatch


def test_linear_dispatch(monkeypatch, gemv_mod, triton_device):
    """`kernels.linear` takes the GEMV for inference rows <= GEMV_MAX_ROWS of one dtype on the GPU (switched on here
    for the interpreter), and `F.linear` for everything else; `decode_gemv()` routes every F.linear through it."""
    from hybridize.mixers import kernels

    calls = []
    real = gemv_mod.gemv
    monkeypatch.setattr(gemv_mod, "gemv", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    x, w, b = _operands(triton_device, torch.bfloat16, 3, 40, 24)
    with torch.no_grad():
        monkeypatch.setattr(kernels, "fused_inference", lambda t: False)  # as on the CPU, whatever the device
        assert torch.equal(kernels.linear(x, w, b), F.linear(x, w, b))  # fused kernels off: F.linear itself
        assert calls == []
        monkeypatch.setattr(kernels, "fused_inference", lambda t: not torch.is_grad_enabled())
        assert_close(kernels.linear(x, w, b), gemv_mod.reference_gemv(x, w, b), "dispatched gemv")
        assert calls == [(3, 24)]
        rows = torch.randn(kernels.GEMV_MAX_ROWS + 1, 24, device=triton_device).to(torch.bfloat16)
        for args in ((rows, w, b), (x.double(), w.double(), None), (x, w.T.contiguous().T, b)):
            kernels.linear(*args)  # too many rows, fp64, a column-major weight: F.linear
        assert calls == [(3, 24)]
        layer = torch.nn.Linear(24, 40).to(triton_device, torch.bfloat16)
        with kernels.decode_gemv():
            out = layer(x)
            assert torch.equal(out, kernels.linear(x, layer.weight, layer.bias))
            F.linear(x, w)
        assert calls[1:] == [(3, 24)] * 3
        layer(x)  # outside: nn.Linear as ever
    with torch.enable_grad(), kernels.decode_gemv():
        kernels.linear(x, w, b)  # autograd on: F.linear, which has a backward
    assert len(calls) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pattern", ["mixed", "all_attention"])
def test_decode_step_with_gemv_equals_the_step_without(monkeypatch, triton_device, dtype, pattern):
    """The decode step the CUDA-graph decoder captures (`CudaGraphDecoder._step`), with `model.decode_gemv` on and off,
    after a static-cache prefill: the same logits (fp32 within rounding; bf16 within bf16) and greedy tokens, with the
    projections fused as generate fuses them on CUDA. The other fused kernels run in both (the interpreter's stand-in
    for CUDA), so the GEMV is the only difference; it replaced every matmul of the step, lm_head included."""
    from hybridize import HybridForCausalLM, HybridStaticCache
    from hybridize.mixers import kernels
    from hybridize.mixers.triton import gemv as gemv_mod

    monkeypatch.setattr(kernels, "fused_inference", lambda t: not torch.is_grad_enabled())
    model = HybridForCausalLM(tiny_config(pattern)).to(triton_device, dtype).eval()
    model.fuse_projections()
    ids = torch.randint(1, 101, (2, 7), device=triton_device)
    calls, matmuls = [], []
    real, linear = gemv_mod.gemv, kernels.linear
    monkeypatch.setattr(gemv_mod, "gemv", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(kernels, "linear", lambda *a, **k: matmuls.append(1) or linear(*a, **k))

    def decode(gemv_on: bool) -> list[torch.Tensor]:
        model.decode_gemv = gemv_on
        step = model.get_compiled_call()
        cache = HybridStaticCache(model.config, 12, 2, dtype=dtype, device=triton_device)
        with torch.no_grad():
            token = model.prefill(ids, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
            out = []
            for _ in range(3):
                logits = step._step(cache, token, torch.ones_like(token), None)
                cache.advance(1)
                out.append(logits.float())
                token = logits[:, -1].argmax(-1, keepdim=True)
        return out

    off = decode(False)
    assert calls == [] and matmuls == []
    on = decode(True)
    assert len(calls) == len(matmuls) > 3 * model.config.num_hidden_layers  # every matmul of every step
    for i, (a, b) in enumerate(zip(on, off)):
        assert_close(a, b, f"{pattern} decode step {i} gemv on vs off", dtype=dtype)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_gemv_benchmark_records_every_matmul_of_a_decode_step():
    """benchmarks/gemv.py times the shapes one decode step multiplies, recorded from a real step: for the teacher of
    the tiny shape, per layer the fused q|k|v, o_proj, the fused gate|up and down_proj, then the lm_head; the hybrid
    has as many calls, its linear layers' projections fused in their own widths."""
    from conftest import load_script
    from hybridize.bench.inference import build_models

    mod = load_script("benchmarks/gemv.py")
    models = build_models("tiny", 0.25, "lightning")
    c = models.teacher
    H, Hkv, D, h, i = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size, c.intermediate_size
    L = c.num_hidden_layers
    calls = mod.step_linears(c, 3, "cpu", torch.float32)
    assert calls == {(3, (H + 2 * Hkv) * D, h, False): L, (3, h, H * D, False): L, (3, 2 * i, h, False): L,
                     (3, h, i, False): L, (3, c.vocab_size, h, False): 1}
    hybrid = mod.step_linears(models.hybrid, 1, "cpu", torch.float32)
    assert sum(hybrid.values()) == sum(calls.values()) and all(rows == 1 for rows, *_ in hybrid)
    rows = [dict(f_linear_us=2.0, gemv_us=1.0, bound_us=0.5, calls_per_step=n, weight_bytes=10) for n in (3, 1)]
    assert mod.step_totals(rows) == {"f_linear_ms": 0.008, "gemv_ms": 0.004, "bound_ms": 0.002, "weight_gb": 4e-8}
