"""Cache consistency of the whole model, written once and parametrized over every mixer and mixed patterns:
prefill + decode == forward, padded batch == rows alone, packed documents == documents apart, save -> load exact,
generate with cache == without cache == a manual greedy loop."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hybridize  # noqa: F401  (registers the Auto classes)
from hybridize import HybridCache, HybridForCausalLM
from hybridize.models.cache import output_cache
from conftest import PATTERNS, assert_close, tiny_config

PATTERN_NAMES = list(PATTERNS)


def _model(pattern, **kw) -> HybridForCausalLM:
    return HybridForCausalLM(tiny_config(pattern, **kw)).eval()


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
@pytest.mark.parametrize("hype", [True, False])
def test_prefill_then_decode_equals_full_forward(pattern, hype):
    extra = {} if hype else dict(hype_a=None, attention_output_gate=False)
    model = _model(pattern, attention_rope=not hype, **extra)
    ids = torch.randint(0, 101, (2, 19))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = HybridCache(model.config)
        # a prefill, a second chunk (chunked prefill against a non-empty cache), then single-token steps
        parts = [model(ids[:, :8], past_key_values=cache, use_cache=True).logits,
                 model(ids[:, 8:13], past_key_values=cache, use_cache=True).logits]
        for t in range(13, 19):
            parts.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 19
    assert_close(torch.cat(parts, dim=1), full, f"{pattern} prefill+decode")


def test_cache_is_taken_under_either_transformers_name():
    """transformers 5.24 renamed `past_key_values` to `cache` (argument and output field); both must work, and a
    cache given twice under different names is refused."""
    model = _model("mixed")
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        old, new = HybridCache(model.config), HybridCache(model.config)
        a = [model(ids[:, :5], past_key_values=old).logits, model(ids[:, 5:], past_key_values=old).logits]
        b = [model(ids[:, :5], cache=new).logits, model(ids[:, 5:], cache=new).logits]
        out = model(ids[:, :1], cache=HybridCache(model.config))
        with pytest.raises(ValueError, match="give the cache once"):
            model(ids, cache=HybridCache(model.config), past_key_values=HybridCache(model.config))
    assert output_cache(out).get_seq_length() == 1
    assert old.get_seq_length() == new.get_seq_length() == 9
    assert torch.equal(torch.cat(a, 1), torch.cat(b, 1))
    assert_close(torch.cat(b, 1), full, "cache= prefill + continuation")


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_padded_batch_equals_rows_alone(pattern):
    model = _model(pattern)
    lengths = [11, 6, 9]
    rows = [torch.randint(1, 101, (n,)) for n in lengths]
    T = max(lengths)
    ids = torch.stack([torch.cat([torch.zeros(T - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(T - len(r)), torch.ones(len(r))]) for r in rows]).long()
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, use_cache=False).logits
        for i, r in enumerate(rows):
            alone = model(r[None], use_cache=False).logits[0]
            assert_close(batch[i, T - len(r) :], alone, f"{pattern} row {i}")


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_packed_documents_equal_documents_apart(pattern):
    model = _model(pattern)
    lengths = [7, 1, 12, 5]
    ids = torch.randint(0, 101, (1, sum(lengths)))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu, use_cache=False).logits
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            assert_close(packed[:, a:b], model(ids[:, a:b], use_cache=False).logits, f"{pattern} doc {a}:{b}")


@pytest.mark.parametrize("pattern", ["mixed", "all_linear", "intra_sum"])
def test_packed_gradients_equal_documents_apart(pattern):
    """Training on packed documents gives the same gradients as the documents alone (nothing leaks backwards)."""
    model = _model(pattern).train()
    lengths = [9, 6]
    ids = torch.randint(0, 101, (1, sum(lengths)))
    cu = torch.tensor([0, 9, 15])
    model.zero_grad()
    model(ids, cu_seqlens=cu).logits.pow(2).mean().mul(15).backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for a, b in [(0, 9), (9, 15)]:
        model(ids[:, a:b]).logits.pow(2).mean().mul(b - a).backward()
    for n, p in model.named_parameters():
        if n in packed:
            assert_close(packed[n], p.grad, f"{pattern} grad {n}", scale=3)


@pytest.mark.parametrize("pattern", ["mixed", "all_linear", "gla", "intra_gate"])
def test_save_load_roundtrip_with_auto_classes(pattern, tmp_path):
    model = _model(pattern, tie_word_embeddings=pattern == "gla")
    ids = torch.randint(0, 101, (2, 10))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.layer_types == model.config.layer_types and config.linear_mixers == model.config.linear_mixers
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is HybridForCausalLM
    with torch.no_grad():
        assert torch.equal(loaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits)
    if model.config.tie_word_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def _greedy_loop(model, ids, mask, steps):
    """The reference decode: re-run the whole (padded) sequence for every new token, no cache."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_generate_cache_equals_no_cache_equals_manual_loop(pattern):
    model = _model(pattern)
    model.generation_config.pad_token_id = 0
    lengths = [8, 3, 6]
    T = max(lengths)
    rows = [torch.randint(1, 101, (n,)) for n in lengths]
    ids = torch.stack([torch.cat([torch.zeros(T - len(r), dtype=torch.long), r]) for r in rows])
    mask = (ids != 0).long()
    kw = dict(attention_mask=mask, max_new_tokens=7, do_sample=False)
    with_cache = model.generate(ids, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    manual = _greedy_loop(model, ids, mask, 7)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache, manual)
    for i, r in enumerate(rows):  # each prompt alone continues the same way
        alone = model.generate(r[None], max_new_tokens=7, do_sample=False)
        assert torch.equal(alone[0, len(r) :], with_cache[i, T:])


