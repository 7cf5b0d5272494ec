"""The fast inference paths on the CPU: the static cache's decode step == the dynamic cache's, the step reads no
value back to the host and keeps its buffers where they are (what a CUDA graph needs), chunked prefill == one-shot
prefill, and `hybridize bench` end to end on a tiny shape."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers.cache_utils import StaticCache

from hybridize import HybridCache, HybridForCausalLM, HybridStaticCache
from hybridize.models.cache import output_cache
from conftest import PATTERNS, assert_close, load_script, tiny_config

PATTERN_NAMES = list(PATTERNS)


def _model(pattern, **kw) -> HybridForCausalLM:
    model = HybridForCausalLM(tiny_config(pattern, **kw)).eval()
    model.generation_config.pad_token_id = 0
    return model


def _left_padded(lengths, vocab=101):
    T = max(lengths)
    rows = [torch.randint(1, vocab, (n,)) for n in lengths]
    ids = torch.stack([torch.cat([torch.zeros(T - len(r), dtype=torch.long), r]) for r in rows])
    return ids, (ids != 0).long()


def _cache_tensors(cache) -> list[torch.Tensor]:
    """Everything a cache holds, layer by layer, in a fixed order."""
    out = []
    for layer in cache.layers:
        if hasattr(layer, "recurrent_states"):
            out.append(layer.recurrent_states[0])
            if layer.is_conv_states_initialized[0]:
                out.append(layer.conv_states[0])
        else:
            out += [layer.keys, layer.values]
    if isinstance(cache, HybridStaticCache):
        out += [cache.valid, cache.real, cache.length]
    return out


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_static_decode_equals_dynamic_decode(pattern):
    """Left-padded rows of different lengths, greedy decode long enough for the sliding layer's ring to wrap
    (window 7): the same tokens and logits from both caches, step by step."""
    model = _model(pattern)
    ids, mask = _left_padded([9, 4, 7])
    B, steps = ids.shape[0], 12
    dynamic, static = HybridCache(model.config), HybridStaticCache(model.config, max_cache_len=24, batch_size=B)
    with torch.no_grad():
        d = model(ids, attention_mask=mask, past_key_values=dynamic).logits[:, -1]
        s = model(ids, attention_mask=mask, past_key_values=static).logits[:, -1]
        for step in range(steps):
            assert_close(s, d, f"{pattern} step {step}")
            token = d.argmax(-1, keepdim=True)
            assert torch.equal(s.argmax(-1, keepdim=True), token)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            d = model(token, attention_mask=mask, past_key_values=dynamic).logits[:, -1]
            s = model(token, attention_mask=mask, past_key_values=static).logits[:, -1]
    assert static.get_seq_length() == dynamic.get_seq_length() == 9 + steps
    assert int(static.length) == 9 + steps and static.real.tolist() == [9 + steps, 4 + steps, 7 + steps]


@pytest.mark.parametrize("pattern", ["mixed", "all_linear", "linear_variants", "intra_concat", "all_attention",
                                     "gated_deltanet"])
def test_generate_static_equals_dynamic_and_manual_loop(pattern):
    model = _model(pattern)
    ids, mask = _left_padded([8, 3, 6])
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False)
    dynamic = model.generate(ids, **kw)
    static = model.generate(ids, cache_implementation="static", return_dict_in_generate=True, **kw)
    chunked = model.generate(ids, cache_implementation="static", prefill_chunk_size=3, **kw)
    assert isinstance(output_cache(static), HybridStaticCache)
    assert torch.equal(static.sequences, dynamic) and torch.equal(chunked, dynamic)
    with torch.no_grad():  # the reference: the whole sequence again for every token, no cache
        seq, m = ids, mask
        for _ in range(10):
            nxt = model(seq, attention_mask=m, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(dynamic, seq)


@pytest.mark.parametrize("pattern", ["mixed", "all_linear", "linear_variants", "intra_concat", "intra_gate"])
@pytest.mark.parametrize("fused", [False, True])
def test_decode_step_is_capturable(pattern, fused, monkeypatch):
    """What a CUDA graph replay needs, checked on the CPU: the one-token step (1) reads no tensor value back to the
    host, (2) keeps every buffer at its address, (3) does not depend on the Python-side token count, which a replay
    leaves frozen at its capture value. Also with fused input projections (`fuse_projections`)."""
    model = _model(pattern, linear_conv_size=4)
    if fused:
        assert model.fuse_projections() > 0
    ids, mask = _left_padded([6, 3])
    cache = HybridStaticCache(model.config, max_cache_len=16, batch_size=2)
    frozen = HybridStaticCache(model.config, max_cache_len=16, batch_size=2)
    addresses = [t.data_ptr() for t in _cache_tensors(cache)]
    with torch.no_grad():
        model(ids, attention_mask=mask, past_key_values=cache)
        model(ids, attention_mask=mask, past_key_values=frozen)
        token = torch.tensor([[5], [7]])

        def host_read(*args, **kwargs):
            raise AssertionError("the decode step read a tensor value back to the host")

        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
                patch.setattr(torch.Tensor, name, host_read)
            for step in range(8):
                expected = model(token, attention_mask=torch.ones(2, 1), past_key_values=cache).logits
                frozen.seen_tokens = 6  # as in a replay: the count the step was captured at
                got = model(token, attention_mask=torch.ones(2, 1), past_key_values=frozen).logits
                assert torch.equal(got, expected), f"step {step} depends on the host-side token count"
    assert [t.data_ptr() for t in _cache_tensors(cache)] == addresses


@pytest.mark.parametrize("pattern", ["mixed", "all_linear", "all_attention", "lightning"])
@pytest.mark.parametrize("chunk_size", [4, 5, 7, 19, 64])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_chunked_prefill_equals_one_shot(pattern, chunk_size, static):
    """Logits at every position and the final cache, for chunk sizes that do and do not divide 19, with left
    padding longer than a chunk (row 1 is padding for its first 11 positions)."""
    model = _model(pattern, linear_conv_size=3)
    ids, mask = _left_padded([19, 8, 13])

    def new_cache():
        return HybridStaticCache(model.config, 32, 3) if static else HybridCache(model.config)

    one = model.prefill(ids, attention_mask=mask, cache=new_cache(), all_logits=True)
    chunked = model.prefill(ids, attention_mask=mask, cache=new_cache(), chunk_size=chunk_size, all_logits=True)
    assert_close(chunked.logits, one.logits, f"{pattern} chunk {chunk_size} logits")
    last = model.prefill(ids, attention_mask=mask, cache=new_cache(), chunk_size=chunk_size)
    assert last.logits.shape == (3, 1, 101)
    assert_close(last.logits[:, 0], one.logits[:, -1], "last-position logits")
    for i, (a, b) in enumerate(zip(_cache_tensors(output_cache(chunked)), _cache_tensors(output_cache(one)))):
        if a.is_floating_point():
            assert_close(a, b, f"{pattern} chunk {chunk_size} cache tensor {i}")
        else:
            assert torch.equal(a, b), f"cache tensor {i}"
    assert output_cache(chunked).get_seq_length() == 19


def test_chunked_prefill_long_prompt_then_decode_matches_full_forward():
    """A prompt 6x the sliding window, in chunks of 5, then decode: every logit equals the uncached forward."""
    model = _model("mixed")
    ids = torch.randint(1, 101, (2, 45))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    for cache in (HybridCache(model.config), HybridStaticCache(model.config, 48, 2)):
        out = model.prefill(ids[:, :40], cache=cache, chunk_size=5, all_logits=True)
        parts = [out.logits]
        with torch.no_grad():
            for t in range(40, 45):
                parts.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
        assert_close(torch.cat(parts, 1), full, type(cache).__name__)


@pytest.mark.parametrize("B,H,Hkv,T,past,D,pad", [
    (2, 4, 2, 16, 40, 10, [0, 13]),  # GQA, a row padded across the first key blocks
    (1, 3, 3, 9, 100, 8, None),  # no grouping, no padding, T and past not multiples of a tile
    (3, 8, 2, 33, 7, 16, [7, 0, 30]),  # a row whose every cached key is padding, one padded into the chunk
])
def test_blocked_attention_equals_masked_sdpa(B, H, Hkv, T, past, D, pad):
    """The bounded chunk attention (`mixers/blocked_attention.py`) against what `Attention` runs without it: SDPA
    over K/V repeated to the query heads under the causal mask with padding, fp32; tiles of 16 x 16 (a workspace far
    below the scores) so that every tile boundary and the skipped blocks are crossed, and with one tile."""
    import torch.nn.functional as F

    from hybridize.mixers import blocked_attention

    Lk = past + T
    q = torch.randn(B, H, T, D)
    k, v = torch.randn(B, Hkv, Lk, D), torch.randn(B, Hkv, Lk, D)
    valid = None if pad is None else torch.arange(Lk + 5)[None, :] >= torch.tensor(pad)[:, None]  # longer: a buffer
    q_pos, k_pos = torch.arange(past, Lk), torch.arange(Lk)
    allowed = k_pos[None, :] <= q_pos[:, None]
    if valid is not None:
        allowed = allowed[None] & valid[:, None, :Lk]
    allowed = (allowed | (k_pos[None, :] == q_pos[:, None])).view(-1 if valid is not None else 1, 1, T, Lk)
    g = H // Hkv
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=allowed,
                                         scale=D**-0.5)
    for workspace in (4 * B * H * 16 * 16, None):
        out = blocked_attention.attend(q, k, v, past, 0, D**-0.5, valid, workspace=workspace)
        assert_close(out, ref, f"blocked attention B={B} H={H} T={T} past={past} workspace={workspace}")
    # keys that start later in the token stream (the dynamic cache's sliding layers keep a suffix): the same positions
    assert_close(blocked_attention.attend(q, k[:, :, 5:], v[:, :, 5:], past, 5, D**-0.5, valid, workspace=1024),
                 F.scaled_dot_product_attention(q, k[:, :, 5:].repeat_interleave(g, 1),
                                                v[:, :, 5:].repeat_interleave(g, 1), attn_mask=allowed[..., 5:],
                                                scale=D**-0.5), "blocked attention over a suffix")


@pytest.mark.parametrize("pattern", ["all_attention", "mixed", "intra_concat"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_chunked_prefill_through_blocked_attention_equals_one_shot(pattern, static, monkeypatch):
    """With a workspace small enough that every chunk after the first takes the bounded path (`_bounded`), chunked
    prefill of left-padded rows gives the one-shot prefill's logits and cache, and the decode step after it the same
    logits."""
    from hybridize.mixers import blocked_attention

    model = _model(pattern, sliding=False)
    ids, mask = _left_padded([30, 9, 21])
    new_cache = (lambda: HybridStaticCache(model.config, 40, 3)) if static else (lambda: HybridCache(model.config))
    one = model.prefill(ids, attention_mask=mask, cache=new_cache(), all_logits=True)
    calls = []
    attend = blocked_attention.attend
    monkeypatch.setattr(blocked_attention, "WORKSPACE_BYTES", 2048)
    monkeypatch.setattr(blocked_attention, "attend", lambda *a, **k: calls.append(a[0].shape) or attend(*a, **k))
    chunked = model.prefill(ids, attention_mask=mask, cache=new_cache(), chunk_size=7, all_logits=True)
    assert calls, "the bounded path did not run"
    assert_close(chunked.logits, one.logits, f"{pattern} chunked through blocked attention")
    for i, (a, b) in enumerate(zip(_cache_tensors(output_cache(chunked)), _cache_tensors(output_cache(one)))):
        assert_close(a.float(), b.float(), f"{pattern} cache tensor {i}")
    m = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
    with torch.no_grad():
        a, b = (model(ids[:, -1:], attention_mask=m, past_key_values=output_cache(o)).logits for o in (one, chunked))
    assert_close(b, a, f"{pattern} decode step after the two prefills")


@pytest.mark.parametrize("pattern", ["all_attention", "mixed"])
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_prefill_memory_does_not_grow_with_the_context(pattern, padded, monkeypatch):
    """What a chunked prefill into a static cache allocates beyond the cache (the most bytes held at once, from the
    CPU allocator's events): the same at 128 and 512 tokens of context, with and without left padding, once the
    chunks' attention over the cache is past the workspace (set small here, so a tiny model gets there). Through
    SDPA's masked path (the default workspace, far above these sizes) the same prefill grows with the context: the
    measurement sees what the bound removes (masks of chunk x context, K/V repeated to the query heads)."""
    from hybridize.bench.profile import host_peak_bytes
    from hybridize.mixers import blocked_attention

    model = _model(pattern, sliding=False)

    def prefill_peak(context: int) -> int:
        ids = torch.randint(1, 101, (2, context))
        mask = torch.ones_like(ids)
        if padded:
            mask[1, :5] = 0
        cache = HybridStaticCache(model.config, context, 2)
        with torch.no_grad():
            return host_peak_bytes(lambda: model.prefill(ids, attention_mask=mask, cache=cache, chunk_size=16))[1]

    through_sdpa = prefill_peak(128), prefill_peak(512)
    monkeypatch.setattr(blocked_attention, "WORKSPACE_BYTES", 4096)
    bounded = prefill_peak(128), prefill_peak(512)
    print(f"{pattern} padded={padded}: prefill peak beyond the cache at 128 / 512 tokens: SDPA path {through_sdpa}, "
          f"bounded {bounded} bytes")
    assert through_sdpa[1] > 1.5 * through_sdpa[0]
    assert bounded[1] <= bounded[0] * 1.01 and bounded[1] < through_sdpa[1]


def test_static_cache_layout():
    config = tiny_config("mixed", linear_conv_size=4)
    cache = HybridStaticCache(config, max_cache_len=20, batch_size=3, dtype=torch.bfloat16)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["StaticState", "StaticKV", "StaticState", "StaticState", "StaticKV"]
    full, ring = cache.layers[1], cache.layers[4]
    assert full.keys.shape == (3, 2, 20, 10) and full.keys.dtype == torch.bfloat16
    assert ring.keys.shape == (3, 2, 7, 10)  # the sliding layer holds its window only
    lin = cache.layers[0]
    assert lin.recurrent_states[0].shape == (3, 4, 10, 10) and lin.recurrent_states[0].dtype == torch.float32
    assert lin.conv_states[0].shape == (3, 4 * 30, 4)
    assert cache.is_compileable and cache.batch_size == 3 and cache.get_max_length() == 20


def test_static_cache_errors_name_the_problem():
    model = _model("mixed")
    cache = HybridStaticCache(model.config, max_cache_len=8, batch_size=2)
    with pytest.raises(ValueError, match="batch_size=2"):
        model(torch.randint(1, 101, (3, 4)), past_key_values=cache)
    with pytest.raises(ValueError, match="max_cache_len=8"):
        model(torch.randint(1, 101, (2, 9)), past_key_values=cache)
    with pytest.raises(ValueError, match="max_cache_len must be a positive integer"):
        HybridStaticCache(model.config, max_cache_len=0, batch_size=1)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        model.prefill(torch.randint(1, 101, (2, 4)), chunk_size=0)
    with pytest.raises(ValueError, match="attention_mask must be a 2-D"):
        model.prefill(torch.randint(1, 101, (2, 4)), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="cache_implementation='offloaded_static' is not supported"):
        model.generate(torch.randint(1, 101, (1, 3)), max_new_tokens=2, cache_implementation="offloaded_static")
    with pytest.raises(ValueError, match="use hybridize.HybridStaticCache"):
        model(torch.randint(1, 101, (1, 3)), past_key_values=StaticCache(config=model.config, max_cache_len=8))


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "hybridize.cli", *args], capture_output=True, text=True)


ROW_FIELDS = {"model", "variant", "mixer", "budget", "context", "batch", "prefill_s", "tpot_ms", "tpot_bound_ms",
              "prefill_bound_s", "peak_gib", "device", "commit", "decode_tok_s", "oom", "kernels_per_step",
              "kernel_ms_per_step", "matmul_ms_per_step", "matmul_gbs"}


def test_bench_cli_runs_end_to_end_on_the_cpu(tmp_path):
    out = _cli("bench", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--contexts", "32,48",
               "--batches", "1,2", "--new-tokens", "3", "--repeats", "1", "--prefill-chunk", "20", "--mixer",
               "gated_deltanet", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["command"].startswith("hybridize bench --model tiny")
    assert run["peak_matmul_tflops"] > 0 and run["copy_bandwidth_gbs"] > 0
    assert run["hybrid_attention_layers"] == [3]  # 25% of 4 layers, uniform: the last of the group
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert isinstance(rows, list) and all(r["command"] == run["command"] for r in rows)
    assert {(r["variant"], r["batch"], r["context"]) for r in rows} == {
        (v, b, c) for v in ("hybrid", "teacher-engine", "teacher-hf") for b in (1, 2) for c in (32, 48)}
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert not r["oom"] and r["prefill_s"] > 0 and r["tpot_ms"] > 0 and r["decode_tok_s"] > 0
        assert r["prefill_bound_s"] > 0 and r["tpot_bound_ms"] > 0 and r["model"] == "tiny"
        assert r["mixer"] == ("gated_deltanet" if r["variant"] == "hybrid" else None)
        assert (r["cache_gib"] is None) == (r["variant"] == "teacher-hf")  # stock transformers: not our cache
        assert r["prefill_peak_gib"] is None and r["decode_peak_gib"] is None  # GPU-only figures
        assert r["kernels_per_step"] is None and r["matmul_gbs"] is None  # no kernels on the CPU
    # the hybrid's static cache is smaller than the teacher's at the same batch and context
    by = {(r["variant"], r["batch"], r["context"]): r for r in rows}
    for b in (1, 2):
        for c in (32, 48):
            assert by["hybrid", b, c]["cache_gib"] < by["teacher-engine", b, c]["cache_gib"]
        assert by["teacher-engine", b, 48]["cache_gib"] > by["teacher-engine", b, 32]["cache_gib"]
    # every row printed as measured, one line each
    assert sum(line.startswith(("hybrid ", "teacher-")) for line in out.stdout.splitlines()) == len(rows)
    assert (tmp_path / "latency.png").stat().st_size > 10_000

    out = _cli("bench", "--train", "--model", "tiny", "--device", "cpu", "--seq-len", "32", "--train-batch", "2",
               "--steps", "2", "--profile", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    train = json.loads((tmp_path / "train.json").read_text())
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"] and train["seq_len"] == 32
    assert train["command"].startswith("hybridize bench --train")
    # --profile: one more step, its operator time split by kind; a distillation step does matmuls, a softmax for the
    # KL and an AdamW update, and the shares add up to the whole
    prof = train["profile"]
    assert prof["clock"] == "operator self CPU time" and prof["total_ms"] > 0
    assert {"matmul", "softmax / loss (KL)", "optimizer"} <= set(prof["by_category"]), prof["by_category"]
    assert abs(sum(c["share"] for c in prof["by_category"].values()) - 1) < 1e-9
    assert 0 < prof["busy_share_of_median_step"] and prof["top"][0]["ms"] >= prof["top"][-1]["ms"]
    assert "where the time goes (operator self CPU time" in out.stdout


def test_bench_measures_fused_projections_side_by_side(tmp_path):
    out = _cli("bench", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--contexts", "32",
               "--new-tokens", "2", "--repeats", "1", "--variants", "hybrid,hybrid-fused,teacher-engine-fused",
               "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert set(rows) == {"hybrid", "hybrid-fused", "teacher-engine-fused"}
    assert rows["hybrid-fused"]["mixer"] == "lightning" and rows["teacher-engine-fused"]["budget"] == "1.0"
    # the same model and cache; only the projections' matmuls differ
    assert rows["hybrid-fused"]["cache_gib"] == rows["hybrid"]["cache_gib"]
    assert rows["hybrid-fused"]["tpot_bound_ms"] == rows["hybrid"]["tpot_bound_ms"]


def test_bench_plain_variants_stay_unfused_where_generate_would_fuse():
    """generate fuses on CUDA by default (decode_fusion); the bench's plain variants measure the unfused projections
    beside the -fused ones, so they turn it off."""
    import hybridize.bench.inference as bench

    models = bench.build_models("tiny", 0.25, "lightning")
    for variant, fusion in [("hybrid", False), ("teacher-engine", False), ("hybrid-fused", True),
                            ("teacher-engine-fused", True)]:
        runner = bench._Runner(variant, models, torch.device("cpu"), torch.float32, 64)
        assert runner.model.decode_fusion is fusion, variant


def test_bench_user_errors_are_one_line(capsys, tmp_path):
    from hybridize.cli import main

    for args, needle in ((["--variants", "hybrid,vllm"], "variants must be a non-empty subset"),
                         (["--budget", "9"], "budget must be a fraction"),
                         (["--model", "qwen9"], "model must be a built-in shape"),
                         (["--contexts", "32,0"], "contexts must be a non-empty list of positive integers")):
        code = main(["bench", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert code == 2, err
        assert needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("mixer", ["gla", "hgrn", "mamba2"])
def test_roofline_counts_agree_with_the_model(mixer):
    """Two independent counts: the weights the FLOP count multiplies == the blocks' Linear weights (gates included),
    and the KV / state bytes a decode step reads == what the mixers say their state takes (linear states read and
    written): for a matrix state (GLA), HGRN's vector and Mamba-2's extra projections."""
    from hybridize.bench import roofline
    from hybridize.bench.inference import build_models

    models = build_models("tiny", 0.5, mixer)
    for config in (models.teacher, models.hybrid):
        model = HybridForCausalLM(config)
        linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
        assert roofline._matmul_params(config) == linear
        state = model.state_size(100, batch_size=3, dtype=torch.bfloat16)
        kv = 3 * sum(layer.mixer.state_size(100, torch.bfloat16) for layer in model.model.layers
                     if config.layer_types[layer.mixer.layer_idx] != "linear_attention")
        assert roofline.decode_bytes(config, 3, 100, 0, torch.bfloat16) == kv + 2 * (state - kv)
    assert models.hybrid.layer_types.count("linear_attention") == 2


def test_roofline_counts_intra_layer_blocks_by_their_own_heads():
    """An intra-layer block multiplies both branches' projections and reads the KV of its attention groups only,
    plus its linear heads' state (read and written)."""
    from hybridize.bench import roofline

    for pattern in ("intra_concat", "intra_gate"):
        config = tiny_config(pattern, linear_conv_size=3)
        model = HybridForCausalLM(config)
        linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
        assert roofline._matmul_params(config) == linear
        state = model.state_size(100, batch_size=3, dtype=torch.bfloat16)
        kv = 0
        for layer in model.model.layers:
            mixer = layer.mixer
            attention = getattr(mixer, "attention", mixer if config.layer_types[mixer.layer_idx] != "linear_attention"
                                else None)
            if attention is not None:
                kv += 3 * attention.state_size(100, torch.bfloat16)
        assert roofline.decode_bytes(config, 3, 100, 0, torch.bfloat16) == kv + 2 * (state - kv)
        # the attention FLOPs of a block count its kept query heads (half of 4 here) within its window
        assert roofline._parts(config, 0)[0] == (2, None) and roofline._parts(config, 1)[0] == (2, 7)
        assert roofline._parts(config, 0)[1][1].linear_num_heads == 2


def test_generate_steps_are_what_the_graph_decoder_captures(monkeypatch):
    """On CUDA, generate hands each decode step of a static cache to our CUDA-graph decoder. Checked on the CPU: the
    cache counts as compileable (what generate asks before it uses the hook), and every one-token step generate
    makes would be captured: the only reason left for running it eagerly is that this machine has no GPU. (On
    transformers 5.17 the per-step arguments and a non-compileable linear layer once made every step eager.)"""
    from hybridize.models.graphs import CudaGraphDecoder

    model = _model("mixed")
    ids, mask = _left_padded([8, 3, 6])
    assert HybridStaticCache(model.config, 16, 3).is_compileable
    reasons = []
    original = CudaGraphDecoder.why_not_capturable

    def spy(self, input_ids, past_key_values, kwargs):
        reasons.append(original(self, input_ids, past_key_values, kwargs))
        return reasons[-1]

    monkeypatch.setattr(CudaGraphDecoder, "why_not_capturable", spy)
    monkeypatch.setattr(type(model), "_valid_auto_compile_criteria", lambda self, *a, **k: True)  # as on CUDA
    out = model.generate(ids, attention_mask=mask, cache_implementation="static", max_new_tokens=6, do_sample=False)
    steps = [r for r in reasons if r != "more than one new token"]
    assert len(steps) >= 5 and set(steps) == {"input_ids are not on a CUDA device"}, reasons
    assert torch.equal(out, model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False))


