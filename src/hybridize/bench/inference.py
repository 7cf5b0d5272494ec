"""`hybridize bench`: prefill latency, time per output token (TPOT), decode throughput and peak memory of a hybrid
against its teacher, by context length and batch size, each figure beside its roofline bound.

Variants (same shape, random weights: speed does not depend on their values):
  hybrid          our engine, attention kept in `budget` of the layers (placed like the `uniform` selector), the
                  mixer elsewhere, HyPE on;
  teacher-engine  our engine with every layer attention (RoPE, the teacher's own semantics), same decode path;
  hybrid-intra    an intra-layer hybrid of the same attention share: every layer keeps that share of its KV-head
                  groups as attention (`uniform_groups`) and runs the mixer on the other heads (`--fusion intra`
                  adds it to the default set);
  hybrid-fused, teacher-engine-fused
                  the same with `model.fuse_projections()` (one matmul for q|k|v|gate and for gate|up; not in the
                  default set);
  hybrid-gemv, teacher-engine-gemv
                  fused projections, and the decode step's matmuls through our split-K GEMV (`model.decode_gemv`);
                  beside the -fused variants the GEMV is the only difference (not in the default set);
  hybrid-steps, teacher-engine-steps
                  fused projections, and the decode step's one-kernel paths (`model.decode_steps`: a linear mixer's
                  token, the attention prologue, add + norm); beside the -fused variants those are the only
                  difference (not in the default set);
  teacher-hf      the stock transformers model of the shape (Qwen3 / Llama class, SDPA) in its fastest stock setting:
                  prefill with its dynamic cache, decode with its `StaticCache` and `torch.compile(mode=
                  "reduce-overhead")` on CUDA (eager on the CPU, where compiling would dominate a test run).

How each figure is taken:
  prefill_s   median wall time of a prefill of batch x context tokens (ours: `model.prefill` into the static cache
              the decode then uses, `prefill_chunk` tokens at a time; teacher-hf: one forward, dynamic cache,
              last-position logits), after one warm-up run.
  tpot_ms     wall time per decode step over `new_tokens` greedy steps after `warmup_steps` untimed ones. Ours
              decode right after the measured prefill (the cache holds the real prompt; on CUDA the steps replay a
              CUDA graph); teacher-hf decodes from a `StaticCache` whose length is set to the context over random
              contents (for speed only the cache length matters).
  peak_gib    peak allocated GPU memory over prefill and decode (None on the CPU); `prefill_peak_gib` and
              `decode_peak_gib` split it by phase (the decode phase starts with the prefilled cache allocated), and
              `cache_gib` is what the static cache itself holds. Each prefill of the median runs after the previous
              one's cache is freed: the peak is one cache, never two.
  kernels_per_step, kernel_ms_per_step
              on CUDA, `PROFILED_STEPS` more decode steps (graph replays for ours) under torch.profiler: the kernels
              each step launches and their summed device time; `matmul_ms_per_step` is the matmul kernels' share and
              `matmul_gbs` the weight bytes a step reads over that time (the bandwidth the batch-1 matmuls reach).
              None on the CPU, where operators run on the host and launch no kernels.
A variant that runs out of memory at some context is recorded there (`oom: true`) and not run at longer ones.

`largest_batch=True` (`--largest-batch`) also finds, per variant and context, the largest batch whose prefill and
decode fit: doubling from a batch the memory left after the weights suggests, then bisection, each try a short
measurement (the prefill's last two or three chunks over a cache of the row's length whose earlier slots count as
filled: the whole prefill's peak at their cost, `_Runner.prefill(tail=True)`; teacher-hf the whole prefill; then
`LARGEST_TRY_STEPS` decode steps) with memory freed in between. A chunk of the prefill is batch x `prefill_chunk`
tokens: give large batches a small `prefill_chunk`, or the chunk's activations rather than the cache set the batch
that fits. The batch found is then measured in full and
recorded as a row with `largest_batch: true` and the tries (`largest_batch_tries`: batch, fits, peak); where the full
measurement (a warm-up prefill, more steps, the profiler) does not fit though its try did, the largest batch below
whose full measurement fits is searched for and recorded instead (`largest_batch_full_tries`). What "fits"
means: on CUDA, no out-of-memory error within the device's memory, or within `gpu_memory` GiB (`--gpu-memory`,
enforced by the allocator: an H200 can stand in for an 80 GB H100); on the CPU the measured peak of the try (the
weights plus what the try allocated, from the profiler's allocation events) is at most `gpu_memory` GiB, which is
required there (the CPU has no allocator limit to run into).

The throughput table (`throughput_table`, printed at the end and written to run.json as `throughput`): decode
tokens/s per variant and context at each measured batch and at the largest batch that fits, and each hybrid variant's
ratio to the teacher-engine of the same setting.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..convert.transfer import student_config
from ..provenance import device_name, git_commit
from ..models import HybridConfig, HybridForCausalLM, HybridStaticCache
from ..models.shapes import SHAPES, shape_config
from ..names import LINEAR_MIXER_NAMES
from ..selection.uniform import resolve_budget, uniform_groups, uniform_layers
from . import profile, roofline
from .variants import ALL_VARIANTS, DTYPE_NAMES, FUSED, GEMV, STEPS, VARIANTS

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
LINEAR_MIXERS = LINEAR_MIXER_NAMES


@dataclass
class Models:
    name: str
    teacher: HybridConfig  # every layer attention, the shape's own semantics
    hybrid: HybridConfig
    hf_config: object  # the stock transformers config of the same shape
    hybrid_intra: HybridConfig | None = None  # the same attention share as KV-head groups of every layer


def load_shape(model: str) -> tuple[str, dict]:
    """Config fields of `model`: a built-in shape name, a JSON file of `HybridConfig` fields, or a checkpoint folder
    whose config.json is a Llama / Qwen2 / Qwen3 / Mistral teacher (its weights are not loaded)."""
    path = Path(model)
    if model in SHAPES:
        return model, shape_config(model)
    if path.is_file() and path.suffix == ".json":
        fields = json.loads(path.read_text())
        if not isinstance(fields, dict):
            raise ValueError(f"--model {model}: expected a JSON object of HybridConfig fields")
        return path.stem, fields
    if path.is_dir() and (path / "config.json").exists():
        from transformers import AutoConfig

        from ..convert.teacher import teacher_config

        fields = teacher_config(AutoConfig.from_pretrained(path)).to_diff_dict()
        for key in ("model_type", "transformers_version", "architectures", "linear_mixers"):
            fields.pop(key, None)
        return path.name, fields
    raise ValueError(f"model must be a built-in shape {sorted(SHAPES)}, a .json file of config fields or a checkpoint "
                     f"folder with config.json, got {model!r}")


def build_models(model: str, budget: float | int | str, mixer: str) -> Models:
    if mixer not in LINEAR_MIXERS:
        raise ValueError(f"mixer must be one of {list(LINEAR_MIXERS)}, got {mixer!r}")
    name, fields = load_shape(model)
    teacher = HybridConfig(**fields)
    L = teacher.num_hidden_layers
    k = resolve_budget(budget, L)
    hybrid = student_config(teacher, uniform_layers(L, k), mixer)
    G = teacher.num_key_value_heads
    intra = None
    if k < L and G > 1:  # k of L layers' worth of groups, spread over every layer
        intra = student_config(teacher, [], mixer, kv_groups=uniform_groups(L, G, k * G))
    return Models(name, teacher, hybrid, hf_config(teacher), intra)


def hf_config(config: HybridConfig):
    """The stock transformers config of a teacher shape: Qwen3 when it has q/k norms, else Llama."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                  head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
                  rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings,
                  rope_parameters=dict(config.rope_parameters))
    if config.qk_norm:
        hf = Qwen3Config(attention_bias=config.attention_bias, **common)
    else:
        hf = LlamaConfig(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias, **common)
    hf._attn_implementation = "sdpa"
    return hf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


