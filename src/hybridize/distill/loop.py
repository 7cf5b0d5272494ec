"""One training loop for every stage, readable top to bottom.

    result = train(name="distill", run_dir=..., model=student, param_groups=[...], loss_fn=fn, loader=loader,
                   recipe=recipe.distill, device=device)

Each step: `accum` micro-batches (loss / accum, backward), a finiteness check, clipping, AdamW, the LR schedule,
a metrics row (metrics.jsonl, TensorBoard when installed, the progress bar), and every `save_every` steps an atomic
checkpoint: the trainable weights, optimizer and scheduler, the data loader's position and the RNG states, written
to a temporary folder and renamed into place, so that a crash mid-write leaves the last good one intact. Started
again with the same arguments, a run resumes from its last checkpoint with the same data order and ends with the
same weights as an uninterrupted run.

bf16 autocast on CUDA, fp32 on the CPU. Under torchrun (`hybridize.distributed`) every process runs the loop on its
own slice of each global batch, with the model wrapped by FSDP2: `units` are its all-gather groups (a student's
blocks), and whatever a step runs goes through one root module (`Objective`: its forward is `loss_fn`, its
`evaluate` the held-out evaluation), so that FSDP's hooks gather the parameters and reduce the gradients.

SIGTERM (a scheduler's preemption, `kill`, `timeout`) or Ctrl-C (SIGINT) stops a run at the end of the step in
progress with a checkpoint and raises `Preempted`, so the same command continues from that step; the same signal
again ends it at once. Under torchrun the ranks agree on the step through the step's metrics reduction.

Checkpoint layout (`run_dir/checkpoints/step_NNNNNNN/`):
    state.json              step, the data loader's position, the world size that wrote it
    trainable.safetensors   one process: the trainable weights, one file
    optimizer.pt            one process: optimizer, scheduler and RNG state; sharded: scheduler and RNG only
    sharded/                several processes: trainable weights and optimizer state as a torch.distributed.checkpoint
                            (one file per rank plus .metadata), loadable on any number of ranks
A run resumes from either layout on any number of processes: the loaders' positions count whole global batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import threading
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

from ..distributed import (all_reduce_mean_, barrier, broadcast_object, full_state_dict, is_main, rank_world,
                           shard_trained, sharded)
from .recipe import StageRecipe

KEEP_CHECKPOINTS = 2


class NonFiniteLoss(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the run stopped before corrupting its weights."""


class Preempted(RuntimeError):
    """SIGTERM or Ctrl-C reached a run: it stopped at a step boundary with a checkpoint; the same command continues
    it. `signum`: the signal (a command exits 128 + signum, as the signal itself would)."""

    def __init__(self, name: str, step: int, steps: int, run_dir: Path, signum: int = signal.SIGTERM):
        self.signum = int(signum)
        by = "Ctrl-C" if self.signum == signal.SIGINT else "SIGTERM"
        super().__init__(f"{name}: stopped by {by} after step {step} of {steps} with a checkpoint in {run_dir}; "
                         "run the same command again to continue")


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
    final_eval: dict[str, float] | None = None  # evaluate()'s values after the last step (when given)

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


class Objective(nn.Module):
    """What one training step runs, as one module: `forward(batch)` is the stage's loss, `evaluate()` its held-out
    evaluation. Under FSDP it is the root: the trained model is its one submodule, so everything a step touches
    (blocks called inside the decoder, the output head called chunk by chunk in the loss) runs inside its hooks. A
    frozen teacher is reached through the closures, not registered: it has its own FSDP tree (or none)."""

    def __init__(self, model: nn.Module, loss_fn: Callable, evaluate: Callable | None = None):
        super().__init__()
        self.model = model
        self._loss_fn, self._evaluate = loss_fn, evaluate

    def forward(self, batch):
        return self._loss_fn(batch)

    def evaluate(self) -> dict[str, float]:
        return self._evaluate()


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
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def _sharded_state(model, optimizer) -> dict[str, dict]:
    """{"model": trainable weights, "optim": optimizer state}, keyed by parameter name (DTensor shards under FSDP):
    the layout torch.distributed.checkpoint saves and reshards on load."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {"model": {k: v for k, v in msd.items() if k in trainable}, "optim": osd}


def _save_checkpoint(run_dir: Path, model, optimizer, scheduler, loader, step: int) -> Path:
    """Write step `step`'s checkpoint (every rank calls it under torchrun; each writes its shard) and point `latest`
    at it once it is complete."""
    rank, world = rank_world()
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{broadcast_object(os.getpid())}"  # rank 0's pid: one folder for all
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if world == 1:
        save_file(_trainable_state(model), tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
                   tmp / "optimizer.pt")
    else:
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp / "sharded")  # fsyncs each rank's file
        if rank == 0:
            torch.save({"scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "optimizer.pt")
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps({"step": step, "loader": loader.state_dict(), "world_size": world}))
        for f in tmp.iterdir():  # on disk before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    barrier()  # every rank's shard is written
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / f".latest-{os.getpid()}"
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, root / "latest")
        for old in sorted(p for p in root.glob("step_*") if p != final)[:-(KEEP_CHECKPOINTS - 1) or None]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _by_name(optimizer_state: dict, names: list[list[str]]) -> dict:
    """A one-process `optimizer.state_dict()` (parameters numbered in group order) keyed by parameter name, as
    torch.distributed.checkpoint.state_dict's optimizer functions expect; `names[g]`: group g's parameter names."""
    number_to_name = {}
    for saved, group_names in zip(optimizer_state["param_groups"], names):
        number_to_name.update(zip(saved["params"], group_names))
    return {"state": {number_to_name[i]: v for i, v in optimizer_state["state"].items()},
            "param_groups": [{**g, "params": [number_to_name[i] for i in g["params"]]}
                             for g in optimizer_state["param_groups"]]}


def _load_checkpoint(path: Path, model, optimizer, scheduler, loader, names: list[list[str]]) -> int:
    """Restore a checkpoint of either layout, written by any number of ranks; returns its step. `names`: each
    optimizer group's parameter names."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict, set_state_dict)

    world = rank_world()[1]
    if (path / "sharded").is_dir():
        import torch.distributed.checkpoint as dcp

        state = _sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=path / "sharded", no_dist=world == 1)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=StateDictOptions(strict=False))
        extra = torch.load(path / "optimizer.pt", weights_only=False)
    else:
        weights = load_file(path / "trainable.safetensors")
        missing = set(weights) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"checkpoint {path} holds weights this model does not have: {sorted(missing)[:5]}")
        extra = torch.load(path / "optimizer.pt", weights_only=False)
        if world == 1:
            model.load_state_dict(weights, strict=False)
            optimizer.load_state_dict(extra["optimizer"])
        else:  # a one-process checkpoint resumed under FSDP: every rank reads it whole and keeps its shards
            full = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(model, weights, options=full)
            set_optimizer_state_dict(model, optimizer, _by_name(extra["optimizer"], names), options=full)
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


