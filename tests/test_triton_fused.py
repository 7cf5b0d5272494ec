"""The fused inference kernels (`hybridize/mixers/triton/fused.py`: RMSNorm, RoPE, SiLU * up) against their PyTorch
references, and the dispatch in `kernels.py` that chooses between the two.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (`triton_device`), so shapes stay small. The
kernels round every intermediate as the references do, so beyond `assert_close` the tests count the elements that
differ at all: RoPE and bf16 SiLU * up agree bit for bit; RMSNorm's fp32 sum runs in another order than torch's, which
can move an fp32 result by an ulp (and, rarely, a bf16 rounding with it). GPU sizes: tests/gpu/test_fused_gpu.py.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, differing, tiny_config
from hybridize import HybridCache, HybridForCausalLM
from hybridize.mixers import kernels
from hybridize.mixers.base import RMSNorm, apply_rope, rms_norm

DTYPES = [torch.bfloat16, torch.float32]
DTYPE_IDS = ["bf16", "fp32"]


@pytest.fixture
def fused(triton_device):
    from hybridize.mixers.triton import fused

    return fused


def _rope_tables(B: int, T: int, D: int, dtype, device, offset: int = 0):
    """cos, sin (B, T, D) as HybridRotaryEmbedding builds them, for positions offset .. offset + T - 1 per row."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float, device=device) / D))
    pos = torch.arange(offset, offset + T, device=device).float()[None] + torch.arange(B, device=device)[:, None]
    emb = torch.cat([pos[..., None] * inv_freq] * 2, dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


# ------------------------------------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(44,), (3, 10), (2, 3, 44), (2, 3, 4, 10), (1, 1, 8192), (5, 7, 1)])
def test_rms_norm_matches_reference(fused, triton_device, dtype, shape):
    x = 3 * torch.randn(shape, device=triton_device).to(dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], device=triton_device)).to(dtype)
    out, ref = fused.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert_close(out, ref, f"rms_norm {shape}")
    differing(out, ref, f"rms_norm {shape} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", ["sigmoid", "silu"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 10), (1, 1, 2, 128)])
def test_gated_rms_norm_matches_reference(fused, triton_device, dtype, activation, shape):
    """The linear mixers' output: RMSNorm(o) * act(gate) in one kernel, against those ops."""
    x = 3 * torch.randn(shape, device=triton_device).to(dtype)
    g = 2 * torch.randn(shape, device=triton_device).to(dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], device=triton_device)).to(dtype)
    act = torch.sigmoid(g) if activation == "sigmoid" else F.silu(g)
    out, ref = fused.rms_norm(x, w, 1e-6, g, activation), rms_norm(x, w, 1e-6) * act
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert_close(out, ref, f"gated rms_norm {activation} {shape}")
    differing(out, ref, f"gated rms_norm {activation} {shape} {dtype}")
    with pytest.raises(ValueError, match="activation must be"):
        fused.rms_norm(x, w, 1e-6, g, "tanh")
    with pytest.raises(ValueError, match="gate must have"):
        fused.rms_norm(x, w, 1e-6, g[..., :1], activation)


def test_rms_norm_fp32_weight_bf16_input(fused, triton_device):
    x = torch.randn(3, 5, 44, device=triton_device).to(torch.bfloat16)
    w = 1 + 0.5 * torch.randn(44, device=triton_device)
    out, ref = fused.rms_norm(x, w, 1e-5), rms_norm(x, w, 1e-5)
    assert out.dtype == ref.dtype == torch.float32  # torch's promotion: an fp32 weight times a bf16 normed x
    assert_close(out, ref, "rms_norm fp32 weight, bf16 x")
    differing(out, ref, "rms_norm fp32 weight, bf16 x")


@pytest.mark.parametrize("case", ["heads_of_fused_projection", "last_dim_strided", "leading_dims_not_collapsible"])
def test_rms_norm_strided_inputs(fused, triton_device, case):
    dev = triton_device
    if case == "heads_of_fused_projection":  # linear.py: q of a (B, T, H * (2K + V)) q|k|v split into heads
        qkv = torch.randn(2, 3, 4 * (2 * 10 + 6), device=dev).to(torch.bfloat16)
        x = qkv[..., :40].view(2, 3, 4, 10)
    elif case == "last_dim_strided":
        x = torch.randn(2, 10, 5, device=dev).to(torch.bfloat16).transpose(1, 2)
    else:
        x = torch.randn(4, 6, 3, 10, device=dev).to(torch.bfloat16)[:, ::2].transpose(0, 1)
    assert not x.is_contiguous()
    before = x.clone()
    w = torch.randn(x.shape[-1], device=dev).to(torch.bfloat16)
    out, ref = fused.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6)
    assert torch.equal(x, before)
    assert_close(out, ref, f"rms_norm {case}")
    differing(out, ref, f"rms_norm {case}")