SEED = 0  # the random weights every variant is drawn from (prompts are seeded by their context length); in each row
PROFILED_STEPS = 3  # decode steps under the profiler per row (CUDA): kernels per step
LARGEST_TRY_STEPS = 2  # decode steps of a largest-batch try (its graph capture included)
LARGEST_BATCH_LIMIT = 4096  # the largest batch the search tries


def _instantiate(config, device, dtype, hf: bool):
    torch.manual_seed(SEED)
    if hf:
        from transformers import AutoModelForCausalLM

        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        with torch.device(device):
            model = HybridForCausalLM(config).to(dtype)
    return model.eval()


class _Runner:
    """Prefill and decode of one variant (one model in memory) at a given batch and context."""

    def __init__(self, variant: str, models: Models, device: torch.device, dtype: torch.dtype, prefill_chunk: int):
        self.variant, self.device, self.dtype, self.prefill_chunk = variant, device, dtype, prefill_chunk
        self.hf = variant == "teacher-hf"
        self.is_hybrid = variant.startswith("hybrid")
        self.config = models.hybrid if self.is_hybrid else models.teacher  # what the bounds are counted on
        if variant == "hybrid-intra":
            if models.hybrid_intra is None:
                raise ValueError("hybrid-intra needs an attention share below 1 and a teacher with more than one "
                                 "KV-head group")
            self.config = models.hybrid_intra
        self.model = _instantiate(models.hf_config if self.hf else self.config, device, dtype, self.hf)
        if not self.hf:  # the plain variants stay unfused (generate would fuse on CUDA), the -fused ones fuse now
            self.model.decode_fusion = variant in FUSED + GEMV + STEPS
            self.model.decode_gemv = variant in GEMV
            self.model.decode_steps = variant in STEPS
        if variant in FUSED + GEMV + STEPS:
            self.model.fuse_projections()
        self.weight_bytes = roofline.weight_bytes(self.model)
        self._compiled = None
        self.kernels = None  # the last decode's `profile.kernels_per_call` record (CUDA)

    def prompt(self, batch: int, context: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(context)
        return torch.randint(1, self.config.vocab_size, (batch, context), generator=g).to(self.device)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, new_tokens: int, tail: bool = False) -> HybridStaticCache | None:
        """Prefill `ids`; returns our static cache, room left for `new_tokens`, or None for teacher-hf (it decodes from
        a cache of its own). Nothing else of the call outlives it: an output kept across the median's prefills held
        the previous cache while the next one was allocated, two caches at once.
        `tail` (ours): only the prefill's last chunks run, over a cache whose earlier slots count as filled (their
        contents are the cache's zeros): from the chunk before the last full one, so that the last full chunk (the
        largest working set: a whole chunk attending over the most) runs with the previous chunk's output still held,
        as in the whole prefill, then the part-chunk after it if any. The same cache and the same peak as the whole
        prefill (each chunk's working set is freed before the next) at two or three chunks' cost."""
        if self.hf:
            self.model(ids, use_cache=True, logits_to_keep=1)
            return None
        B, T = ids.shape
        cache = HybridStaticCache(self.config, T + new_tokens, B, self.dtype, self.device)
        # a tail starts at the chunk before the last full one
        skip = max(0, (T // self.prefill_chunk - 2) * self.prefill_chunk) if tail else 0
        if skip:
            cache.begin(B, skip, None)
            cache.advance(skip)
        self.model.prefill(ids[:, skip:], cache=cache, chunk_size=self.prefill_chunk)
        return cache

    @torch.no_grad()
    def decode(self, cache, batch: int, context: int, steps: int, warmup: int, profiled: int = 0) -> float:
        """Seconds per step of `steps` greedy steps after `warmup` untimed ones; then, on CUDA, `profiled` more steps
        under the profiler (`self.kernels`: `profile.kernels_per_call`, None on the CPU)."""
        if self.hf:
            step, cache = self._hf_decoder(batch, context, steps + warmup + profiled)
        else:
            step = self.model.get_compiled_call()  # CUDA-graph replay on CUDA, eager elsewhere
        token = torch.ones(batch, 1, dtype=torch.long, device=self.device)

        def one():
            nonlocal token
            logits = step(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(-1, keepdim=True)

        def run():
            for _ in range(steps):
                one()

        try:
            for _ in range(warmup):
                one()
            replays = getattr(step, "replays", 0)
            seconds = _timed(run, self.device) / steps
            self.graph_replays = getattr(step, "replays", 0) - replays  # timed steps that replayed our CUDA graph
            self.eager_reason = getattr(step, "eager_reason", None)
            self.kernels = profile.kernels_per_call(one, profiled, self.device) if profiled else None
        finally:
            if not self.hf:
                step.release()  # the graph holds this cache: let the next measurement start from free memory
        return seconds

    def _hf_decoder(self, batch: int, context: int, steps: int):
        from transformers import StaticCache

        config = self.model.config
        cache = StaticCache(config=config, max_cache_len=context + steps)
        cache.early_initialization(batch_size=batch, num_heads=config.num_key_value_heads, head_dim=config.head_dim,
                                   dtype=self.dtype, device=self.device)
        for layer in cache.layers:  # a full cache over random contents: only its length matters for speed
            layer.keys.normal_()
            layer.values.normal_()
            layer.cumulative_length.fill_(context)
        if self.device.type != "cuda":
            return self.model, cache
        if self._compiled is None:  # transformers' own decode setting: static cache + reduce-overhead compile
            # one static graph per (batch, cache length), as generate gets, and room for every one the sweep needs
            # (past the recompile limit dynamo would silently fall back to eager)
            torch._dynamo.config.automatic_dynamic_shapes = False
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(256, getattr(torch._dynamo.config, name)))
            self._compiled = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True)
        return self._compiled, cache


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _positive_list(name: str, values) -> list[int]:
    values = list(values)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    return values


def run_bench(model: str = "qwen3-1.7b", out: str | Path = "results/bench", *, budget: float | int | str = 0.25,
              mixer: str | list[str] = "lightning", contexts=(4096, 8192, 16384, 32768, 65536, 131072), batches=(1,),
              variants=VARIANTS, device: str | None = None, dtype: str = "bfloat16", new_tokens: int = 32,
              warmup_steps: int = 4, repeats: int = 3, prefill_chunk: int = 16384, largest_batch: bool = False,
              gpu_memory: float | None = None, commit: str | None = None, command: str | None = None) -> list[dict]:
    """Measure every (variant, batch, context), print each row as it is measured, write `out/summary.json` and the
    plots (`out/latency.png`). Returns the rows. See the module docstring for what each figure means. `mixer` may
    name several mixers: each hybrid variant then runs once per mixer, beside one run of each teacher variant.
    `largest_batch`: also find and measure the largest batch that fits at each context, within `gpu_memory` GiB
    (default on CUDA: the device's memory; required on the CPU)."""
    mixers = [mixer] if isinstance(mixer, str) else list(mixer)
    bad = [m for m in mixers if m not in LINEAR_MIXERS]
    if bad or not mixers:
        raise ValueError(f"mixer must be one or more of {list(LINEAR_MIXERS)}, got {mixers!r}")
    contexts = sorted(_positive_list("contexts", contexts))
    batches = _positive_list("batches", batches)
    for name, value in (("new_tokens", new_tokens), ("repeats", repeats), ("prefill_chunk", prefill_chunk)):
        _positive_list(name, [value])
    bad = [v for v in variants if v not in ALL_VARIANTS]
    if bad or not variants:
        raise ValueError(f"variants must be a non-empty subset of {list(ALL_VARIANTS)}, got {list(variants)!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if gpu_memory is not None and (isinstance(gpu_memory, bool) or not isinstance(gpu_memory, (int, float))
                                   or not gpu_memory > 0):
        raise ValueError(f"gpu_memory must be a number of GiB > 0 or None, got {gpu_memory!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no CUDA device")
    if largest_batch and device.type != "cuda" and gpu_memory is None:
        raise ValueError("largest_batch off CUDA needs gpu_memory (--gpu-memory GIB: the memory a batch must fit in; "
                         "the CPU has no allocator limit to run into)")
    torch_dtype = DTYPES[dtype]
    by_mixer = {m: build_models(model, budget, m) for m in mixers}
    models = by_mixer[mixers[0]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peaks = roofline.measure_peaks(device, torch_dtype)
    header = dict(command=command or "hybridize.bench.run_bench(...)", device=_device_name(device),
                  commit=commit or git_commit(short=True), torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d %H:%M"),
                  dtype=dtype, peak_matmul_tflops=peaks["matmul_flops"] / 1e12,
                  copy_bandwidth_gbs=peaks["copy_bytes"] / 1e9, new_tokens=new_tokens,
                  hybrid_attention_layers=models.hybrid.attention_layers, gpu_memory_gib=gpu_memory)
    if "hybrid-intra" in variants and models.hybrid_intra is not None:
        header["hybrid_intra_kv_groups"] = models.hybrid_intra.attention_kv_heads
    print(f"bench {models.name} on {header['device']}: matmul peak {header['peak_matmul_tflops']:.1f} TFLOP/s, copy "
          f"bandwidth {header['copy_bandwidth_gbs']:.0f} GB/s; hybrid keeps attention in layers "
          f"{header['hybrid_attention_layers']}", flush=True)
    rows: list[dict] = []
    runs = [(v, m) for v in variants for m in (mixers if v.startswith("hybrid") else [mixers[0]])]
    total = len(runs) * (len(batches) + int(largest_batch)) * len(contexts)
    bar = tqdm(total=total, desc="bench", unit="run", file=sys.stderr)
    cap = _MemoryCap(device, gpu_memory)
    try:
        for variant, mixer_name in runs:
            runner = _Runner(variant, by_mixer[mixer_name], device, torch_dtype, prefill_chunk)
            # a largest-batch try runs fewer steps and prefills than a row, over a cache of the row's length
            room = new_tokens + warmup_steps + (PROFILED_STEPS if device.type == "cuda" else 0)
            measure = lambda batch, context, **kw: _measure(  # noqa: E731
                runner, by_mixer[mixer_name], batch, context, kw.get("new_tokens", new_tokens),
                kw.get("warmup", warmup_steps), kw.get("repeats", repeats), peaks, header, budget, mixer_name,
                room=room, profiled=kw.get("profiled", PROFILED_STEPS), host_peak=kw.get("host_peak", False),
                tail=kw.get("tail", False))
            for batch in batches:
                for context in contexts:
                    row = measure(batch, context)
                    rows.append(row)
                    bar.update(1)
                    tqdm.write(_format(row), file=sys.stdout)
                    _write(out, header, rows)
                    if row["oom"]:
                        bar.update(len(contexts) - contexts.index(context) - 1)
                        break
            for context in contexts if largest_batch else []:
                row = _largest_batch_row(runner, measure, context, cap)
                rows.append(row)
                bar.update(1)
                tqdm.write(_format(row), file=sys.stdout)
                _write(out, header, rows)
            del runner, measure
            gc.collect()  # one model in memory: nothing of this variant may stay (the peaks of the next are its own)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        cap.release()
    bar.close()
    header["throughput"] = throughput_table(rows)
    _write(out, header, rows)
    print(format_throughput(header["throughput"]), flush=True)
    from .plot import plot_latency

    plot_latency([r for r in rows if not r.get("largest_batch")], out / "latency.png",
                 title=f"{models.name}, {dtype}, {header['device']}")
    return rows


class _MemoryCap:
    """`gpu_memory` GiB as the memory a run may use: on CUDA the allocator's per-process fraction (allocations past it
    raise out-of-memory, as on a smaller GPU; undone by `release`), on the CPU the figure a try's measured peak is
    held to. `bytes` is None when there is no cap (CUDA: the device's memory decides)."""

    def __init__(self, device: torch.device, gib: float | None):
        self.device = device
        self.bytes = None if gib is None else int(gib * 2**30)
        self.total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        if self.bytes is not None and self.total is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.bytes / self.total), device)

    def budget(self) -> int | None:
        """Bytes a run may use: the cap, else the CUDA device's memory (None on the CPU without a cap)."""
        return self.bytes if self.bytes is not None else self.total

    def fits(self, row: dict) -> bool:
        if row["oom"]:
            return False
        if self.device.type == "cuda" or self.bytes is None:
            return True
        return row["peak_gib"] * 2**30 <= self.bytes

    def release(self) -> None:
        if self.bytes is not None and self.total is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)


