"""Shared test helpers: a dtype-aware comparison that prints its error, and tiny model configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# As the `hybridize` command does (cli.main): OpenMP threads wait passively, since spinning ones made a CPU step 3-5x
# slower on 2 cores shared with other processes (results/cpu-demo/omp-wait.json). Read when torch starts OpenMP, so
# before torch is imported; the subprocesses the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Our own Triton kernels (hybridize/mixers/triton) run in Triton's interpreter when there is no GPU. It is chosen when
# triton.jit decorates a kernel, i.e. when a kernel module is first imported, so it is set before any test runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hybridize import HybridConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str):
    """A script of the repository (`benchmarks/...`: not a package), imported from its path as a module."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# (atol, rtol) per dtype. fp32 references agree to rounding; bf16 kernels carry ~3 significant digits.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "", dtype: torch.dtype | None = None,
                 scale: float = 1.0) -> None:
    """Compare with tolerances chosen by dtype (times `scale`), printing max/mean abs and relative error."""
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[dtype]
    atol, rtol = atol * scale, rtol * scale
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    err = (a - e).abs()
    rel = (err.norm() / e.norm().clamp_min(1e-30)).item()
    msg = (f"{name} [{dtype}]: max abs err {err.max().item():.3e}, mean abs err {err.mean().item():.3e}, "
           f"relative (norm) err {rel:.3e}, atol {atol:.1e}, rtol {rtol:.1e}")
    print(msg)
    assert torch.allclose(a, e, atol=atol, rtol=rtol), msg


def differing(actual: torch.Tensor, expected: torch.Tensor, name: str) -> int:
    """How many elements differ at all (the fused kernels round where torch rounds: most should not), printed with
    the fraction and the largest difference."""
    n = int((actual != expected).sum())
    print(f"{name}: {n} of {actual.numel()} elements differ ({n / actual.numel():.2e}), max abs difference "
          f"{(actual.double() - expected.double()).abs().max().item():.2e}")
    return n


# Layer patterns over 5 layers: every mixer, alone and mixed with attention (full and sliding).
PATTERNS = {
    "lightning": ["lightning"] * 2 + [None] + ["lightning"] * 2,
    "gated_deltanet": ["gated_deltanet"] * 2 + [None] + ["gated_deltanet"] * 2,
    "gla": ["gla"] * 2 + [None] + ["gla"] * 2,
    "deltanet": ["deltanet"] * 2 + [None] + ["deltanet"] * 2,
    "hgrn": ["hgrn"] * 2 + [None] + ["hgrn"] * 2,
    "hgrn2": ["hgrn2"] * 2 + [None] + ["hgrn2"] * 2,
    "retnet": ["retnet"] * 2 + [None] + ["retnet"] * 2,
    "mamba2": ["mamba2"] * 2 + [None] + ["mamba2"] * 2,
    "mixed": ["gla", None, "gated_deltanet", "lightning", None],
    "all_linear": ["lightning", "gated_deltanet", "gla", "lightning", "gated_deltanet"],
    # the other five in one model: states of different shapes (HGRN's vector, the matrices) side by side in one cache
    "linear_variants": ["hgrn", "deltanet", "hgrn2", "retnet", "mamba2"],
    "all_attention": [None] * 5,
    # intra-layer hybrids ('hybrid' layers, INTRA_LAYOUT below): every fusion, each with other mixers in its branches,
    # beside whole attention / linear layers and a sliding-window attention branch
    "intra_concat": ["gla", "hgrn", None, "lightning", "mamba2"],
    "intra_subtract": ["gated_deltanet", "retnet", None, "hgrn2", None],
    "intra_sum": ["deltanet", "mamba2", None, "gla", None],
    "intra_gate": ["hgrn", "gla", None, "gated_deltanet", None],
}
# (layer_types, attention_kv_heads) of the intra patterns: groups [0] or [1] of the tiny config's two keep half the heads
_INTRA = (["hybrid", "hybrid_sliding", "full_attention", "hybrid", "sliding_attention"],
          [[0], [1], None, [1], None])
INTRA_LAYOUT = {
    "intra_concat": (["hybrid", "hybrid_sliding", "full_attention", "linear_attention", "hybrid"],
                     [[0], [1], None, None, [1]]),
    "intra_subtract": _INTRA, "intra_sum": _INTRA, "intra_gate": _INTRA,
}


