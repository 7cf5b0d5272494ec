"""`hybridize bench --train`: stage-2 distillation throughput and MFU at a given sequence length.

One step is what `pipeline.stages.distill` does: the teacher (every layer attention) runs forward without gradients,
the hybrid student runs forward and backward, the loss is `chunked_kl` over the full vocabulary, AdamW steps.
Weights are random (speed does not depend on them); on CUDA the student keeps fp32 master weights under bf16
autocast and the teacher runs in bf16, as in the stage.

MFU = model FLOPs / (step time x peak matmul rate), model FLOPs = 3 x student forward (forward + backward) +
teacher forward, each counted by `roofline.prefill_flops` with logits at every position. Recomputation
(checkpointing, the KL chunks' recompute) is not counted: MFU counts the model's work, not the hardware's.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..distill.losses import chunked_kl
from ..models import HybridForCausalLM
from . import roofline
from .profile import format_profile, profile_call
from ..provenance import git_commit
from .inference import DTYPES, SEED, _device_name, _positive_list, _sync, build_models


def run_train_bench(model: str = "qwen3-1.7b", out: str | Path = "results/bench", *, budget: float | int | str = 0.25,
                    mixer: str = "lightning", seq_len: int = 512, batch: int = 8, accum: int = 1, steps: int = 5,
                    warmup: int = 2, device: str | None = None, dtype: str = "bfloat16", kl_chunk_tokens: int = 1024,
                    commit: str | None = None, command: str | None = None, profile: bool = False) -> dict:
    """Time `steps` distillation steps after `warmup` ones; print and write `out/train.json`. Returns the record.
    A step is what the distillation loop does per optimizer step: `accum` micro-batches of `batch` sequences, each
    forward and backward under bf16 autocast (fp32 weights), then gradient clipping and AdamW, fused on CUDA as in the
    loop. The optimizer's cost does not grow with tokens, so more tokens per step (`accum`) spread it thinner.
    `profile`: one more step under `torch.profiler`, its time split by kind of work (`bench.profile`), in the record's
    `profile` (what bounds the MFU)."""
    for name, value in (("seq_len", seq_len), ("batch", batch), ("accum", accum), ("steps", steps),
                        ("kl_chunk_tokens", kl_chunk_tokens)):
        _positive_list(name, [value])
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    half = DTYPES[dtype]
    models = build_models(model, budget, mixer)
    peaks = roofline.measure_peaks(device, half)
    torch.manual_seed(SEED)
    with torch.device(device):
        teacher = HybridForCausalLM(models.teacher).to(half if cuda else torch.float32).eval()
        student = HybridForCausalLM(models.hybrid).float().train()
    # fused on CUDA as in the distillation loop (the foreach default took 43 ms of a 296 ms step on an H200)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=cuda)
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(1, models.teacher.vocab_size, (batch, seq_len), generator=g).to(device)

    def step() -> float:
        total = 0.0
        for _ in range(accum):
            with torch.autocast(device.type, dtype=half, enabled=cuda):
                with torch.no_grad():
                    t_hidden = teacher.model(ids, use_cache=False).last_hidden_state
                s_hidden = student.model(ids, use_cache=False).last_hidden_state
                loss = chunked_kl(s_hidden, t_hidden, student.lm_head, teacher.lm_head, kl_chunk_tokens) / accum
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in tqdm(range(warmup + steps), desc="train bench", unit="step", file=sys.stderr):
        _sync(device)
        start = time.perf_counter()
        loss = step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = batch * seq_len * accum
    flops = accum * (3 * roofline.prefill_flops(models.hybrid, batch, seq_len, all_logits=True)
                     + roofline.prefill_flops(models.teacher, batch, seq_len, all_logits=True))
    record = dict(command=command or "hybridize.bench.run_train_bench(...)", model=models.name, mixer=mixer,
                  budget=str(budget), seq_len=seq_len, batch=batch, accum=accum,
                  optimizer="AdamW (fused)" if cuda else "AdamW (foreach)",
                  step_s=seconds, tokens_per_s=tokens / seconds,
                  model_flops_per_step=flops, mfu=flops / seconds / peaks["matmul_flops"],
                  peak_matmul_tflops=peaks["matmul_flops"] / 1e12, last_loss=loss,
                  peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
                  device=_device_name(device), dtype=dtype if cuda else "float32",
                  commit=commit or git_commit(short=True), seed=SEED, date=time.strftime("%Y-%m-%d %H:%M"))
    if profile:
        record["profile"] = profile_call(step, device)
        # below 1: the device idles for part of a step (launch or host overhead), which no kernel can win back
        record["profile"]["busy_share_of_median_step"] = record["profile"]["total_ms"] / 1e3 / seconds
        print(format_profile(record["profile"]), flush=True)
    print(f"train {models.name} {mixer} seq {seq_len} x batch {batch} x accum {accum}: "
          f"{record['tokens_per_s']:.0f} tok/s, MFU {record['mfu']:.1%}, step {seconds:.3f} s, peak "
          f"{'-' if record['peak_gib'] is None else format(record['peak_gib'], '.2f')} GiB", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(record, indent=1))
    return record