def test_deleting_a_model_frees_it_and_its_decode_step():
    """The model keeps its decode step (`get_compiled_call`) and the step refers back only weakly: `del model` frees
    the weights at once, not at the next full garbage collection. With a strong back-reference each earlier model
    of a `hybridize bench` run stayed on the GPU (3.2-3.6 GiB per Qwen3-1.7B-shaped variant, the H200 run
    of 2026-12-01) and inflated the next variants' peaks. A step whose model is gone says so."""
    import gc
    import weakref

    model = _model("mixed")
    step = model.get_compiled_call()
    assert step is model.get_compiled_call()
    cache = HybridStaticCache(model.config, 8, 1)
    with torch.no_grad():
        step(input_ids=torch.ones(1, 1, dtype=torch.long), past_key_values=cache, use_cache=True)  # eager on the CPU
    alive = weakref.ref(model)
    gc.disable()  # freed by reference counting alone, with no cycle for the collector to break
    try:
        del model
        assert alive() is None, "a reference cycle keeps the model (and its GPU memory) alive after del"
    finally:
        gc.enable()
    with pytest.raises(RuntimeError, match="model of this decode step was deleted"):
        step(input_ids=torch.ones(1, 1, dtype=torch.long), past_key_values=cache, use_cache=True)


def test_profile_categories_of_gpu_kernel_names_and_the_summary():
    """bench.profile: CUDA kernel names of the field fall into the category a reader expects (first match wins, so
    flash attention is not a matmul and fla's kernels are not copies); the summary orders categories by time, shares
    sum to 1, and a profile without time is an error."""
    from hybridize.bench.profile import OTHER, categorize, summarize

    expected = {
        "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_TNT": "matmul",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
        "cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_nn_align8": "matmul",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7": "attention",
        "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel": "attention",
        "_split_kernel": "attention",
        "chunk_fwd_kernel_h": "linear mixers (fla)",
        "chunk_gated_delta_rule_fwd_kernel_h_blockdim64": "linear mixers (fla)",
        "fused_recurrent_fwd_kernel": "linear mixers (fla)",
        "chunk_local_cumsum_vector_kernel": "linear mixers (fla)",
        "void (anonymous namespace)::softmax_warp_forward<float, float, float, 10, true>": "softmax / loss (KL)",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>": "softmax / loss (KL)",
        "void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "ncclDevKernel_AllReduce_Sum_bf16_RING_LL": "communication",
        "_rms_norm_kernel": "norms / rotary / activations",
        "_silu_mul_kernel": "norms / rotary / activations",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>": "copies / casts",
        "Memcpy DtoD (Device -> Device)": "copies / casts",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": OTHER,
        # (an H200 profile counted 20 ms of these as copies: "nocast" matched "cast")
        "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<float,"
        " float, float, at::native::binary_internal::MulFunctor<float>>>": OTHER,
        "void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda>": "copies / casts",
    }
    assert {n: categorize(n) for n in expected} == expected
    got = summarize([("nvjet_a", 600.0, 3), ("nvjet_b", 200.0, 1), ("chunk_fwd_kernel_o", 200.0, 2),
                     ("idle", 0.0, 9)], "kernel device time", top=2)
    assert got["total_ms"] == 1.0 and list(got["by_category"]) == ["matmul", "linear mixers (fla)"]
    assert got["by_category"]["matmul"] == {"ms": 0.8, "share": 0.8, "calls": 4}
    assert [t["name"] for t in got["top"]] == ["nvjet_a", "nvjet_b"]
    with pytest.raises(RuntimeError, match="recorded no time"):
        summarize([("x", 0.0, 1)], "kernel device time")


