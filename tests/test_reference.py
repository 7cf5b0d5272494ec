"""The two CPU references of each recurrence agree: chunked == recurrent in outputs, final states and gradients,
with initial states, odd lengths, partial chunks and packed documents."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from hybridize.mixers import kernels, reference
from conftest import assert_close

B, H, K, V = 2, 3, 6, 5


def _inputs(kind: str, T: int, batch: int = B):
    q = torch.randn(batch, T, H, K)
    k = torch.randn(batch, T, H, K)
    v = torch.randn(batch, T, H, V)
    if kind == "gla_head":
        gates = (F.logsigmoid(torch.randn(batch, T, H) + 2.0),)
    elif kind == "gla_channel":
        gates = (F.logsigmoid(torch.randn(batch, T, H, K)) / 4,)
    else:  # gated delta rule: unit q/k as the kernels normalise them
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        gates = (F.logsigmoid(torch.randn(batch, T, H) + 2.0), torch.rand(batch, T, H))
    return q, k, v, gates


FORMS = {
    "gla_head": (reference.gla_chunk, reference.gla_recurrent),
    "gla_channel": (reference.gla_chunk, reference.gla_recurrent),
    "gated_delta_rule": (reference.gated_delta_rule_chunk, reference.gated_delta_rule_recurrent),
}


@pytest.mark.parametrize("kind", list(FORMS))
@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (16, 8), (37, 16)])
def test_chunk_equals_recurrent_with_gradients(kind, T, chunk):
    chunk_fn, rec_fn = FORMS[kind]
    q, k, v, gates = _inputs(kind, T)
    h0 = torch.randn(B, H, K, V)
    leaves = [q, k, v, *gates, h0]
    for x in leaves:
        x.requires_grad_(True)
    o_c, s_c = chunk_fn(q, k, v, *gates, scale=0.4, initial_state=h0, chunk_size=chunk)
    o_r, s_r = rec_fn(q, k, v, *gates, scale=0.4, initial_state=h0)
    assert_close(o_c, o_r, f"{kind} output")
    assert_close(s_c, s_r, f"{kind} final state")
    w_o, w_s = torch.randn_like(o_r), torch.randn_like(s_r)
    g_c = torch.autograd.grad((o_c * w_o).sum() + (s_c * w_s).sum(), leaves)
    g_r = torch.autograd.grad((o_r * w_o).sum() + (s_r * w_s).sum(), leaves)
    for name, a, b in zip(["dq", "dk", "dv", *[f"dgate{i}" for i in range(len(gates))], "dh0"], g_c, g_r):
        assert_close(a, b, f"{kind} {name}", scale=5)


@pytest.mark.parametrize("kind", list(FORMS))
def test_packed_documents_do_not_leak(kind):
    """A packed batch (cu_seqlens) equals its documents run apart, each from its own initial state."""
    chunk_fn, rec_fn = FORMS[kind]
    lengths = [5, 11, 1, 8]
    q, k, v, gates = _inputs(kind, sum(lengths), batch=1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    h0 = torch.randn(len(lengths), H, K, V)
    for fn in (chunk_fn, rec_fn):
        o, s = fn(q, k, v, *gates, scale=0.4, initial_state=h0, cu_seqlens=cu)
        for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            o_n, s_n = rec_fn(q[:, a:b], k[:, a:b], v[:, a:b], *(g[:, a:b] for g in gates),
                              scale=0.4, initial_state=h0[n : n + 1])
            assert_close(o[:, a:b], o_n, f"{fn.__name__} doc {n} output")
            assert_close(s[n : n + 1], s_n, f"{fn.__name__} doc {n} state")


def _assert_packed_equals_apart(packed, alone, state, cu, leaves, names, label):
    """`packed()` -> (out, final states) over all documents at once; `alone(a, b, n)` the same for document n (tokens
    a:b) run by itself, called only for non-empty documents (an empty one keeps its state `state(n)`). Outputs, final
    states and the gradients to `leaves` (named `names`) must agree."""
    o, s = packed()
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    apart = [alone(a, b, n) if b > a else (o.detach()[:, a:b], state(n)) for n, (a, b) in enumerate(bounds)]
    o_apart, s_apart = torch.cat([x for x, _ in apart], dim=1), torch.cat([x for _, x in apart])
    assert_close(o, o_apart, f"{label} packed output")
    assert_close(s, s_apart, f"{label} packed final states")
    w_o, w_s = torch.randn_like(o), torch.randn_like(s)
    together = torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), leaves)
    apart_grads = torch.autograd.grad((o_apart * w_o).sum() + (s_apart * w_s).sum(), leaves)
    for name, a, b in zip(names, together, apart_grads):
        assert_close(a, b, f"{label} packed {name}")


@pytest.mark.parametrize("kind", list(FORMS))
def test_packed_chunk_equals_each_document_chunked_alone(kind):
    """The chunked forms over packed documents (all documents' chunks in one batch, the state passed for all documents
    side by side) give the outputs, final states and gradients of the same form run on each document alone: documents
    of several chunks, a partial last chunk, one token, none."""
    chunk_fn = FORMS[kind][0]
    lengths, C = [37, 5, 0, 16, 70, 1, 33], 16
    q, k, v, gates = _inputs(kind, sum(lengths), batch=1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    h0 = torch.randn(len(lengths), H, K, V)
    leaves = [q, k, v, *gates, h0]
    for x in leaves:
        x.requires_grad_(True)
    _assert_packed_equals_apart(
        lambda: chunk_fn(q, k, v, *gates, scale=0.4, initial_state=h0, cu_seqlens=cu, chunk_size=C),
        lambda a, b, n: chunk_fn(q[:, a:b], k[:, a:b], v[:, a:b], *(x[:, a:b] for x in gates), scale=0.4,
                                 initial_state=h0[n : n + 1], chunk_size=C),
        lambda n: h0[n : n + 1], cu, leaves, ["dq", "dk", "dv", *[f"dgate{i}" for i in range(len(gates))], "dh0"],
        kind)


def test_recurrence_definitions_by_hand():
    """One head, K = V = 1: the recurrences reduce to scalar formulas we can write out."""
    q = torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    k = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    v = torch.tensor([3.0, 1.0, 0.5]).view(1, 3, 1, 1)
    g = torch.log(torch.tensor([0.5, 0.8, 0.9])).view(1, 3, 1)
    o, s = reference.gla_recurrent(q, k, v, g, scale=1.0)
    S, expect = 0.0, []
    for t in range(3):
        S = [0.5, 0.8, 0.9][t] * S + [0.5, -1.0, 2.0][t] * [3.0, 1.0, 0.5][t]
        expect.append([1.0, 2.0, -1.0][t] * S)
    assert_close(o.flatten(), torch.tensor(expect), "gla by hand")
    # delta rule with unit keys: S <- a S + beta (v - a S) for k = 1
    k1 = torch.ones(1, 3, 1, 1)
    beta = torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1)
    o, s = reference.gated_delta_rule_recurrent(q, k1, v, g, beta, scale=1.0)
    S, expect = 0.0, []
    for t in range(3):
        S = [0.5, 0.8, 0.9][t] * S
        S = S + [1.0, 0.5, 0.25][t] * ([3.0, 1.0, 0.5][t] - S)
        expect.append([1.0, 2.0, -1.0][t] * S)
    assert_close(o.flatten(), torch.tensor(expect), "delta rule by hand")


def test_causal_conv_matches_definition_and_carries_state():
    Bc, T, D, W = 2, 9, 5, 4
    x, w, bias = torch.randn(Bc, T, D), torch.randn(D, W), torch.randn(D)
    y, state = reference.causal_conv1d(x, w, bias, activation=None)
    xp = F.pad(x, (0, 0, W - 1, 0))
    expect = torch.stack([(xp[:, t : t + W] * w.T).sum(1) + bias for t in range(T)], dim=1)
    assert_close(y, expect, "conv output")
    assert_close(state, xp[:, -W:].transpose(1, 2), "conv state = last W inputs")
    # split in two calls with the carried state == one call
    y1, s1 = reference.causal_conv1d(x[:, :4], w, bias, activation=None)
    y2, _ = reference.causal_conv1d(x[:, 4:], w, bias, initial_state=s1, activation=None)
    assert_close(torch.cat([y1, y2], 1), y, "conv in two calls")


@pytest.mark.parametrize("with_state", [False, True])
def test_packed_causal_conv_equals_each_document_alone(with_state):
    """`causal_conv1d` over packed documents (one convolution over the documents laid out behind their own states)
    gives the outputs, final states and gradients of each document convolved alone: documents shorter than the
    window, one token, none."""
    lengths, D, W = [9, 2, 0, 1, 14, 3], 5, 4
    x, w, bias = torch.randn(1, sum(lengths), D), torch.randn(D, W), torch.randn(D)
    h0 = torch.randn(len(lengths), D, W) if with_state else None
    leaves = [x, w, bias] + ([h0] if with_state else [])
    for t in leaves:
        t.requires_grad_(True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    state = (lambda n: torch.zeros(1, D, W)) if h0 is None else (lambda n: h0[n : n + 1])
    _assert_packed_equals_apart(
        lambda: reference.causal_conv1d(x, w, bias, h0, cu, activation="silu"),
        lambda a, b, n: reference.causal_conv1d(x[:, a:b], w, bias, state(n), activation="silu"),
        state, cu, leaves, ["dx", "dweight", "dbias", "dh0"], "conv")


def test_dispatch_uses_torch_on_cpu_and_rejects_bad_backend():
    q, k, v, (g,) = _inputs("gla_head", 5)
    assert kernels.backend_for(q) == "torch"
    o_auto, _ = kernels.gla(q, k, v, g=g, scale=0.3)
    o_ref, _ = reference.gla_recurrent(q, k, v, g, scale=0.3)
    assert_close(o_auto, o_ref, "dispatch")
    with pytest.raises(ValueError, match="backend must be one of"):
        with kernels.force_backend("cuda-magic"):
            pass
    with pytest.raises(RuntimeError, match="needs CUDA"):
        with kernels.force_backend("fla"):
            kernels.gla(q, k, v, g=g, scale=0.3)
    with pytest.raises(ValueError, match="exactly one of g and g_gamma"):
        kernels.gla(q, k, v, scale=0.3)


def _no_fla(*args, **kwargs):
    raise AssertionError("fla's kernel was called")


@pytest.mark.parametrize("fla_backward", [False, True])
def test_gated_calls_that_need_gradients_leave_fla_where_it_has_no_backward(monkeypatch, fla_backward):
    """Where fla has no backward for its gated chunked ops (Hopper, Triton < 3.7.1), calls that need gradients run
    the PyTorch chunked form, with the reference's results; calls without gradients, ungated ones and a stack whose fla
    has the backward still go to fla (its kernels replaced here by a function that fails the test when called)."""
    monkeypatch.setattr(kernels, "backend_for", lambda x: "fla")
    monkeypatch.setattr(kernels, "_fla_backward_works", lambda op, device: fla_backward)
    monkeypatch.setattr(kernels, "_fla_gated_delta_rule", _no_fla)
    monkeypatch.setattr(kernels, "_fla_gla", _no_fla)
    q, k, v, (g, beta) = _inputs("gated_delta_rule", 13)
    _, _, _, (g_head,) = _inputs("gla_head", 13)
    q.requires_grad_(True)
    calls = {  # name -> (the call, what it must give when it runs the reference)
        "gated_delta_rule": (lambda: kernels.gated_delta_rule(q, k, v, g, beta, scale=0.4, mode="chunk"),
                             lambda: reference.gated_delta_rule_chunk(q, k, v, g, beta, scale=0.4)),
        "gla per-head g": (lambda: kernels.gla(q, k, v, g=g_head, scale=0.4, mode="chunk"),
                           lambda: reference.gla_chunk(q, k, v, g_head, scale=0.4)),
        "delta_rule fp32": (lambda: kernels.delta_rule(q, k, v, beta, scale=0.4, mode="chunk"),
                            lambda: reference.gated_delta_rule_chunk(q, k, v, torch.zeros_like(beta), beta, scale=0.4)),
    }
    for name, (call, expected) in calls.items():
        if fla_backward:
            with pytest.raises(AssertionError, match="fla's kernel was called"):
                call()
            continue
        o, s = call()
        o_ref, s_ref = expected()
        assert_close(o, o_ref, f"{name}: output")
        assert_close(s, s_ref, f"{name}: state")
        assert o.requires_grad, name
        with torch.no_grad(), pytest.raises(AssertionError, match="fla's kernel was called"):
            call()  # no gradients needed: fla's forward is fine
    with pytest.raises(AssertionError, match="fla's kernel was called"):  # Lightning / RetNet: no per-token decay
        kernels.gla(q, k, v, g_gamma=torch.full((H,), -0.1), scale=0.4, mode="chunk")


def _fake_fla_op(backward_error: str | None):
    """A stand-in for fla's chunked op: o = q * 2 forward; its backward raises `backward_error` if given."""

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q):
            return q * 2

        @staticmethod
        def backward(ctx, grad):
            if backward_error:
                raise RuntimeError(backward_error)
            return grad * 2

    return lambda q, k, v, **kw: (Op.apply(q), None)