def largest_fitting(fits: Callable[[int], bool], start: int = 1, limit: int = LARGEST_BATCH_LIMIT
                    ) -> tuple[int, dict[int, bool]]:
    """The largest batch b <= limit with fits(b), for a `fits` under which every batch below one that fits fits too:
    doubling from `start` until a batch does not fit (or `limit`), then bisection between the last batch that fit
    and the first that did not. Returns (b, {batch: fits(batch)} in the order tried); b is 0 when 1 does not fit."""
    tried: dict[int, bool] = {}

    def ok(b: int) -> bool:
        if b not in tried:
            tried[b] = bool(fits(b))
        return tried[b]

    lo, hi = 0, None  # lo fits (0 trivially), hi does not
    b = max(1, min(start, limit))
    if ok(b):
        lo = b
        while lo < limit:
            b = min(2 * lo, limit)
            if not ok(b):
                hi = b
                break
            lo = b
        if hi is None:
            return lo, tried
    else:
        hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, tried


def _search_start(runner: _Runner, context: int, cap: _MemoryCap) -> int:
    """Where the doubling starts: the largest power of two at most half the batches whose caches would fill the memory
    left after the weights. At real shapes the cache is most of a batch's memory and this start fits, which saves the
    small tries; where it does not (activations dominate: tiny shapes), the bisection runs below it."""
    budget = cap.budget()
    if budget is None or runner.hf:
        return 1
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    per_sequence = runner.model.state_size(context + LARGEST_TRY_STEPS + 1, 1, runner.dtype)
    room = (budget - weights) / max(1, per_sequence)
    return 1 << max(0, int(math.log2(max(1.0, room / 2))))