def test_train_bench_accumulates_micro_batches_per_optimizer_step(tmp_path):
    """--train-accum: a step is `accum` micro-batches then one optimizer update, as the distillation loop does with
    batch_size / micro_batch_size; tokens and FLOPs per step grow with it, the loss is the micro-batches' mean (the same
    batch each time here, so the same loss as one), and a bad value names the option."""
    from hybridize.bench import run_train_bench

    kw = dict(model="tiny", seq_len=16, batch=2, steps=1, warmup=0, device="cpu")
    one = run_train_bench(out=tmp_path / "a1", accum=1, **kw)
    two = run_train_bench(out=tmp_path / "a2", accum=2, **kw)
    assert two["accum"] == 2 and two["model_flops_per_step"] == 2 * one["model_flops_per_step"]
    assert two["tokens_per_s"] * two["step_s"] == pytest.approx(2 * 2 * 16)
    assert two["last_loss"] == pytest.approx(one["last_loss"], rel=1e-5), (two["last_loss"], one["last_loss"])
    assert one["optimizer"] == "AdamW (foreach)"  # fused on CUDA, as the loop
    with pytest.raises(ValueError, match="accum"):
        run_train_bench(out=tmp_path / "bad", accum=0, **kw)


def test_profile_counts_kernels_once_not_annotations_or_host_operators():
    """On CUDA a kernel's time is counted once: the host operator that launched it and a user annotation's GPU range
    spanning it ("Optimizer.step#AdamW.step": an H200 profile counted the optimizer's 38 ms twice, so the kernels summed
    to more than the step) are left out."""
    from types import SimpleNamespace

    from hybridize.bench.profile import _rows

    def evt(key, us, device_type, annotation=False):
        return SimpleNamespace(key=key, self_device_time_total=us, self_cpu_time_total=5.0, count=1,
                               device_type=f"DeviceType.{device_type}", is_user_annotation=annotation)

    events = [evt("multi_tensor_apply_kernel", 40.0, "CUDA"), evt("Optimizer.step#AdamW.step", 38.0, "CUDA", True),
              evt("aten::_fused_adamw_", 40.0, "CPU"), evt("nvjet_sm90", 100.0, "CUDA")]
    assert _rows(events, cuda=True) == [("multi_tensor_apply_kernel", 40.0, 1), ("nvjet_sm90", 100.0, 1)]
    # on the CPU there are no kernels: every operator's self CPU time, annotations included (self time excludes
    # children)
    assert [r[0] for r in _rows(events, cuda=False)] == [e.key for e in events]


