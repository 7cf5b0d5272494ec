"""GPU: CUDA-graph decode over the static hybrid cache gives the eager tokens, for every mixer, mixed patterns with a
sliding layer, left-padded batches of 1, 8 and 64; and `hybridize bench` runs end to end on CUDA. Run on a CUDA
machine with fla installed:

    pytest -m gpu tests/gpu/test_decode_gpu.py -s
"""

from __future__ import annotations

import json

import pytest
import torch

from hybridize import HybridConfig, HybridForCausalLM, HybridStaticCache
from hybridize.models.cache import output_cache

from conftest import require_gpu

pytestmark = pytest.mark.gpu

PATTERNS = {
    "lightning": ["lightning", "lightning", None, "lightning"],
    "gated_deltanet": ["gated_deltanet", "gated_deltanet", None, "gated_deltanet"],
    "gla": ["gla", "gla", None, "gla"],
    "deltanet": ["deltanet", "deltanet", None, "deltanet"],
    "hgrn": ["hgrn", "hgrn", None, "hgrn"],
    "hgrn2": ["hgrn2", "hgrn2", None, "hgrn2"],
    "retnet": ["retnet", "retnet", None, "retnet"],
    "mamba2": ["mamba2", "mamba2", None, "mamba2"],
    "mixed": ["gla", None, "gated_deltanet", "lightning", None],  # the last one a sliding layer
    "intra": ["gla", "mamba2", None, "hgrn"],  # intra-layer blocks (INTRA below), one with a sliding window
    "all_attention": [None, None, None],
}


@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    require_gpu(fla=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _model(pattern: str, dtype) -> HybridForCausalLM:
    mixers = PATTERNS[pattern]
    types = ["linear_attention" if m else "full_attention" for m in mixers]
    if pattern == "mixed":
        types[-1] = "sliding_attention"
    intra = {}
    if pattern == "intra":
        types = ["hybrid", "hybrid", "full_attention", "hybrid_sliding"]
        intra = dict(attention_kv_heads=[[0], [1], None, [1]])
    config = HybridConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=len(mixers),
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64, qk_norm=True, layer_types=types,
                          linear_mixers=mixers, sliding_window=16, hype_a=6.0, attention_rope=False,
                          attention_output_gate=True, max_position_embeddings=256, pad_token_id=0, **intra)
    torch.manual_seed(0)
    model = HybridForCausalLM(config).to("cuda", dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


def _prompts(B: int):
    g = torch.Generator().manual_seed(B)
    lengths = torch.randint(4, 40, (B,), generator=g).tolist()
    T = max(lengths)
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = torch.randint(1, 512, (n,), generator=g)
    return ids.cuda(), (ids != 0).long().cuda()


@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_graph_decode_equals_eager(pattern, B):
    """bf16: graph replay == the same static step run eagerly (same kernels: equal tokens, logits within bf16);
    fp32: == the dynamic cache's tokens as well. The one-kernel steps (`decode_steps`, on by default) run only under
    the graph, so they are off here: test_linear_decode_gpu compares the graph with them against the graph without."""
    for dtype in (torch.bfloat16, torch.float32):
        model = _model(pattern, dtype)
        model.decode_steps = False
        ids, mask = _prompts(B)
        kw = dict(attention_mask=mask, max_new_tokens=24, do_sample=False, return_dict_in_generate=True,
                  output_logits=True)
        graph = model.generate(ids, cache_implementation="static", **kw)
        assert model._graph_decoder.replays >= 20, "the decode steps did not replay a CUDA graph"
        eager = model.generate(ids, cache_implementation="static", disable_compile=True, **kw)
        assert isinstance(output_cache(graph), HybridStaticCache)
        assert torch.equal(graph.sequences, eager.sequences), f"{pattern} B={B} {dtype}: graph != eager static"
        for step, (a, b) in enumerate(zip(graph.logits, eager.logits)):
            rel = ((a.double() - b.double()).norm() / b.double().norm()).item()
            assert rel < (2e-2 if dtype == torch.bfloat16 else 1e-4), f"step {step}: rel err {rel:.2e}"
        if dtype == torch.float32:
            dynamic = model.generate(ids, **kw)
            assert torch.equal(graph.sequences, dynamic.sequences), f"{pattern} B={B}: graph != dynamic cache"


@pytest.mark.parametrize("pattern", ["mixed", "all_attention"])
def test_fused_projections_on_cuda(pattern):
    """fuse_projections on CUDA: fp32 tokens equal the unfused model's through the CUDA-graph decode; bf16 logits
    within bf16 of them (one matmul sums in another order than three). generate fuses by itself (decode_fusion, the
    default) with the same result; decode_fusion=False keeps the projections apart."""
    from hybridize.mixers.fusion import _ATTR

    for dtype in (torch.float32, torch.bfloat16):
        plain, fused, auto = _model(pattern, dtype), _model(pattern, dtype), _model(pattern, dtype)
        plain.decode_fusion = False
        assert fused.fuse_projections() > 0
        ids, mask = _prompts(8)
        kw = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, return_dict_in_generate=True,
                  output_logits=True, cache_implementation="static")
        a, b, c = plain.generate(ids, **kw), fused.generate(ids, **kw), auto.generate(ids, **kw)
        assert fused._graph_decoder.replays >= 12, "the fused decode did not replay a CUDA graph"
        assert not any(_ATTR in m.__dict__ for m in plain.modules()), "decode_fusion=False fused anyway"
        assert sum(_ATTR in m.__dict__ for m in auto.modules()) == sum(_ATTR in m.__dict__ for m in fused.modules())
        assert torch.equal(b.sequences, c.sequences), f"{pattern} {dtype}: generate's own fusion differs"
        if dtype == torch.float32:
            assert torch.equal(a.sequences, b.sequences), f"{pattern}: fused tokens differ"
        rel = ((a.logits[0].double() - b.logits[0].double()).norm() / a.logits[0].double().norm()).item()
        assert rel < (2e-2 if dtype == torch.bfloat16 else 1e-4), f"{pattern} {dtype}: first-step rel err {rel:.2e}"