@pytest.mark.parametrize("pattern", ["mixed", "all_linear"])
def test_sampled_generation_is_reproducible_and_cache_independent(pattern):
    model = _model(pattern)
    model.generation_config.pad_token_id = 0
    ids = torch.randint(1, 101, (2, 5))
    kw = dict(max_new_tokens=6, do_sample=True, top_k=20, temperature=0.9)
    torch.manual_seed(1)
    a = model.generate(ids, **kw)
    torch.manual_seed(1)
    b = model.generate(ids, use_cache=False, **kw)
    assert a.shape == (2, 11) and torch.equal(a, b)


def test_hidden_states_and_loss_follow_hf_conventions():
    model = _model("mixed")
    ids = torch.randint(0, 101, (2, 9))
    out = model(ids, labels=ids, output_hidden_states=True, use_cache=False)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    logits = out.logits[:, :-1].reshape(-1, 101)
    expected = torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1))
    assert_close(out.loss, expected, "causal LM loss")
    last = model(ids, logits_to_keep=1, use_cache=False).logits
    assert last.shape == (2, 1, 101)
    assert_close(last[:, 0], out.logits[:, -1], "logits_to_keep")


def test_gradient_checkpointing_gives_same_gradients():
    model = _model("mixed").train()
    ids = torch.randint(0, 101, (2, 12))
    model(ids, labels=ids).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # transformers >= 5.2x renamed it; both names are in use across the 5.x line
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        if n in ref:
            assert_close(p.grad, ref[n], f"checkpointed grad {n}")


def test_cache_layers_follow_layer_types():
    config = tiny_config("mixed")
    cache = HybridCache(config)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["LinearAttentionLayer", "DynamicLayer", "LinearAttentionLayer", "LinearAttentionLayer",
                     "DynamicSlidingWindowLayer"]
    with pytest.raises(NotImplementedError, match="cannot be rolled back"):
        cache.crop(3)


def test_bad_forward_inputs_raise_clear_errors():
    model = _model("mixed")
    ids = torch.randint(0, 101, (2, 6))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="attention_mask must be a 2-D"):
        model(ids, attention_mask=torch.ones(2, 1, 6, 6))
    with pytest.raises(ValueError, match="batch of size 1"):
        model(ids, cu_seqlens=torch.tensor([0, 3, 6]))
    with pytest.raises(ValueError, match="offsets from 0 to the sequence length"):
        model(ids[:1], cu_seqlens=torch.tensor([0, 3, 5]))