@pytest.mark.parametrize("op,module,name", [("gated_delta_rule", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
                                            ("simple_gla", "fla.ops.simple_gla", "chunk_simple_gla")])
def test_fla_backward_probe_reads_a_refusal(monkeypatch, op, module, name):
    """The probe runs fla's op forward and backward once: fla's refusal (its message on Hopper with Triton 3.6) means
    False and one warning naming it; a backward that runs means True, silently."""
    import types
    import warnings

    probe = kernels._fla_backward_works.__wrapped__  # uncached
    refusal = "Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect results for gated chunk_bwd_dqkwg"
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{name: _fake_fla_op(refusal)}))
    with pytest.warns(RuntimeWarning, match=f"fla's chunked {op} has no backward here .*incorrect results"):
        assert probe(op, torch.device("cpu")) is False
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{name: _fake_fla_op(None)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe(op, torch.device("cpu")) is True


# HGRN: a vector state, h_t = exp(g_t) h_{t-1} + x_t (reference.hgrn_*), its own argument layout (x, g) and state (N, D)
D_HGRN = 7


def _hgrn_inputs(T: int, batch: int = B):
    return torch.randn(batch, T, D_HGRN), F.logsigmoid(torch.randn(batch, T, D_HGRN) + 1.0)


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (16, 8), (37, 16)])
def test_hgrn_chunk_equals_recurrent_with_gradients(T, chunk):
    x, g = _hgrn_inputs(T)
    h0 = torch.randn(B, D_HGRN)
    leaves = [x.requires_grad_(True), g.requires_grad_(True), h0.requires_grad_(True)]
    o_c, s_c = reference.hgrn_chunk(x, g, initial_state=h0, chunk_size=chunk)
    o_r, s_r = reference.hgrn_recurrent(x, g, initial_state=h0)
    assert_close(o_c, o_r, "hgrn output")
    assert_close(s_c, s_r, "hgrn final state")
    w_o, w_s = torch.randn_like(o_r), torch.randn_like(s_r)
    g_c = torch.autograd.grad((o_c * w_o).sum() + (s_c * w_s).sum(), leaves)
    g_r = torch.autograd.grad((o_r * w_o).sum() + (s_r * w_s).sum(), leaves)
    for name, a, b in zip(["dx", "dg", "dh0"], g_c, g_r):
        assert_close(a, b, f"hgrn {name}", scale=5)