@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 1, 44), (3, 5, 130), (1, 1, 2048)])
def test_add_rms_norm_matches_reference(fused, triton_device, dtype, shape):
    """The residual add and the norm after it in one kernel: the sum bit for bit (one rounding, as torch's add), the
    norm as rms_norm's."""
    x, h = (3 * torch.randn(shape, device=triton_device)).to(dtype), torch.randn(shape, device=triton_device).to(dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], device=triton_device)).to(dtype)
    s, y = fused.add_rms_norm(x, h, w, 1e-6)
    assert torch.equal(s, x + h)
    ref = rms_norm(x + h, w, 1e-6)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert_close(y, ref, f"add_rms_norm {shape}")
    differing(y, ref, f"add_rms_norm {shape} {dtype}")

# ------------------------------------------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,T,H,Hk,D,cos_batch", [
    (2, 3, 4, 2, 10, 2),  # GQA, tables per row
    (2, 3, 4, 2, 10, 1),  # tables broadcast over the batch
    (3, 2, 3, 3, 6, 3),  # as many k heads as q heads, odd head count
    (1, 1, 16, 8, 128, 1),  # one decode token at a real head shape
])
def test_rope_matches_reference(fused, triton_device, dtype, B, T, H, Hk, D, cos_batch):
    q = torch.randn(B, T, H, D, device=triton_device).to(dtype)
    k = torch.randn(B, T, Hk, D, device=triton_device).to(dtype)
    cos, sin = _rope_tables(cos_batch, T, D, dtype, triton_device, offset=37)
    (fq, fk), (rq, rk) = fused.apply_rope(q, k, cos, sin), apply_rope(q, k, cos, sin)
    assert fq.dtype == rq.dtype and fk.dtype == rk.dtype
    assert_close(fq, rq, "rope q")
    assert_close(fk, rk, "rope k")
    # the same products and sums, rounded where torch rounds: equal bits
    assert differing(fq, rq, f"rope q {dtype}") == 0 and differing(fk, rk, f"rope k {dtype}") == 0


def test_rope_strided_heads_and_mixed_dtypes(fused, triton_device):
    """q and k as linear.py hands them over (heads of a split q|k|v, not contiguous); an fp32 q with bf16 tables
    (an fp32 q_norm weight under autocast) comes back fp32, as the reference's promotion gives."""
    B, T, H, D = 2, 3, 4, 10
    qkv = torch.randn(B, T, H * 3 * D, device=triton_device).to(torch.bfloat16)
    q, k, _ = (t.view(B, T, H, D) for t in qkv.split(H * D, dim=-1))
    cos, sin = _rope_tables(B, T, D, torch.bfloat16, triton_device)
    (fq, fk), (rq, rk) = fused.apply_rope(q, k, cos, sin), apply_rope(q, k, cos, sin)
    assert differing(fq, rq, "rope strided q") == 0 and differing(fk, rk, "rope strided k") == 0
    q32 = q.float()
    (fq, fk), (rq, rk) = fused.apply_rope(q32, k, cos, sin), apply_rope(q32, k, cos, sin)
    assert fq.dtype == rq.dtype == torch.float32 and fk.dtype == rk.dtype == torch.bfloat16
    assert differing(fq, rq, "rope fp32 q, bf16 tables") == 0 and differing(fk, rk, "rope bf16 k") == 0


# ------------------------------------------------------------------------------------------------------ SiLU * up


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 77), (2, 5, 76), (1, 1, 4099)])
def test_silu_mul_matches_reference(fused, triton_device, dtype, shape):
    gate = 4 * torch.randn(shape, device=triton_device).to(dtype)
    up = torch.randn(shape, device=triton_device).to(dtype)
    out, ref = fused.silu_mul(gate, up), F.silu(gate) * up
    assert out.dtype == ref.dtype
    assert_close(out, ref, f"silu_mul {shape}")
    differing(out, ref, f"silu_mul {shape} {dtype}")