@contextlib.contextmanager
def stop_on_signals():
    """Inside: SIGTERM or SIGINT (Ctrl-C) to this process is a request to stop, recorded in the yielded list (empty:
    none) for the loop to read at a step boundary. The same signal a second time ends the run at once (SIGINT as
    KeyboardInterrupt, SIGTERM as SystemExit); the other signal after the first is the same request (a parent that
    relays a Ctrl-C as SIGTERM to its lanes: `hybridize sweep`, quality_grid's lanes). Forked helpers that inherit the
    handler (data workers) ignore both: their parent decides when they stop. Outside the main thread (where Python
    runs signal handlers) nothing is installed and the list stays empty."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:
            return
        if signum in requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def train(*, recipe: StageRecipe, device: torch.device, **kwargs) -> TrainResult:
    """Run (or resume) one stage (`_train` says how), with deterministic kernels when `recipe.deterministic`, and
    SIGTERM and Ctrl-C turned into a stop with a checkpoint (`stop_on_signals`, `Preempted`)."""
    with deterministic_kernels(recipe.deterministic, device), stop_on_signals() as stop:
        return _train(recipe=recipe, device=device, stop=stop, **kwargs)


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
    units: list | None = None,
    after_step: Callable[[], None] | None = None,
    stop: list[int] | None = None,
) -> TrainResult:
    """Run (or resume) one stage. `loss_fn(batch) -> (loss, extra metrics)`; `param_groups` are AdamW groups with
    their peak "lr" (and a "name" for the logs); `model` is what gets checkpointed (its trainable parameters).
    With `max_seconds`, the run stops at the first step boundary after that long, with a checkpoint, and reports
    `finished=False`: the same call continues it. `lr_option` is the `--set` key a user lowers when the loss blows
    up (default `<name>.lr`). `evaluate() -> {name: value}` runs every `eval_every` steps and at the last step (every
    rank, eval mode, no gradients); its values join that step's metrics as `eval/<name>` and the result's
    `final_eval`. `after_step()` runs after each optimizer step (a projection of the weights, say).

    Under torchrun `model` is wrapped by FSDP2 here (`distributed.shard_trained`), in place: each of `units` (modules
    of `model`, or lists of modules that share a parameter) is one all-gather group, the rest of `model` is the root's
    group. `loss_fn` and `evaluate` may call any part of `model` (they run inside the root's hooks); a frozen module
    they use must be whole on each rank or have an FSDP tree of its own. `param_groups` are matched to the wrapped
    parameters by name."""
    rank, world = rank_world()
    is_main = rank == 0
    stop = [] if stop is None else stop  # non-empty once a stop was asked for (SIGTERM)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = recipe.steps
    # under torchrun the global batch splits over the ranks: check it divides (the recipe was checked for one rank)
    recipe.validate((lr_option or f"{name}.lr").rsplit(".", 1)[0], world)
    accum = recipe.batch_size // (recipe.micro_batch_size * world)
    names = _group_names(model, param_groups)
    objective = Objective(model, loss_fn, evaluate)
    if sharded():
        shard_trained(objective, units or [], device, forward_methods=["evaluate"])
        by_name = dict(model.named_parameters(remove_duplicate=False))
        for g, group_names in zip(param_groups, names):
            g["params"] = [by_name[n] for n in group_names]
    for g in param_groups:
        g["initial_lr"] = g["lr"]
    params = [p for g in param_groups for p in g["params"]]
    optimizer = torch.optim.AdamW(param_groups, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, recipe))
    start = 0
    if (ckpt := latest_checkpoint(run_dir)) is not None:
        start = _load_checkpoint(ckpt, model, optimizer, scheduler, loader, names)
    metrics_path = run_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path, start)
    if is_main:  # drop rows written after the checkpoint we resumed from
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    writer = _summary_writer(run_dir) if is_main else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())

    def run_evaluation() -> dict[str, float]:
        model.eval()
        with torch.no_grad(), autocast:
            values = {f"eval/{k}": float(v) for k, v in objective.evaluate().items()}
        model.train()
        return values

    tokens_per_step = recipe.batch_size * recipe.seq_len
    bar = tqdm(total=steps, initial=start, desc=name, unit="step", disable=not is_main, dynamic_ncols=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, tokens_done = time.perf_counter(), 0
    model.train()
    last = start
    final_eval = None
    stopping = False
    if start == steps and evaluate is not None:  # stopped after its last checkpoint: the final values again
        final_eval = {k.removeprefix("eval/"): v for k, v in run_evaluation().items()}
    for step in range(start, steps):
        loss_sum, extras = torch.zeros((), device=device), {}
        for _ in range(accum):
            batch = next(loader).to(device)
            with autocast:
                loss, extra = objective(batch)
            (loss / accum).backward()  # under FSDP the gradients are reduce-scattered (averaged) here
            loss_sum += loss.detach().float() / accum
            for k, v in extra.items():  # floats, or 0-d tensors read once per step below (no sync mid-step)
                extras[k] = extras.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v) / accum
            tokens_done += batch.num_tokens * world
        grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip if recipe.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP: the norm over every rank's shards
            grad_norm = grad_norm.full_tensor()
        on_device = [k for k, v in extras.items() if torch.is_tensor(v)]
        values = torch.stack([loss_sum, grad_norm.float(), *(extras[k].float() for k in on_device)])
        if world > 1:  # the logged loss and metrics are the global batch's: the mean over the ranks
            floats = [k for k in extras if k not in on_device]
            # the last entry: whether this rank was asked to stop (every rank stops if one was)
            on_host = torch.tensor([float(extras[k]) for k in floats] + [float(bool(stop))], dtype=torch.float64,
                                   device=device)
            all_reduce_mean_([values, on_host])
            *host, asked = on_host.tolist()
            extras.update(zip(floats, host))
            stopping = asked > 0
        else:
            stopping = bool(stop)
        values = values.tolist()  # the step's one host sync
        loss_value, norm_value = values[0], values[1]
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
        if after_step is not None:
            after_step()
        elapsed = time.perf_counter() - t0
        evaluated = {}
        if evaluate is not None and eval_every > 0 and ((step + 1) % eval_every == 0 or step + 1 == steps):
            evaluated = run_evaluation()
            if step + 1 == steps:
                final_eval = {k.removeprefix("eval/"): v for k, v in evaluated.items()}
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
        if (step + 1) % recipe.save_every == 0 or step + 1 == steps or out_of_time or stopping:
            _save_checkpoint(run_dir, model, optimizer, scheduler, loader, step + 1)
        if out_of_time or stopping:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if last < steps and stopping:
        raise Preempted(name, last, steps, run_dir, stop[0] if stop else signal.SIGTERM)
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
        peak_memory_gib=peak, resumed_from=start, finished=last == steps, final_eval=final_eval,
    )


def _group_names(model: nn.Module, param_groups: list[dict]) -> list[list[str]]:
    """Each optimizer group's parameters by name in `model` (what survives FSDP's wrapping and keys checkpoints)."""
    names = {}
    for n, p in model.named_parameters():
        names.setdefault(id(p), n)
    out = []
    for g in param_groups:
        missing = [p for p in g["params"] if id(p) not in names]
        if missing:
            raise ValueError(f"optimizer group {g.get('name', '?')!r} holds {len(missing)} parameter(s) that are not "
                             "parameters of the checkpointed model")
        out.append([names[id(p)] for p in g["params"]])
    return out


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """`model` with its whole weights, to save or evaluate alone: the model itself in one process; under torchrun,
    where `train` sharded it (every rank must call this), a plain copy of the same class and config on rank 0's CPU,
    holding the gathered weights (None on the other ranks)."""
    if not sharded():
        return model
    weights = full_state_dict(model)
    if not is_main():
        return None
    with torch.device("meta"):  # no second initialisation of a large model: the weights are assigned below
        whole = type(model)(model.config)
    whole.load_state_dict(weights, strict=False, assign=True)
    if getattr(whole.config, "tie_word_embeddings", False):
        whole.tie_weights()
    left = [n for n, p in whole.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"the gathered weights of {type(model).__name__} lack {left[:5]}")
    return whole