def test_bench_profile_needs_train():
    from hybridize.cli import main

    with pytest.raises(SystemExit, match="--profile profiles a distillation step; add --train"):
        main(["bench", "--profile", "--device", "cpu"])


def test_profile_reread_of_the_committed_h200_profiles(capsys):
    """benchmarks/profile_reread.py on the committed H200 records (written before the double count was fixed): the
    AdamW annotation is dropped, so the kernels no longer sum to more than the step, the 'nocast' kernel moves out of
    copies / casts, and a kernel name with '#' in a lambda is not taken for an annotation."""
    from conftest import ROOT

    mod = load_script("benchmarks/profile_reread.py")
    path = ROOT / "results" / "bench" / "h200-train-profile" / "train-profile-lightning" / "train.json"
    record = json.loads(path.read_text())
    assert record["profile"]["total_ms"] > record["step_s"] * 1e3  # the recorded double count
    r = mod.reread(record)
    assert 0 < r["kernel_ms"] < r["step_ms"], r
    assert r["kernel_ms"] == pytest.approx(record["profile"]["total_ms"] - 37.595277)
    assert r["by_category"]["copies / casts"] < record["profile"]["by_category"]["copies / casts"]["ms"] - 19
    assert sum(r["by_category"].values()) == pytest.approx(r["kernel_ms"])
    lambda_kernel = "void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>::{lambda()#3}"
    assert not mod.ANNOTATION.fullmatch(lambda_kernel)
    mod.main([str(path)])
    assert "of the step" in capsys.readouterr().out


