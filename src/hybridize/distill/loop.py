"""One training loop for every stage, readable top to bottom.

    result = train(name="distill", run_dir=..., model=student, param_groups=[...], loss_fn=fn, loader=loader,
                   recipe=recipe.distill, device=device)

Each step: `accum` micro-batches (loss / accum, backward), a finiteness check, clipping, AdamW, the LR schedule,
a metrics row (metrics.jsonl, TensorBoard when installed, the progress bar), and every `save_every` steps an atomic
checkpoint: the trainable weights (safetensors), optimizer and scheduler, the data loader's position and the RNG
states, written to a temporary folder and renamed into place, so that a crash mid-write leaves the last good one
intact. Started again with the same arguments, a run resumes from its last checkpoint with the same data order and
ends with the same weights as an uninterrupted run.

bf16 autocast on CUDA, fp32 on the CPU. The loop is rank-aware (torch.distributed): every process runs it, each on
its own shard of the data; rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_grads_, all_reduce_mean_, rank_world
from .recipe import StageRecipe

KEEP_CHECKPOINTS = 2


class NonFiniteLoss(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the run stopped before corrupting its weights."""


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    loss_first: float  # mean loss over the first 10% of the steps
    loss_last: float  # ... and over the last 10%
    peak_memory_gib: float | None
    resumed_from: int  # step the run resumed from (0 = fresh start)
    finished: bool = True  # False: stopped at max_seconds with a checkpoint; run again to continue

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lr_factor(step: int, recipe: StageRecipe) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): linear warmup, then cosine down to
    min_lr / lr at the last step, or constant."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    if recipe.schedule == "constant":
        return 1.0
    floor = recipe.min_lr / recipe.lr if recipe.lr > 0 else 0.0
    span = max(1, recipe.steps - recipe.warmup_steps - 1)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, one name per storage (tied weights are saved once)."""
    seen, out = set(), {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out[name] = p.detach().contiguous().cpu()
    return out


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def _save_checkpoint(run_dir: Path, model, optimizer, scheduler, loader, step: int) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable_state(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "loader": loader.state_dict()}))
    for f in tmp.iterdir():  # on disk before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = root / f".latest-{os.getpid()}"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p != final)[:-(KEEP_CHECKPOINTS - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, model, optimizer, scheduler, loader) -> int:
    weights = load_file(path / "trainable.safetensors")
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint {path} holds weights this model does not have: {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)
    extra = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    state = json.loads((path / "state.json").read_text())
    loader.load_state_dict(state["loader"])
    return int(state["step"])


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def last_eval(metrics_path: Path) -> dict | None:
    """The last metrics row of a run that holds held-out values (`eval/...`), or None."""
    rows = _read_metrics(Path(metrics_path), upto=math.inf)
    rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    return rows[-1] if rows else None


def _draw_curves(run_dir: Path, name: str) -> None:
    """run_dir/curves.png. The checkpoint is written by then: a plotting failure warns and loses nothing."""
    from .curves import plot_curves

    try:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", f"{name} ({run_dir})")
    except Exception as err:  # noqa: BLE001 - a figure must not fail a finished run
        print(f"hybridize: warning: could not draw {run_dir / 'curves.png'}: {type(err).__name__}: {err}")


def _summary_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a stripped environment still trains
        return None
    return SummaryWriter(str(run_dir / "tb"))


@contextlib.contextmanager
def deterministic_kernels(enabled: bool, device: torch.device):
    """With `enabled`: only deterministic kernels inside (`torch.use_deterministic_algorithms`, which raises on an op
    that has none), so that on CUDA the same seed and data give the same weights. The CPU is deterministic without it.
    CUDA needs `CUBLAS_WORKSPACE_CONFIG` before its first matmul; it is set here unless the user set it. The previous
    setting comes back on exit."""
    if not enabled:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def train(*, recipe: StageRecipe, device: torch.device, **kwargs) -> TrainResult:
    """Run (or resume) one stage (`_train` says how), with deterministic kernels when `recipe.deterministic`."""
    with deterministic_kernels(recipe.deterministic, device):
        return _train(recipe=recipe, device=device, **kwargs)


def _train(
    *,
    name: str,
    run_dir: Path,
    model: nn.Module,
    param_groups: list[dict],
    loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    loader,
    recipe: StageRecipe,
    device: torch.device,
    max_seconds: float | None = None,
    lr_option: str | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> TrainResult:
    """Run (or resume) one stage. `loss_fn(batch) -> (loss, extra metrics)`; `param_groups` are AdamW groups with
    their peak "lr" (and a "name" for the logs); `model` is what gets checkpointed (its trainable parameters).
    With `max_seconds`, the run stops at the first step boundary after that long, with a checkpoint, and reports
    `finished=False`: the same call continues it. `lr_option` is the `--set` key a user lowers when the loss blows
    up (default `<name>.lr`). `evaluate() -> {name: value}` runs every `eval_every` steps and at the last step (rank 0,
    eval mode, no gradients); its values join that step's metrics as `eval/<name>`."""
    rank, world = rank_world()
    is_main = rank == 0
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = recipe.steps
    # under torchrun the global batch splits over the ranks: check it divides (the recipe was checked for one rank)
    recipe.validate((lr_option or f"{name}.lr").rsplit(".", 1)[0], world)
    accum = recipe.batch_size // (recipe.micro_batch_size * world)
    for g in param_groups:
        g["initial_lr"] = g["lr"]
    params = [p for g in param_groups for p in g["params"]]
    optimizer = torch.optim.AdamW(param_groups, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, recipe))
    start = 0
    if (ckpt := latest_checkpoint(run_dir)) is not None:
        start = _load_checkpoint(ckpt, model, optimizer, scheduler, loader)
    metrics_path = run_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path, start)
    if is_main:  # drop rows written after the checkpoint we resumed from
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    writer = _summary_writer(run_dir) if is_main else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    tokens_per_step = recipe.batch_size * recipe.seq_len
    bar = tqdm(total=steps, initial=start, desc=name, unit="step", disable=not is_main, dynamic_ncols=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, tokens_done = time.perf_counter(), 0
    model.train()
    last = start
    for step in range(start, steps):
        loss_sum, extras = torch.zeros((), device=device), {}
        for _ in range(accum):
            batch = next(loader).to(device)
            with autocast:
                loss, extra = loss_fn(batch)
            (loss / accum).backward()
            loss_sum += loss.detach().float() / accum
            for k, v in extra.items():  # floats, or 0-d tensors read once per step below (no sync mid-step)
                extras[k] = extras.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v) / accum
            tokens_done += batch.num_tokens * world
        if world > 1:  # data parallel (torchrun): every rank steps with the gradient of the whole global batch
            all_reduce_grads_(params)
            all_reduce_mean_([loss_sum])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip if recipe.grad_clip > 0 else float("inf"))
        on_device = [k for k, v in extras.items() if torch.is_tensor(v)]
        values = torch.stack([loss_sum, grad_norm.float(), *(extras[k].float() for k in on_device)]).tolist()
        loss_value, norm_value = values[0], values[1]  # the step's one host sync
        extras.update(zip(on_device, values[2:]))
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            bar.close()
            kept = latest_checkpoint(run_dir)
            raise NonFiniteLoss(
                f"{name}: {'loss' if not math.isfinite(loss_value) else 'gradient norm'} is "
                f"{loss_value if not math.isfinite(loss_value) else norm_value} at step {step + 1}; stopped before "
                f"updating the weights. Last good checkpoint: {kept or 'none yet'}. Lower the learning rate "
                f"(--set {lr_option or name + '.lr'}=...) or check the data.")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        evaluated = {}
        if evaluate is not None and eval_every > 0 and is_main and ((step + 1) % eval_every == 0 or step + 1 == steps):
            model.eval()
            with torch.no_grad(), autocast:
                evaluated = {f"eval/{k}": float(v) for k, v in evaluate().items()}
            model.train()
        row = {"step": step + 1, "loss": loss_value, "grad_norm": norm_value,
               "tokens": (step + 1) * tokens_per_step, "tokens_per_s": tokens_done / max(elapsed, 1e-9),
               "elapsed_s": elapsed, **{f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)},
               **extras, **evaluated}
        history.append(row)
        if is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                for k, v in row.items():
                    if k != "step":
                        writer.add_scalar(f"{name}/{k}", v, step + 1)
            bar.set_postfix(loss=f"{loss_value:.4g}", tok_s=f"{row['tokens_per_s']:.3g}")
            if evaluated:
                bar.write(f"{name} step {step + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluated.items()))
            bar.update(1)
        last = step + 1
        out_of_time = max_seconds is not None and time.perf_counter() - t0 >= max_seconds
        if max_seconds is not None and world > 1:  # every rank must stop at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if (step + 1) % recipe.save_every == 0 or step + 1 == steps or out_of_time:
            if is_main:
                _save_checkpoint(run_dir, model, optimizer, scheduler, loader, step + 1)
            if world > 1:
                dist.barrier()
        if out_of_time:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if is_main:
        _draw_curves(run_dir, name)
    elapsed = time.perf_counter() - t0
    losses = [r["loss"] for r in history]
    tail = max(1, len(losses) // 10)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return TrainResult(
        steps=steps, tokens=steps * tokens_per_step, seconds=elapsed,
        tokens_per_s=tokens_done / elapsed if tokens_done else 0.0,
        loss_first=sum(losses[:tail]) / tail if losses else float("nan"),
        loss_last=sum(losses[-tail:]) / tail if losses else float("nan"),
        peak_memory_gib=peak, resumed_from=start, finished=last == steps,
    )
