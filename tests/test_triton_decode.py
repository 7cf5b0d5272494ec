"""The split-K decode attention kernel (hybridize/mixers/triton/decode_attention.py) against its fp32 reference and
against the masked SDPA call the attention mixer makes without it. On the CPU it runs in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, differing


def _case(device, dtype, B, Hkv, G, D, N, pos, pad=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hkv, G, D, generator=gen).to(dtype).to(device)
    k = (torch.randn(B, Hkv, N, D, generator=gen) * 2).to(dtype).to(device)
    v = torch.randn(B, Hkv, N, D, generator=gen).to(dtype).to(device)
    valid = None
    if pad is not None:  # row b has pad[b] padding slots on the left, every slot after pos is unwritten
        valid = torch.zeros(B, N, dtype=torch.bool)
        for b, n in enumerate(pad):
            valid[b, n:pos + 1] = True
        valid = valid.to(device)
    return q, k, v, torch.tensor([pos], device=device), valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Hkv,G,D,N,pos,pad,splits", [
    (1, 2, 2, 32, 200, 150, None, None),  # several splits, a ragged last block
    (2, 1, 3, 24, 130, 129, [0, 5], 3),  # G and D not powers of two, left padding, the last slot
    (1, 1, 1, 16, 64, 0, None, 4),  # the very first token: one key, three empty splits
    (2, 2, 4, 16, 300, 70, [70, 0], 5),  # a row whose every earlier slot is padding sees only itself
])
def test_kernel_matches_reference(triton_device, dtype, B, Hkv, G, D, N, pos, pad, splits):
    from hybridize.mixers.triton.decode_attention import decode_attention, reference_decode_attention

    q, k, v, p, valid = _case(triton_device, dtype, B, Hkv, G, D, N, pos, pad)
    scale = D**-0.5
    out = decode_attention(q, k, v, p, valid, scale, num_splits=splits)
    ref = reference_decode_attention(q.cpu(), k.cpu(), v.cpu(), p.cpu(), None if valid is None else valid.cpu(),
                                     scale)
    assert_close(out, ref, f"decode attention B={B} Hkv={Hkv} G={G} D={D} pos={pos}")
    # and what the attention mixer computes without the kernel: SDPA under the boolean mask
    j = torch.arange(N)
    allowed = (j <= pos)[None, :] & (torch.ones(B, N, dtype=torch.bool) if valid is None else valid.cpu())
    allowed = (allowed | (j == pos))[:, None, None, :]
    sdpa = F.scaled_dot_product_attention(q.cpu().float(), k.cpu().float(), v.cpu().float(), attn_mask=allowed,
                                          scale=scale)
    assert_close(out, sdpa.to(dtype), "decode attention vs masked SDPA")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_gate_in_the_merge(triton_device, dtype):
    """gate: the attention's output gate applied in the merge kernel equals o * sigmoid(gate) after the kernel, the
    gate a strided slice of a fused projection row."""
    from hybridize.mixers.triton.decode_attention import decode_attention

    B, Hkv, G, D = 2, 2, 3, 24
    q, k, v, p, valid = _case(triton_device, dtype, B, Hkv, G, D, 90, 70, [0, 9])
    row = torch.randn(B, 1, 2 * Hkv * G * D, device=triton_device).to(dtype)
    gate = row[..., Hkv * G * D:]
    plain = decode_attention(q, k, v, p, valid, D**-0.5, num_splits=3)
    gated = decode_attention(q, k, v, p, valid, D**-0.5, num_splits=3, gate=gate)
    expected = plain * torch.sigmoid(gate.reshape(B, Hkv, G, D))
    assert_close(gated, expected, f"gated decode attention {dtype}")
    differing(gated, expected, f"gated decode attention {dtype}")
    # no bit-for-bit count: Triton's interpreter truncates the ungated kernel's fp32 -> bf16 store (the GPU rounds)
    with pytest.raises(ValueError, match="gate must be"):
        decode_attention(q, k, v, p, valid, D**-0.5, gate=gate[..., 1:])


def test_bad_shapes_are_refused(triton_device):
    from hybridize.mixers.triton.decode_attention import decode_attention

    q, k, v, p, _ = _case(triton_device, torch.float32, 1, 2, 2, 16, 32, 3)
    with pytest.raises(ValueError, match="k and v must be"):
        decode_attention(q, k[:, :1], v, p, None, 0.25)
    with pytest.raises(ValueError, match="valid must be"):
        decode_attention(q, k, v, p, torch.ones(1, 31, dtype=torch.bool, device=triton_device), 0.25)


@pytest.mark.parametrize("pattern", ["all_attention", "mixed"])
def test_model_decode_with_the_kernel_equals_dynamic_decode(triton_device, pattern, monkeypatch):
    """The whole model: left-padded rows, static cache, the decode steps through the kernel (Triton's interpreter on
    the CPU) give the logits of the dynamic cache's SDPA path; the sliding layer keeps its masked SDPA."""
    from hybridize import HybridCache, HybridForCausalLM, HybridStaticCache
    from hybridize.mixers import kernels
    from conftest import tiny_config

    calls = []
    kernel = kernels.decode_attention
    monkeypatch.setattr(kernels, "fused_inference", lambda x: not torch.is_grad_enabled())
    monkeypatch.setattr(kernels, "decode_attention", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    model = HybridForCausalLM(tiny_config(pattern)).eval().to(triton_device)
    ids = torch.randint(1, 101, (3, 9), device=triton_device)
    mask = torch.ones_like(ids)
    mask[1, :5], mask[2, :2] = 0, 0
    dynamic = HybridCache(model.config)
    static = HybridStaticCache(model.config, max_cache_len=20, batch_size=3, device=triton_device)
    with torch.no_grad():
        d = model(ids, attention_mask=mask, past_key_values=dynamic).logits[:, -1]
        s = model(ids, attention_mask=mask, past_key_values=static).logits[:, -1]
        for step in range(6):
            assert_close(s, d, f"{pattern} step {step}")
            token = d.argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            d = model(token, attention_mask=mask, past_key_values=dynamic).logits[:, -1]
            s = model(token, attention_mask=mask, past_key_values=static).logits[:, -1]
    full = sum(t == "full_attention" for t in model.config.layer_types)
    assert len(calls) == 6 * full > 0  # each decode step of each full-attention layer, never the prefill
