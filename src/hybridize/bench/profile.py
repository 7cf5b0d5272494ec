"""Where a step's time goes: one call under `torch.profiler`, its time split by kind of work.

`hybridize bench --train --profile` uses it to say what bounds distillation MFU. On CUDA it sums the kernels'
device time; on the CPU the operators' self time (there are no kernels). Each kernel or operator falls into one
category by its name (`CATEGORIES`, first match wins), so that "matmul 55%, linear mixers 20%, loss 10%, ..." can be
read beside the MFU: the matmul share is what a perfect matmul library could speed up; the rest is what bounds MFU
from the other side.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

# (category, pattern over the lower-cased kernel / operator name); order matters: first match wins
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("communication", r"nccl|all_reduce|allreduce|reduce_scatter|all_gather"),
    ("optimizer", r"adam|foreach|multi_tensor|fused_sgd|clip_grad|_amp_foreach"),
    # (_split_kernel / _combine_kernel: our decode-attention kernel, hybridize.kernels)
    ("attention", r"flash|fmha|attention|sdpa|_efficient_attention|cudnn.*fprop|cudnn.*bprop|_split_kernel|"
                  r"_combine_kernel"),
    # fla's Triton kernels (chunked / recurrent linear attention, gates, cumsums) and their wrappers
    ("linear mixers (fla)", r"chunk_|fused_recurrent|recurrent_fwd|recurrent_bwd|cumsum|l2norm|wy_fast|solve_tril|"
                            r"prepare_wy|gated_delta|simple_gla"),
    ("softmax / loss (KL)", r"softmax|logsumexp|kl_div|cross_entropy|nll_loss|log_softmax"),
    # (_gemv_kernel / _sum_splits_kernel: our split-K GEMV, hybridize/mixers/triton/gemv.py)
    ("matmul", r"gemm|gemv|nvjet|cutlass|xmma|sm\d+_.*tn|sm\d+_.*nt|cublas|"
               r"aten::(mm|addmm|bmm|baddbmm|matmul|linear)\b|aten::_?addmm|mkldnn.*(linear|matmul)|splitk|"
               r"_sum_splits_kernel"),
    ("norms / rotary / activations", r"rms_?norm|layer_?norm|rotary|rope|silu|gelu|swiglu|sigmoid|rsqrt|aten::pow"),
    # ("nocast" is not a cast: PyTorch's gpu_kernel_impl_nocast<BinaryFunctor<...>> is an elementwise op)
    ("copies / casts", r"copy|(?<!no)cast|_to_copy|aten::to\b|contiguous|\bcat\b|concat|clone|index|gather|scatter|"
                       r"fill|zero|memset|memcpy|transpose|permute|view|reshape"),
)
OTHER = "other elementwise / reductions"


def categorize(name: str) -> str:
    """The category of a kernel or operator name (`CATEGORIES`, first match), else `OTHER`."""
    low = name.lower()
    for category, pattern in CATEGORIES:
        if re.search(pattern, low):
            return category
    return OTHER


def _self_time_us(evt, cuda: bool) -> float:
    if cuda:
        return float(getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0))
    return float(evt.self_cpu_time_total)


def profile_call(fn: Callable[[], object], device: torch.device, top: int = 20) -> dict:
    """Run `fn()` once under the profiler; return {"clock", "total_ms", "by_category": {name: {"ms", "share",
    "calls"}}, "top": [{"name", "category", "ms", "calls"}, ...]} (categories by time, descending)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    return summarize(_rows(prof.key_averages(), cuda), "kernel device time" if cuda else "operator self CPU time", top)


def _rows(events, cuda: bool) -> list[tuple[str, float, int]]:
    """(name, microseconds, calls) of the profiler's averaged events that are work, each counted once."""
    rows = []
    for evt in events:
        # on CUDA only the kernels (and memcpy / memset) count: a CPU-side operator's "self device time" is the time of
        # the kernels it launched, which would count them twice; so would a user annotation's GPU range (e.g.
        # "Optimizer.step#AdamW.step", which spans the optimizer's kernels), as PyTorch's own table knows
        if cuda and not str(getattr(evt, "device_type", "")).endswith("CUDA"):
            continue
        if cuda and getattr(evt, "is_user_annotation", False):
            continue
        rows.append((evt.key, _self_time_us(evt, cuda), evt.count))
    return rows