def test_silu_mul_non_contiguous_halves(fused, triton_device):
    gate, up = torch.randn(2, 3, 2 * 38, device=triton_device).to(torch.bfloat16).chunk(2, dim=-1)
    assert not gate.is_contiguous()
    out, ref = fused.silu_mul(gate, up), F.silu(gate) * up
    assert_close(out, ref, "silu_mul halves of one projection")
    differing(out, ref, "silu_mul halves of one projection")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scaling", [1.0, 1.25])
def test_rope_tables_match_the_rotary_embedding(fused, triton_device, dtype, scaling):
    """A step's cos / sin tables in one kernel against `HybridRotaryEmbedding.forward`'s operators, at small and
    large positions (the fp32 angle is the same product; cos / sin may differ by an fp32 ulp)."""
    from hybridize.models.modeling import HybridRotaryEmbedding

    rot = HybridRotaryEmbedding(tiny_config("mixed", head_dim=12)).to(triton_device)
    rot.attention_scaling = scaling
    x = torch.zeros(1, device=triton_device, dtype=dtype)
    pos = torch.tensor([[0], [7], [4095], [131071]], device=triton_device)
    cos, sin = fused.rope_tables(pos, rot.inv_freq, scaling, dtype)
    ref_cos, ref_sin = rot(x, pos)
    assert cos.dtype == ref_cos.dtype and cos.shape == ref_cos.shape == (4, 1, 12)
    assert_close(cos, ref_cos, f"rope cos {dtype}")
    assert_close(sin, ref_sin, f"rope sin {dtype}")
    differing(cos, ref_cos, f"rope cos {dtype}")
    differing(sin, ref_sin, f"rope sin {dtype}")


@pytest.mark.parametrize("mask_dtype", [None, torch.long, torch.bool, torch.int32], ids=["no-mask", "long", "bool",
                                                                                        "int32"])
def test_decode_begin_matches_the_static_cache_operators(monkeypatch, triton_device, mask_dtype):
    """A decode step's cache bookkeeping in one kernel (`fused.decode_begin`, through `HybridStaticCache.begin` inside
    `fused_steps`) against the cache's PyTorch operators: the same slot, padding bits, positions and counters, over
    three steps after a left-padded prefill, a padded row staying padded."""
    from hybridize import HybridStaticCache

    config = tiny_config("mixed")
    B, prompt = 3, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    caches = [HybridStaticCache(config, max_cache_len=16, batch_size=B, device=triton_device) for _ in range(2)]
    for cache in caches:
        cache.begin(B, 4, None if mask_dtype is None else prompt.to(triton_device, mask_dtype))
        cache.advance(4)
    mask = prompt
    monkeypatch.setattr(kernels, "fused_inference", lambda x: True)  # the interpreter stands in for CUDA
    calls = []
    real = kernels._fused().decode_begin
    monkeypatch.setattr(kernels._fused(), "decode_begin", lambda *a: calls.append(1) or real(*a))
    for step in range(3):
        mask = torch.cat([mask, torch.tensor([[1], [1], [0 if step == 1 else 1]])], dim=1)  # row 2 pads one step
        m = None if mask_dtype is None else mask.to(triton_device, mask_dtype)
        with kernels.fused_steps(False):
            ref = caches[0].begin(B, 1, m)
        with kernels.fused_steps(True):
            out = caches[1].begin(B, 1, m)
        for cache in caches:
            cache.advance(1)
        for name, x, y in zip(("cache_position", "new", "position_ids"), out, ref):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (step, name, x, y)
        for name in ("length", "valid", "real"):
            assert torch.equal(getattr(caches[1], name), getattr(caches[0], name)), (step, name)
    assert len(calls) == 3  # the kernel took every step


# --------------------------------------------------------------------------------------------------------- dispatch


def test_fused_inference_switch():
    """The fused kernels run only for CUDA tensors, with autograd off and the backend not forced to torch (a
    stand-in with is_cuda=True plays the CUDA tensor here)."""
    on_cuda = types.SimpleNamespace(is_cuda=True)
    with torch.no_grad():
        assert kernels.fused_inference(on_cuda) == kernels.triton_available()
        assert not kernels.fused_inference(torch.zeros(2))
        with kernels.force_backend("torch"):
            assert not kernels.fused_inference(on_cuda)
    with torch.enable_grad():
        assert not kernels.fused_inference(on_cuda)


def _inputs(device):
    x = torch.randn(2, 3, 44, device=device).to(torch.bfloat16)
    w = torch.randn(44, device=device).to(torch.bfloat16)
    q, k = torch.randn(2, 3, 4, 10, device=device), torch.randn(2, 3, 2, 10, device=device)
    cos, sin = _rope_tables(2, 3, 10, torch.float32, device)
    gate, up = torch.randn(2, 3, 76, device=device), torch.randn(2, 3, 76, device=device)
    return x, w, q, k, cos, sin, gate, up