def test_bench_puts_several_mixers_beside_one_teacher_run(tmp_path):
    """`--mixer hgrn,mamba2`: a hybrid row per mixer, the teacher's rows once; HGRN's vector state is the smaller
    cache. An unknown name is refused in one line before anything runs."""
    out = _cli("bench", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--contexts", "32",
               "--new-tokens", "2", "--repeats", "1", "--variants", "hybrid,teacher-engine", "--mixer", "hgrn,mamba2",
               "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert sorted((r["variant"], r["mixer"]) for r in rows) == [("hybrid", "hgrn"), ("hybrid", "mamba2"),
                                                                 ("teacher-engine", None)]
    cache = {r["mixer"]: r["cache_gib"] for r in rows}
    assert cache["hgrn"] < cache["mamba2"] < cache[None]
    bad = _cli("bench", "--model", "tiny", "--mixer", "hgrn,mamba3", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown mixer mamba3; allowed: lightning" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_bench_fusion_intra_adds_the_intra_layer_hybrid_of_the_same_share(tmp_path):
    """`--fusion intra`: the intra-layer hybrid (every layer keeps the same share of its KV-head groups) beside the
    inter-layer hybrid and the teacher. At one share both keep the same KV-head groups' caches and the same number of
    linear heads, so their caches are equal."""
    out = _cli("bench", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--contexts", "48",
               "--new-tokens", "2", "--repeats", "1", "--fusion", "intra", "--budget", "0.5", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert set(rows) == {"hybrid", "hybrid-intra", "teacher-engine", "teacher-hf"}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["hybrid_attention_layers"] == [1, 3] and len(run["hybrid_intra_kv_groups"]) == 4
    assert rows["hybrid-intra"]["cache_gib"] == pytest.approx(rows["hybrid"]["cache_gib"])
    assert rows["hybrid-intra"]["cache_gib"] < rows["teacher-engine"]["cache_gib"]
    assert rows["hybrid-intra"]["mixer"] == "lightning" and rows["hybrid-intra"]["tpot_ms"] > 0


@pytest.mark.parametrize("pattern", ["mixed", "linear_variants"])
def test_decode_at_context_counts_every_byte_of_the_cache_and_decodes_past_it(pattern):
    """The demo's decode measurement: a step runs with the cache marked full up to the context, and the bytes it
    reports are the model's state size at the cache's length (KV buffers and every linear state)."""
    from hybridize.bench.decode import decode_at_context

    model = HybridForCausalLM(tiny_config(pattern, sliding=False)).eval()
    row = decode_at_context(model, 40, steps=2, warmup=1, repeats=1)
    assert row["context"] == 40 and row["ms_per_token"] > 0
    slots = 40 + 1 + 2
    assert abs(row["cache_bytes"] - model.state_size(slots, dtype=torch.float32)) <= 64, row  # + the step counters
    with pytest.raises(ValueError, match="context must be a positive number"):
        decode_at_context(model, 0)


def test_bench_largest_batch_and_throughput_table_on_the_cpu(tmp_path):
    """`--largest-batch` with a memory cap (required on the CPU): per variant and context a row of the largest batch
    whose try stayed under the cap, measured in full, with the tries that found it: the batch found fits, the one
    above it was tried and did not, and no batch that fit is larger. The throughput table (printed, and in run.json)
    has tokens/s at each batch and at the largest, and the hybrid's ratio to the teacher-engine."""
    out = _cli("bench", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--contexts", "32,64",
               "--batches", "1,2", "--new-tokens", "2", "--repeats", "1", "--variants", "hybrid,teacher-engine",
               "--largest-batch", "--gpu-memory", "0.004", "--prefill-chunk", "16", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())
    largest = {(r["variant"], r["context"]): r for r in rows if r.get("largest_batch")}
    assert set(largest) == {(v, c) for v in ("hybrid", "teacher-engine") for c in (32, 64)}
    for (variant, context), r in largest.items():
        tries = {t["batch"]: t for t in r["largest_batch_tries"]}
        assert not r["oom"] and r["batch"] > 2 and r["tpot_ms"] > 0, r
        assert tries[r["batch"]]["fits"] and not tries[r["batch"] + 1]["fits"]
        assert max(b for b, t in tries.items() if t["fits"]) == r["batch"]
        # a try (the prefill's last chunks over a filled cache) peaks where the full measurement does
        assert [t["batch"] for t in r["largest_batch_full_tries"]] == [r["batch"]]
        assert all((t["peak_gib"] <= 0.004) == t["fits"] for t in tries.values())
        assert r["peak_gib"] <= 0.004
    for variant in ("hybrid", "teacher-engine"):  # a longer context leaves room for fewer sequences
        assert largest[variant, 64]["batch"] < largest[variant, 32]["batch"]
    table = json.loads((tmp_path / "run.json").read_text())["throughput"]
    entry = {(e["variant"], e["context"]): e for e in table}
    for (variant, context), r in largest.items():
        e = entry[variant, context]
        assert e["largest_batch"] == r["batch"] and e["largest_tok_s"] == r["decode_tok_s"]
        assert set(e["tok_s"]) == {"1", "2"} and all(v > 0 for v in e["tok_s"].values())
    ratio = entry["hybrid / teacher-engine", 32]
    assert ratio["largest_tok_s"] == pytest.approx(entry["hybrid", 32]["largest_tok_s"]
                                                   / entry["teacher-engine", 32]["largest_tok_s"])
    assert "largest that fits" in out.stdout and f"(B={largest['hybrid', 32]['batch']})" in out.stdout
    # the latency plot keeps to the --batches rows
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def test_bench_largest_batch_on_the_cpu_needs_a_cap(capsys, tmp_path):
    from hybridize.cli import main

    code = main(["bench", "--device", "cpu", "--model", "tiny", "--largest-batch", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "largest_batch off CUDA needs gpu_memory (--gpu-memory GIB" in err
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--device", "cpu", "--model", "tiny", "--gpu-memory", "0", "--out", str(tmp_path)])
    assert exit.value.code == 2 and "--gpu-memory: must be a number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("start", [1, 3, 64, 5000])
@pytest.mark.parametrize("answer", [0, 1, 2, 37, 64, 1000, 4096])
def test_largest_fitting_doubles_then_bisects(start, answer):
    from hybridize.bench.inference import largest_fitting

    best, tried = largest_fitting(lambda b: b <= answer, start=start, limit=4096)
    assert best == answer
    assert all(fit == (b <= answer) for b, fit in tried.items())
    assert len(tried) <= 2 * 13 + 1  # doubling and bisection: logarithmic in the limit
    if answer < 4096:
        assert (answer + 1) in tried and (answer == 0 or answer in tried)


def test_kernel_count_per_step_from_profiler_events():
    """Kernels per step: the device's kernel events over the profiled steps, copies and memsets left out, host
    events not counted; their time split by category (our GEMV counts as matmul)."""
    from types import SimpleNamespace

    from hybridize.bench.profile import kernel_summary, kernels_per_call

    def evt(name, us, device_type="CUDA"):
        return SimpleNamespace(name=name, device_time_total=us, device_type=f"DeviceType.{device_type}")

    events = [evt("_gemv_kernel", 30.0), evt("_sum_splits_kernel", 2.0), evt("_split_kernel", 10.0),
              evt("Memcpy DtoD (Device -> Device)", 5.0), evt("Memset (Device)", 1.0),
              evt("cudaGraphLaunch", 9.0, "CPU"), evt("gemv2T_kernel_val<int, int, __nv_bfloat16>", 40.0),
              evt("_rms_norm_kernel", 4.0)] * 2
    s = kernel_summary(events, calls=2)
    assert s["kernels"] == 5 and s["kernel_ms"] == pytest.approx(0.086)
    assert s["by_category"] == pytest.approx({"matmul": 0.072, "attention": 0.010,
                                              "norms / rotary / activations": 0.004})
    assert list(s["by_name"]) == ["gemv2T_kernel_val<int, int, __nv_bfloat16>", "_gemv_kernel", "_split_kernel",
                                  "_rms_norm_kernel", "_sum_splits_kernel"]  # one launch each per call: by time
    assert s["by_name"]["_gemv_kernel"] == pytest.approx({"launches": 1, "ms": 0.030})
    few = kernel_summary(events + [evt("_rms_norm_kernel", 4.0)] * 4, calls=2, top=1)
    assert list(few["by_name"]) == ["_rms_norm_kernel", "other"]
    assert few["by_name"]["_rms_norm_kernel"] == pytest.approx({"launches": 3, "ms": 0.012})
    assert few["by_name"]["other"] == pytest.approx({"launches": 4, "ms": 0.082})
    assert sum(v["launches"] for v in few["by_name"].values()) == few["kernels"]
    assert kernel_summary([evt("cudaGraphLaunch", 9.0, "CPU")], 1) is None
    assert kernels_per_call(lambda: None, 3, torch.device("cpu")) is None


def test_bench_prefills_never_hold_two_caches(monkeypatch):
    """The prefills of one row (a warm-up and the timed repeats) each allocate a static cache; the previous one is
    freed first, so a row's peak is one cache. (A kept output held the previous cache: at 512K the teacher-engine
    needed two 56 GiB caches at once and ran out of memory on an 80 GB H100.)"""
    import gc
    import weakref

    import hybridize.bench.inference as bench

    live = []
    real = bench.HybridStaticCache

    def tracked(*args, **kwargs):
        gc.collect()
        assert not any(ref() is not None for ref in live), "a previous prefill's cache is still alive"
        cache = real(*args, **kwargs)
        live.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(bench, "HybridStaticCache", tracked)
    models = bench.build_models("tiny", 0.25, "lightning")
    runner = bench._Runner("teacher-engine", models, torch.device("cpu"), torch.float32, 16)
    peaks = {"matmul_flops": 1e12, "copy_bytes": 1e10}
    row = bench._measure(runner, models, 2, 40, 2, 1, 3, peaks, {"device": "cpu", "commit": "x"}, 0.25, "lightning")
    assert not row["oom"] and len(live) == 4 and row["kernels_per_step"] is None


def test_bench_recognises_out_of_memory_behind_another_error():
    """An out-of-memory error inside a CUDA-graph capture surfaces as the error the capture's end raises while it
    unwinds; the bench still records the row as out of memory, and re-raises anything else."""
    from hybridize.bench.inference import _is_oom

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as err:
        assert _is_oom(err)
    assert _is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not _is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.parametrize("try_fits, full_fits, found", [(40, 40, 40), (40, 37, 37), (40, 3, 3), (1, 0, 0), (5, 0, 0)])
def test_largest_batch_is_one_whose_full_measurement_fits(try_fits, full_fits, found):
    """The short tries find a batch; when its full measurement (warm-up prefill, more steps, the profiler) does not
    fit, the largest batch below it whose full measurement fits is the row, with every full measurement recorded."""
    from types import SimpleNamespace

    from hybridize.bench.inference import LARGEST_TRY_STEPS, _largest_batch_row, _MemoryCap

    cap = _MemoryCap(torch.device("cpu"), 1.0)

    def measure(batch, context, **kw):
        short = kw.get("new_tokens") == LARGEST_TRY_STEPS
        limit = try_fits if short else full_fits
        return dict(batch=batch, oom=batch > limit, peak_gib=min(1.0, batch / 1000), tpot_ms=1.0)

    runner = SimpleNamespace(device=torch.device("cpu"), hf=True)
    row = _largest_batch_row(runner, measure, 64, cap)
    assert row["largest_batch"] and row["batch"] == max(found, 1)
    assert row["oom"] == (found == 0)
    tries = {t["batch"]: t["fits"] for t in row["largest_batch_tries"]}
    assert max(b for b, f in tries.items() if f) == try_fits
    full = {t["batch"]: t["fits"] for t in row["largest_batch_full_tries"]}
    assert full[try_fits] == (try_fits <= full_fits)
    assert all(f == (b <= full_fits) for b, f in full.items())
    if found:
        assert full[found] and (found == try_fits or not full.get(found + 1, False))
        assert (found + 1) in full or found == try_fits
    assert len(full) <= 2 + 2 * math.ceil(math.log2(try_fits + 1)), full  # the search below is logarithmic


@pytest.mark.parametrize("variant", ["hybrid", "teacher-engine"])
def test_largest_batch_try_prefills_the_last_chunks_at_the_whole_prefills_peak(variant):
    """`_Runner.prefill(tail=True)`, a largest-batch try's prefill: only the last chunks run (from the one before the
    last full chunk), over a cache whose earlier slots count as filled; the cache holds the whole context, decoding
    continues from it, and the peak (the CPU's allocation events) is the whole prefill's within a few scalars' bytes,
    at a context that ends on a chunk's end and at one that does not."""
    from hybridize.bench import profile
    from hybridize.bench.inference import _Runner, build_models

    runner = _Runner(variant, build_models("tiny", 0.5, "lightning"), torch.device("cpu"), torch.float32, 16)
    ran = []
    prefill = runner.model.prefill
    runner.model.prefill = lambda ids, **kw: ran.append(ids.shape[1]) or prefill(ids, **kw)
    for T, start in ((70, 32), (64, 32), (20, 0)):  # chunks of 16: 70 ends in a part-chunk, 64 on a chunk's end
        ids = runner.prompt(3, T)
        ran.clear()
        peaks, caches = {}, {}
        for tail in (False, True):
            caches[tail], peaks[tail] = profile.host_peak_bytes(lambda: runner.prefill(ids, 4, tail=tail))
        assert ran == [T, T - start]
        print(f"{variant} T={T}: whole prefill peak {peaks[False]} B, tail {peaks[True]} B")
        assert abs(peaks[True] - peaks[False]) <= 64, (T, peaks)  # scalars' bytes apart, of ~300 KB
        for cache in caches.values():
            assert cache.get_seq_length() == T
        assert runner.decode(caches[True], 3, T, steps=2, warmup=1) > 0