def test_bench_runs_on_cuda(tmp_path):
    from hybridize.bench import run_bench

    rows = run_bench("tiny", out=tmp_path, budget=0.25, mixer="lightning", contexts=[256, 512], batches=[1, 8],
                     device="cuda", dtype="bfloat16", new_tokens=8, repeats=2)
    variants = {r["variant"] for r in rows}
    assert variants == {"hybrid", "teacher-engine", "teacher-hf"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(r["tpot_ms"] > 0 and r["peak_gib"] > 0 for r in summary if not r.get("oom"))


@pytest.mark.parametrize("B,N", [(1, 131072), (8, 32768), (64, 4096)])
def test_decode_attention_kernel_at_scale(B, N):
    """The split-K kernel at Qwen3-1.7B's shape against the fp32 reference: left padding, a context that is not a
    multiple of the block, and a buffer longer than what was written."""
    from hybridize.mixers.triton.decode_attention import decode_attention, reference_decode_attention

    g = torch.Generator(device="cuda").manual_seed(N)
    q = torch.randn(B, 8, 2, 128, device="cuda", generator=g).bfloat16()
    k = (2 * torch.randn(B, 8, N + 64, 128, device="cuda", generator=g)).bfloat16()
    v = torch.randn(B, 8, N + 64, 128, device="cuda", generator=g).bfloat16()
    pos = torch.tensor([N - 37], device="cuda")
    valid = torch.zeros(B, N + 64, dtype=torch.bool, device="cuda")
    for b in range(B):
        valid[b, (b * 997) % (N // 2) : N - 36] = True
    out = decode_attention(q, k, v, pos, valid, 128**-0.5).double()
    ref = reference_decode_attention(q.float(), k.float(), v.float(), pos, valid, 128**-0.5).double()
    err = (out - ref).abs().max().item()
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"decode attention B={B} N={N}: max abs err {err:.3e}, relative {rel:.3e}")
    assert rel < 4e-3 and err < 2e-2  # the output's own bf16 rounding: 2^-9 relative


def test_decode_attention_kernel_past_int32_offsets():
    """A cache buffer of more than 2**31 elements (3 rows x 8 heads x 1M slots x 128): the last row starts past int32's
    range, as at batch 65 x 32K at Qwen3-1.7B's shape (`bench --largest-batch`), and is compared with the reference."""
    from hybridize.mixers.triton.decode_attention import decode_attention, reference_decode_attention

    B, N = 3, 1 << 20
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, 8, 2, 128, device="cuda", generator=g).bfloat16()
    k = torch.empty(B, 8, N, 128, device="cuda", dtype=torch.bfloat16).normal_(generator=g)
    v = torch.empty(B, 8, N, 128, device="cuda", dtype=torch.bfloat16).normal_(generator=g)
    assert k[B - 1].storage_offset() >= 2**31
    pos = torch.tensor([N - 5], device="cuda")
    out = decode_attention(q, k, v, pos, None, 128**-0.5)[B - 1].double()
    ref = reference_decode_attention(q[B - 1:].float(), k[B - 1:].float(), v[B - 1:].float(), pos, None,
                                     128**-0.5)[0].double()
    err = (out - ref).abs().max().item()
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"decode attention past int32 offsets: max abs err {err:.3e}, relative {rel:.3e}")
    assert rel < 4e-3 and err < 2e-2