def test_hgrn_packed_documents_do_not_leak_and_match_the_definition():
    lengths = [5, 11, 1, 8]
    x, g = _hgrn_inputs(sum(lengths), batch=1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    h0 = torch.randn(len(lengths), D_HGRN)
    for fn in (reference.hgrn_chunk, reference.hgrn_recurrent):
        o, s = fn(x, g, initial_state=h0, cu_seqlens=cu)
        for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            h = h0[n]
            for t in range(a, b):  # the definition, one step at a time
                h = g[0, t].exp() * h + x[0, t]
                assert_close(o[0, t], h, f"{fn.__name__} doc {n} step {t}")
            assert_close(s[n], h, f"{fn.__name__} doc {n} state")


def test_hgrn_packed_chunk_equals_each_document_chunked_alone():
    """HGRN's chunked form over packed documents (the documents side by side) gives the outputs, final states and
    gradients of the chunked form on each document alone: several chunks, a partial last chunk, one token, none."""
    lengths, C = [37, 5, 0, 16, 70, 1, 33], 16
    x, g = _hgrn_inputs(sum(lengths), batch=1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    h0 = torch.randn(len(lengths), D_HGRN)
    leaves = [x.requires_grad_(True), g.requires_grad_(True), h0.requires_grad_(True)]
    _assert_packed_equals_apart(
        lambda: reference.hgrn_chunk(x, g, initial_state=h0, cu_seqlens=cu, chunk_size=C),
        lambda a, b, n: reference.hgrn_chunk(x[:, a:b], g[:, a:b], initial_state=h0[n : n + 1], chunk_size=C),
        lambda n: h0[n : n + 1], cu, leaves, ["dx", "dg", "dh0"], "hgrn")


def test_delta_rule_is_the_gated_rule_without_decay():
    q, k, v, (_, beta) = _inputs("gated_delta_rule", 19)
    for mode in ("chunk", "recurrent"):
        o, s = kernels.delta_rule(q, k, v, beta, scale=0.4, mode=mode)
        o_g, s_g = kernels.gated_delta_rule(q, k, v, torch.zeros_like(beta), beta, scale=0.4, mode=mode)
        assert_close(o, o_g, f"delta rule {mode} output")
        assert_close(s, s_g, f"delta rule {mode} state")


# fla's own pure-PyTorch references (its naive.py files, which run on the CPU): each of our recurrences against the
# one fla keeps beside its kernel, including the fixed decays of RetNet (fla's retention reference).
def _fla_case(kind: str, T: int = 29):
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    from fla.ops.gla.naive import naive_recurrent_gla
    from fla.ops.hgrn.naive import naive_recurrent_hgrn
    from fla.ops.retention.naive import naive_retention
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    from hybridize.mixers.retnet import retnet_log_decay

    scale = K**-0.5
    h0 = torch.randn(B, H, K, V)
    if kind == "hgrn":
        x, g = _hgrn_inputs(T)
        h0 = torch.randn(B, D_HGRN)
        return naive_recurrent_hgrn(x, g, h0, True), reference.hgrn_chunk(x, g, initial_state=h0, chunk_size=8)
    if kind == "retention":  # no initial state in fla's reference; head-first layout
        q, k, v, _ = _inputs("gla_head", T)
        o = naive_retention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        ours = kernels.gla(q, k, v, g_gamma=retnet_log_decay(H), scale=scale, mode="chunk")[0]
        return (o, None), (ours, None)
    if kind == "delta_rule":  # fla's reference takes L2-normalised q, k, head-first, scale K^-1/2
        q, k, v, (_, beta) = _inputs("gated_delta_rule", T)
        o, s = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)), initial_state=h0)
        return (o.transpose(1, 2), s), kernels.delta_rule(q, k, v, beta, scale=scale, initial_state=h0, mode="chunk")
    if kind == "gated_delta_rule":
        q, k, v, (g, beta) = _inputs("gated_delta_rule", T)
        fla = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale, h0, True)
        return fla, reference.gated_delta_rule_chunk(q, k, v, g, beta, scale=scale, initial_state=h0, chunk_size=8)
    if kind == "gla_head":
        q, k, v, (g,) = _inputs("gla_head", T)
        return naive_recurrent_simple_gla(q, k, v, g, scale, h0, True), \
            reference.gla_chunk(q, k, v, g, scale=scale, initial_state=h0, chunk_size=8)
    q, k, v, (g,) = _inputs("gla_channel", T)
    return naive_recurrent_gla(q, k, v, g, h0, True), \
        reference.gla_chunk(q, k, v, g, scale=scale, initial_state=h0, chunk_size=8)


@pytest.mark.parametrize("kind", ["gla_head", "gla_channel", "gated_delta_rule", "delta_rule", "hgrn", "retention"])
def test_references_match_flas_naive_recurrences(kind):
    (o_fla, s_fla), (o, s) = _fla_case(kind)
    assert_close(o, o_fla, f"{kind} output vs fla")
    if s_fla is not None:
        assert_close(s, s_fla, f"{kind} final state vs fla")