def tiny_config(pattern: str | list = "mixed", sliding: bool = True, **overrides) -> HybridConfig:
    """An odd-sized 5-layer model: head_dim independent of hidden/heads, GQA, every mixer option on."""
    mixers = PATTERNS[pattern] if isinstance(pattern, str) else pattern
    layer_types = ["linear_attention" if m else "full_attention" for m in mixers]
    if sliding and layer_types[-1] == "full_attention":
        layer_types[-1] = "sliding_attention"
    intra = {}
    if isinstance(pattern, str) and pattern in INTRA_LAYOUT:
        layer_types, groups = INTRA_LAYOUT[pattern]
        intra = dict(attention_kv_heads=groups, intra_fusion=pattern.split("_")[1])
    kwargs = dict(
        vocab_size=101, hidden_size=44, intermediate_size=76, num_hidden_layers=len(mixers),
        num_attention_heads=4, num_key_value_heads=2, head_dim=10, qk_norm=True, attention_bias=True,
        layer_types=layer_types, linear_mixers=mixers, sliding_window=7, linear_qk_norm=True,
        linear_conv_size=3, linear_qkv_bias=True, gla_gate_low_rank_dim=5, hype_a=6.0, attention_output_gate=True,
        max_position_embeddings=64, **intra,
    )
    kwargs.update(overrides)
    return HybridConfig(**kwargs)


def token_rope(B: int, D: int, dtype, device, first: float = 7.0) -> dict:
    """cos, sin (B, 1, D) of one decode token per row at positions first, first + 1, ... (rotate-half tables)."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device=device).float() / D))
    pos = first + torch.arange(B, device=device, dtype=torch.float32)[:, None]
    emb = torch.cat([pos[..., None] * inv] * 2, dim=-1)
    return dict(cos=emb.cos().to(dtype), sin=emb.sin().to(dtype))


def static_decode_logits(monkeypatch, model, ids, spied: str, fused_on: bool, device, dtype, prefill: int = 5):
    """Last-position logits of a prefill of `prefill` tokens, then one decode step per remaining token of `ids`, over
    a static cache, with the fused kernels and the one-kernel decode paths on or off (the PyTorch backend for the
    recurrences otherwise), and how often `kernels.<spied>` was called."""
    from hybridize.mixers import kernels
    from hybridize.models.cache import HybridStaticCache

    monkeypatch.setattr(kernels, "fused_inference", lambda x: fused_on)
    calls = []
    fn = getattr(kernels, spied)
    monkeypatch.setattr(kernels, spied, lambda *a, **kw: calls.append(1) or fn(*a, **kw))
    logits = []
    B, T = ids.shape
    with torch.no_grad(), kernels.force_backend("torch"), kernels.fused_steps(fused_on):
        cache = HybridStaticCache(model.config, max_cache_len=T + 4, batch_size=B, device=device, dtype=dtype)
        logits.append(model(ids[:, :prefill], past_key_values=cache, use_cache=True).logits[:, -1])
        for t in range(prefill, T):
            logits.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1])
    monkeypatch.undo()
    return torch.stack(logits, 1).float(), len(calls)


def require_gpu(*, fla: bool = True, triton: bool = False) -> None:
    """The GPU test modules call this first: without what they need they fail (they are selected with -m gpu, so a
    skip would hide a misconfigured GPU run), saying what to install."""
    from hybridize.mixers import kernels

    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (deselect them with -m 'not gpu')")
    if fla and not kernels.fla_available():
        pytest.fail("the gpu tests need fla-core installed (pip install -e '.[gpu]')")
    if triton and not kernels.triton_available():
        pytest.fail("these gpu tests need Triton (pip install -e '.[test]')")


@pytest.fixture
def triton_device() -> str:
    """Where our Triton kernels run in this test: "cuda" on a GPU, else "cpu" in Triton's interpreter."""
    pytest.importorskip("triton", reason="Triton is part of the [test] extra: pip install -e '.[test]'")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all per-op overhead; with 2 threads on a busy 2-core machine a (2, 1, 44) matmul takes ~8 ms
    instead of 0.01 ms, which makes generation tests crawl. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