def _largest_batch_row(runner: _Runner, measure, context: int, cap: _MemoryCap) -> dict:
    """Find the largest batch that fits at `context` (`largest_fitting` over short tries), measure it in full and
    return that row, marked `largest_batch` with the tries. When even batch 1 does not fit, the row of that try."""
    tries: list[dict] = []
    host_peak = runner.device.type != "cuda"

    def fits(batch: int) -> bool:
        row = measure(batch, context, new_tokens=LARGEST_TRY_STEPS, warmup=1, repeats=0, profiled=0,
                      host_peak=host_peak, tail=not runner.hf)
        tries.append(dict(batch=batch, fits=cap.fits(row), peak_gib=row["peak_gib"], row=row))
        return tries[-1]["fits"]

    best, _ = largest_fitting(fits, _search_start(runner, context, cap))
    full: dict[int, dict] = {}  # batch -> its full measurement

    def fits_in_full(batch: int) -> bool:
        full[batch] = row = measure(batch, context, host_peak=host_peak)
        row["oom"] = not cap.fits(row)
        return not row["oom"]

    if best and not fits_in_full(best):
        # the full measurement (warm-up prefill, more steps, the profiler) needs more than its short try did, or
        # finds the memory more fragmented: the largest batch below it whose full measurement fits
        start = max(1, best - max(1, best // 32))
        best = largest_fitting(fits_in_full, start=start, limit=best - 1)[0] if best > 1 else 0
    if best:
        row = full[best]
    else:
        row = full.get(1) or next(t["row"] for t in tries if t["batch"] == 1)
    for t in tries:
        del t["row"]
    row.update(largest_batch=True, largest_batch_tries=tries,
               largest_batch_full_tries=[dict(batch=b, fits=not r["oom"], peak_gib=r["peak_gib"])
                                         for b, r in full.items()])
    return row


def throughput_table(rows: list[dict]) -> list[dict]:
    """Decode tokens/s per (variant, mixer, context): at each measured batch (None where it ran out of memory) and at
    the largest batch that fits; then, for each hybrid variant, its ratio to the teacher-engine of the same setting
    (hybrid-fused to teacher-engine-fused, hybrid-gemv to teacher-engine-gemv, hybrid-steps to teacher-engine-steps,
    hybrid and hybrid-intra to
    teacher-engine) at the batches both have."""
    table: dict[tuple, dict] = {}
    for r in rows:
        key = (r["variant"], r["mixer"], r["context"])
        entry = table.setdefault(key, dict(variant=r["variant"], mixer=r["mixer"], context=r["context"], tok_s={},
                                           largest_batch=None, largest_tok_s=None))
        if r.get("largest_batch"):
            if not r["oom"]:
                entry["largest_batch"], entry["largest_tok_s"] = r["batch"], r["decode_tok_s"]
        else:
            entry["tok_s"][str(r["batch"])] = None if r["oom"] else r["decode_tok_s"]
    entries = list(table.values())
    for e in list(entries):
        if not e["variant"].startswith("hybrid"):
            continue
        teacher = "teacher-engine" + e["variant"].removeprefix("hybrid").removeprefix("-intra")
        t = table.get((teacher, None, e["context"]))
        if t is None:
            continue
        ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
        entries.append(dict(variant=f"{e['variant']} / {teacher}", mixer=e["mixer"], context=e["context"],
                            tok_s={b: ratio(v, t["tok_s"].get(b)) for b, v in e["tok_s"].items() if b in t["tok_s"]},
                            largest_batch=None, largest_tok_s=ratio(e["largest_tok_s"], t["largest_tok_s"])))
    return entries


def format_throughput(entries: list[dict]) -> str:
    """The throughput table for the terminal: a line per variant and context; ratios as x."""
    batches = sorted({int(b) for e in entries for b in e["tok_s"]})
    head = f"{'decode tokens/s':<38} {'context':>8}" + "".join(f" {'B=' + str(b):>9}" for b in batches)
    lines = [head + f" {'largest that fits':>20}"]
    for e in sorted(entries, key=lambda e: (e["context"], " / " in e["variant"], e["variant"], e["mixer"] or "")):
        ratio = " / " in e["variant"]
        cell = lambda v: "-" if v is None else (f"{v:.2f}x" if ratio else f"{v:.0f}")  # noqa: E731
        name = e["variant"] if e["mixer"] is None else f"{e['variant']} ({e['mixer']})"
        line = f"  {name:<36} {e['context']:>8}"  # indented: the rows measured above start at the margin
        line += "".join(f" {cell(e['tok_s'][str(b)]) if str(b) in e['tok_s'] else '':>9}" for b in batches)
        largest = cell(e["largest_tok_s"])
        if e["largest_batch"]:
            largest += f" (B={e['largest_batch']})"
        lines.append(line + f" {largest:>20}")
    return "\n".join(lines)


def _is_oom(err: BaseException | None) -> bool:
    """Out of memory, from the allocator or from a library that allocates its own workspace (cuBLAS); also when it
    is the cause or context of another error (a CUDA-graph capture that ends while out-of-memory unwinds it)."""
    seen = 0
    while err is not None and seen < 8:
        text = str(err)
        if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _measure(runner: _Runner, models: Models, batch: int, context: int, new_tokens: int, warmup: int, repeats: int,
             peaks: dict, header: dict, budget, mixer: str, room: int | None = None, profiled: int = PROFILED_STEPS,
             host_peak: bool = False, tail: bool = False) -> dict:
    """One row: `repeats` prefills (after a warm-up one; `repeats=0`: the one prefill, timed with its warm-up costs,
    as a largest-batch try runs), `warmup` + `new_tokens` decode steps, then `profiled` steps under the profiler
    (CUDA only), over a cache of `context` + `room` tokens (default: the steps it runs).
    `host_peak` (the CPU): `peak_gib` is measured too, as the weights plus the most the prefill and decode allocated
    at once (`profile.host_peak_bytes`)."""
    device = runner.device
    config = runner.config
    row = dict(model=models.name, variant=runner.variant, mixer=mixer if runner.is_hybrid else None,
               budget=str(budget) if runner.is_hybrid else "1.0", context=context, batch=batch,
               prefill_s=None, tpot_ms=None, decode_tok_s=None,
               prefill_bound_s=roofline.prefill_flops(config, batch, context) / peaks["matmul_flops"],
               tpot_bound_ms=1e3 * roofline.decode_bytes(config, batch, context, runner.weight_bytes, runner.dtype)
               / peaks["copy_bytes"],
               peak_gib=None, prefill_peak_gib=None, decode_peak_gib=None, cache_gib=None, kernels_per_step=None,
               kernel_ms_per_step=None, matmul_ms_per_step=None, matmul_gbs=None, oom=False,
               device=header["device"], commit=header["commit"], seed=SEED)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    profiled = profiled if cuda else 0
    room = new_tokens + warmup + profiled if room is None else room

    def run():
        ids = runner.prompt(batch, context)
        cache = None
        times = []
        for i in range(repeats + 1):  # the first run warms up (kernel autotuning, allocator)
            cache = None  # the previous prefill's cache is freed before the next one allocates its own
            _sync(device)
            start = time.perf_counter()
            cache = runner.prefill(ids, room, tail=tail)
            _sync(device)
            if i or not repeats:
                times.append(time.perf_counter() - start)
        row["prefill_s"] = statistics.median(times)
        if cache is not None:
            row["cache_gib"] = _cache_bytes(cache) / 2**30
        if cuda:
            row["prefill_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        tpot = runner.decode(cache, batch, context, new_tokens, warmup, profiled)
        if cuda:
            row["decode_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["tpot_ms"] = 1e3 * tpot
        if not runner.hf:  # ours: how many timed steps replayed the CUDA graph (all of them on CUDA)
            row["graph_replays"], row["eager_reason"] = runner.graph_replays, runner.eager_reason
        row["decode_tok_s"] = batch / tpot
        if runner.kernels is not None:
            matmul_ms = runner.kernels["by_category"].get("matmul", 0.0)
            row.update(kernels_per_step=runner.kernels["kernels"], kernel_ms_per_step=runner.kernels["kernel_ms"],
                       matmul_ms_per_step=matmul_ms, kernels_by_name=runner.kernels["by_name"],
                       matmul_gbs=runner.weight_bytes / (matmul_ms * 1e-3) / 1e9 if matmul_ms else None)

    try:
        if host_peak:
            _, added = profile.host_peak_bytes(run)
            weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
            row["peak_gib"] = (weights + added) / 2**30
        else:
            run()
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not _is_oom(err):
            raise
        row["oom"] = True
    finally:
        if cuda:
            row["peak_gib"] = max(torch.cuda.max_memory_allocated(device) / 2**30, row["prefill_peak_gib"] or 0.0)
            torch.cuda.empty_cache()
    return row


def _cache_bytes(cache) -> int:
    """Bytes of every tensor a static cache holds (KV buffers, recurrent and conv states, its counters)."""
    seen, total = set(), 0
    tensors = [cache.length, cache.valid, cache.real]
    for layer in cache.layers:
        tensors += [getattr(layer, "keys", None), getattr(layer, "values", None)]
        for states in ("recurrent_states", "conv_states"):
            tensors += list(getattr(layer, states, {}).values())
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _format(row: dict) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    status = "  OUT OF MEMORY" if row["oom"] else ""
    if row.get("kernels_per_step") is not None:
        status = f"  {row['kernels_per_step']:.0f} kernels/step ({row['kernel_ms_per_step']:.3f} ms){status}"
    if row.get("largest_batch"):
        status += "  <- largest batch that fits"
    return (f"{row['variant']:<15} B={row['batch']:<3} ctx={row['context']:<7} prefill {f(row['prefill_s'], '.4f')} s "
            f"(bound {row['prefill_bound_s']:.4f})  TPOT {f(row['tpot_ms'], '.3f')} ms (bound "
            f"{row['tpot_bound_ms']:.3f})  {f(row['decode_tok_s'], '.0f')} tok/s  peak {f(row['peak_gib'], '.2f')} GiB"
            f"{status}")


def _write(out: Path, header: dict, rows: list[dict]) -> None:
    """Rewritten after every row, so that a run cut short keeps what it measured. `summary.json` is the list of rows
    (each naming its device and commit), `run.json` the run's command, peaks and versions."""
    for name, data in (("run.json", header), ("summary.json", [{**r, "command": header["command"]} for r in rows])):
        tmp = out / f"{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(out / name)
