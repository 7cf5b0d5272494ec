"""Fused input projections (hybridize.mixers.fusion): one matmul for q|k|v|gate and for gate|up, with the same
results as the separate projections, no extra memory, and saving / loading / training unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import hybridize  # noqa: F401
from hybridize import HybridCache, HybridForCausalLM
from conftest import PATTERNS, assert_close, tiny_config


def _pair(pattern):
    torch.manual_seed(0)
    plain = HybridForCausalLM(tiny_config(pattern)).eval()
    fused = HybridForCausalLM(tiny_config(pattern)).eval()
    fused.load_state_dict(plain.state_dict())
    return plain, fused


@pytest.mark.parametrize("pattern", ["mixed", "all_linear", "linear_variants", "all_attention"])
def test_fused_projections_give_the_same_logits_and_tokens(pattern):
    plain, fused = _pair(pattern)
    params = sum(p.numel() for p in fused.parameters())
    storage = {p.untyped_storage().data_ptr() for p in fused.parameters()}
    groups = fused.fuse_projections()
    assert groups == 2 * len(PATTERNS[pattern])  # every mixer (q|k|v|g) and every MLP (gate|up)
    assert sum(p.numel() for p in fused.parameters()) == params  # nothing added
    assert len({p.untyped_storage().data_ptr() for p in fused.parameters()}) < len(storage)  # views share storage
    ids = torch.randint(0, 101, (2, 23))
    with torch.no_grad():
        assert_close(fused(ids).logits, plain(ids).logits, f"{pattern} fused logits")
        # prefill + single-token decode through the cache, and greedy generation
        cache = HybridCache(fused.config)
        parts = [fused(ids[:, :15], past_key_values=cache).logits]
        parts += [fused(ids[:, t:t + 1], past_key_values=cache).logits for t in range(15, 23)]
        assert_close(torch.cat(parts, 1), plain(ids).logits, f"{pattern} fused prefill + decode")
    a = plain.generate(ids[:, :6], max_new_tokens=8, do_sample=False)
    b = fused.generate(ids[:, :6], max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
    # the fused matmul is what ran: the separate modules are not called without autograd
    for name, module in fused.named_modules():
        if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "g_proj", "i_proj", "f_proj", "gate_proj",
                                       "up_proj"):
            module.forward = _refuse
    with torch.no_grad():
        fused(ids)
    with pytest.raises(AssertionError, match="separate projection called"):
        fused(ids)  # with autograd (training) the separate modules run
    # a prompt longer than a decode step (prefill) runs the separate projections too: fused was slower there on the GPU
    from hybridize.mixers.fusion import MAX_ROWS

    with torch.no_grad(), pytest.raises(AssertionError, match="separate projection called"):
        fused(torch.randint(0, 101, (1, MAX_ROWS + 1)))
    with torch.no_grad():
        fused(torch.randint(0, 101, (MAX_ROWS, 1)))  # the largest decode step: fused


def _refuse(*args, **kwargs):
    raise AssertionError("separate projection called")


def test_a_fused_model_saves_loads_and_trains_like_before(tmp_path):
    plain, fused = _pair("mixed")
    fused.fuse_projections()
    fused.save_pretrained(tmp_path / "m")  # safetensors refuses tensors that share storage: the copies must be there
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert set(loaded.state_dict()) == set(plain.state_dict())
    ids = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, plain(ids).logits)
    # training goes through the separate modules (their weights are the fused rows): gradients reach every
    # projection, and an optimizer step moves the fused weights with them
    fused.train()
    for model in (plain.train(), fused):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        model(ids, labels=ids).loss.backward()
        assert model.model.layers[0].mixer.q_proj.weight.grad is not None
        opt.step()
    plain.eval(), fused.eval()
    with torch.no_grad():
        assert_close(fused(ids).logits, plain(ids).logits, "after one step")


def test_a_converted_fused_model_falls_back_to_separate_projections():
    """`.to(dtype)` gives the modules new tensors: the stale fused weights must not be used."""
    plain, fused = _pair("mixed")
    fused.fuse_projections()
    fused.double()
    plain.double()
    with torch.no_grad():
        fused.model.layers[0].mixer.q_proj.weight.add_(0.1)  # changed after the move: only the new tensors know
        plain.model.layers[0].mixer.q_proj.weight.add_(0.1)
        ids = torch.randint(0, 101, (1, 9))
        assert_close(fused(ids).logits, plain(ids).logits, "after .double()")
    from hybridize.mixers.fusion import _intact

    assert not _intact(fused.model.layers[0].mixer, fused.model.layers[0].mixer.__dict__["_fused_in"])


@pytest.mark.parametrize("decode_fusion", [True, False])
def test_cuda_graph_decoder_fuses_before_each_capture_unless_decode_fusion_is_off(decode_fusion, monkeypatch):
    """generate on CUDA replays the decoder's captured step; the decoder fuses the projections before it captures
    (the measured 1.13-1.31x at batch 1), once: fuse_projections is a no-op on a fused model, and fuses again after
    `.to()` replaced the weights. The capture itself needs CUDA, so it is stubbed here."""
    from hybridize import HybridStaticCache
    from hybridize.mixers.fusion import _ATTR, fuse_projections

    torch.manual_seed(0)
    model = HybridForCausalLM(tiny_config("mixed")).eval()
    model.decode_fusion = decode_fusion
    step = model.get_compiled_call()
    captures = []
    monkeypatch.setattr(step, "why_not_capturable", lambda *args: None)
    monkeypatch.setattr(step, "_capture", lambda cache, ids, mask, pos: captures.append(ids) or "captured")
    cache = HybridStaticCache(model.config, max_cache_len=8, batch_size=1)

    def fused_groups():
        return sum(_ATTR in m.__dict__ for m in model.modules())

    with torch.no_grad():
        assert step(input_ids=torch.tensor([[3]]), past_key_values=cache) == "captured"
    assert len(captures) == 1
    if not decode_fusion:
        assert fused_groups() == 0
        return
    groups = fused_groups()
    assert groups == 2 * len(PATTERNS["mixed"])
    assert fuse_projections(model) == 0  # already fused: nothing copied again
    model.to(torch.float64)  # new weight tensors: the fused ones no longer alias them
    assert fuse_projections(model) == groups