DEVICES_WITH_GRAD = [("cpu", False), ("cpu", True)] + ([("cuda", True)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device,grad", DEVICES_WITH_GRAD)
def test_dispatch_runs_the_reference_on_cpu_and_while_training(monkeypatch, device, grad):
    """CPU tensors, or autograd on (training, also on the GPU): the reference code, bit for bit."""

    def no_fused():
        raise AssertionError("the fused kernels must not run here")

    monkeypatch.setattr(kernels, "_fused", no_fused)
    x, w, q, k, cos, sin, gate, up = _inputs(device)
    with torch.set_grad_enabled(grad):
        norm = RMSNorm(44).to(device, torch.bfloat16)
        assert torch.equal(kernels.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6))
        assert torch.equal(norm(x), rms_norm(x, norm.weight, norm.eps))
        for a, b in zip(kernels.rope(q, k, cos, sin), apply_rope(q, k, cos, sin)):
            assert torch.equal(a, b)
        assert torch.equal(kernels.silu_mul(gate, up), F.silu(gate) * up)


def test_dispatch_takes_the_fused_path_when_it_may(monkeypatch, fused, triton_device):
    """With the switch on, the dispatch calls the kernels (here in the interpreter) with the right arguments, and
    still runs the reference for what the kernels do not take (fp64, an odd rotary dim)."""
    calls = []
    for name in ("rms_norm", "apply_rope", "silu_mul"):
        fn = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _fn=fn, _name=name: calls.append(_name) or _fn(*a))
    monkeypatch.setattr(kernels, "fused_inference", lambda x: True)
    x, w, q, k, cos, sin, gate, up = _inputs(triton_device)
    with torch.no_grad():
        assert_close(kernels.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6), "dispatched rms_norm")
        for a, b in zip(kernels.rope(q, k, cos, sin), apply_rope(q, k, cos, sin)):
            assert_close(a, b, "dispatched rope")
        assert_close(kernels.silu_mul(gate, up), F.silu(gate) * up, "dispatched silu_mul")
        assert calls == ["rms_norm", "apply_rope", "silu_mul"]
        g = torch.randn_like(x)
        assert_close(kernels.rms_norm_gated(x, w, 1e-6, g, "sigmoid"), rms_norm(x, w, 1e-6) * torch.sigmoid(g),
                     "dispatched gated rms_norm")
        assert calls[-1] == "rms_norm"
        del calls[-1]
        kernels.rms_norm(x.double(), w.double(), 1e-6)
        q9, k9 = q[..., :9], k[..., :9]
        kernels.rope(q9, k9, cos[..., :9], sin[..., :9])
        kernels.silu_mul(gate, up[..., :1])  # broadcast: the reference's business
    assert calls == ["rms_norm", "apply_rope", "silu_mul"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_model_with_fused_ops_matches_reference(monkeypatch, triton_device, dtype):
    """The whole tiny model (every mixer, RoPE in attention and in the linear mixers, q/k norms, SwiGLU) with the
    fused kernels switched on: prefill and a cached decode step give the reference model's logits. The mixers'
    recurrences run the torch backend both times (fla does not take head_dim 10 on a GPU)."""
    model = HybridForCausalLM(tiny_config("mixed")).to(triton_device, dtype).eval()
    ids = torch.randint(0, 101, (2, 9), device=triton_device)

    def run(fused_on: bool):
        monkeypatch.setattr(kernels, "fused_inference", lambda x: fused_on)
        spy = []
        for name in ("rms_norm", "rope", "silu_mul", "rms_norm_gated", "add_rms_norm"):
            fn = getattr(kernels, name)
            monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _name=name: spy.append(_name) or _fn(*a))
        with torch.no_grad(), kernels.force_backend("torch"):
            cache = HybridCache(model.config)
            prefill = model(ids[:, :8], past_key_values=cache, use_cache=True).logits
            step = model(ids[:, 8:], past_key_values=cache, use_cache=True).logits
        monkeypatch.undo()
        assert {"rms_norm", "rope", "silu_mul", "rms_norm_gated", "add_rms_norm"} <= set(spy)
        return torch.cat([prefill, step], dim=1).float()

    ref, out = run(False), run(True)
    assert_close(out, ref, "model logits, fused ops vs reference", dtype=dtype)
    differing(out, ref, f"model logits {dtype}")