def summarize(rows: list[tuple[str, float, int]], clock: str, top: int = 20) -> dict:
    """`profile_call`'s record from (name, microseconds, calls) rows."""
    rows = [r for r in rows if r[1] > 0]
    total = sum(us for _, us, _ in rows)
    if total <= 0:
        raise RuntimeError("the profiler recorded no time: nothing ran, or this build of torch has no profiler")
    by: dict[str, dict] = {}
    for name, us, count in rows:
        c = by.setdefault(categorize(name), {"ms": 0.0, "share": 0.0, "calls": 0})
        c["ms"] += us / 1e3
        c["calls"] += count
    for c in by.values():
        c["share"] = c["ms"] * 1e3 / total
    heavy = sorted(rows, key=lambda r: -r[1])[:top]
    return {"clock": clock, "total_ms": total / 1e3,
            "by_category": dict(sorted(by.items(), key=lambda kv: -kv[1]["ms"])),
            "top": [{"name": n[:120], "category": categorize(n), "ms": us / 1e3, "calls": k} for n, us, k in heavy]}


def format_profile(p: dict) -> str:
    """A few lines for the terminal: each category's share of the profiled time."""
    lines = [f"where the time goes ({p['clock']}, {p['total_ms']:.1f} ms in all):"]
    lines += [f"  {name:<32} {c['share']:6.1%}  {c['ms']:9.2f} ms  {c['calls']:6d} calls"
              for name, c in p["by_category"].items()]
    return "\n".join(lines)


def kernels_per_call(fn: Callable[[], object], calls: int, device: torch.device) -> dict | None:
    """`calls` calls of `fn` under the profiler, on CUDA: {"kernels": kernels launched per call, "kernel_ms": their
    summed device time per call, "by_category": {category: ms per call}}. Kernels replayed from a CUDA graph count
    one by one, as launched ones do; copies and memsets are not kernels. None on the CPU, where operators run on the
    host and launch nothing, and None when the profiler recorded no kernel (a build without CUPTI)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
    return kernel_summary(prof.events(), calls)


def kernel_summary(events, calls: int, top: int = 40) -> dict | None:
    """`kernels_per_call`'s record from the profiler's events (each with `name`, `device_type` and
    `device_time_total` in microseconds). `by_name`: each kernel name's launches and ms per call, most launched first
    (the `top` names; the rest summed under "other"): what a step's kernel count is made of."""
    kernels = [(e.name, float(getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)))
               for e in events
               if str(getattr(e, "device_type", "")).endswith("CUDA") and not e.name.startswith(("Memcpy", "Memset"))]
    if not kernels:
        return None
    by: dict[str, float] = {}
    for name, us in kernels:
        by[categorize(name)] = by.get(categorize(name), 0.0) + us / 1e3 / calls
    names: dict[str, list[float]] = {}
    for name, us in kernels:
        entry = names.setdefault(name[:120], [0.0, 0.0])
        entry[0] += 1 / calls
        entry[1] += us / 1e3 / calls
    ranked = sorted(names.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    by_name = {name: {"launches": n, "ms": ms} for name, (n, ms) in ranked[:top]}
    if len(ranked) > top:
        by_name["other"] = {"launches": sum(n for _, (n, _) in ranked[top:]), "ms": sum(ms for _, (_, ms) in ranked[top:])}
    return {"kernels": len(kernels) / calls, "kernel_ms": sum(us for _, us in kernels) / 1e3 / calls,
            "by_category": dict(sorted(by.items(), key=lambda kv: -kv[1])), "by_name": by_name}


def host_peak_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn(), the largest number of bytes the CPU allocator held during the call beyond what it held before), from
    the profiler's allocation events: what a call adds to host memory at its peak (on the CPU there is no
    `max_memory_allocated`)."""
    import itertools

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
             and e.device_type() == torch.autograd.DeviceType.CPU]
    return out, max([0, *itertools.accumulate(sizes)])


__all__ = ["CATEGORIES", "OTHER", "categorize", "format_profile", "host_peak_bytes", "kernel_summary",
           "kernels_per_call", "profile_call", "summarize"]
