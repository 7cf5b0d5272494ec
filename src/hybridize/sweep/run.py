"""`run_sweep`: train and score every cell of a grid into one folder, cell by cell, resumably.

    DIR/sweep-config.json   what every cell of the folder shares (size, --set, data, evaluation settings)
    DIR/tokenizer/          one BPE for every cell, trained once on the size's data
    DIR/cells/<cell>/       `hybridize pretrain`'s folder of the cell (model, pretrain.json, run/ with checkpoints,
                            metrics and TensorBoard) and result.json, its scores
    DIR/sweep.json          one row per finished cell of the folder (`report.write_report`), with README.md and figures
    DIR/logs/lane-<i>.log   with jobs > 1, what each side-by-side process printed

A cell whose result.json exists is never trained or scored again; a cell stopped mid-run (killed, or --max-minutes)
resumes from its last checkpoint; a cell trained but not yet scored is only scored. So a grid larger than one run
completes over several runs of the same command, and a later command into the same folder may add cells (other mixers,
ratios, fusions, placements or seeds) as long as what the cells share is the same (else it stops before any work).

`jobs` > 1 trains that many cells at once, each lane a process of its own on the same device (the cells of one mixer in
one lane, so each mixer's kernels compile once): small cells leave a GPU mostly idle, waiting on Python and kernel
launches, and lanes fill it. A cell's `train_seconds` is then its time on a shared device. Lanes do not check that
their cells fit in memory together; pick `jobs` for the size. A sweep runs in one process tree on one device: it
refuses torchrun (train a cell too big for one GPU with `hybridize pretrain` under torchrun).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.sources import check_sources, iter_documents
from ..provenance import command_line, device_name, git_commit
from .grid import Cell, SweepConfig, base_recipe, cell_recipe, check_eval_settings, grid_cells

CONFIG_FILE = "sweep-config.json"


@dataclass
class SweepResult:
    rows: list[dict]  # every finished cell of the folder (sweep.json)
    cells: list[str]  # this grid's cells
    remaining: list[str] = field(default_factory=list)  # this grid's cells not finished (time ran out or a lane failed)
    failed_lanes: list[str] = field(default_factory=list)  # logs of lanes that stopped with an error

    @property
    def finished(self) -> bool:
        return not self.remaining


def _resolved(cfg: SweepConfig) -> SweepConfig:
    """`cfg` with its defaults resolved: the held-out text, the command."""
    from ..pretrain.train import default_eval_data

    base = base_recipe(cfg)
    eval_data = cfg.eval_data if cfg.eval_data is not None else default_eval_data(base.data)
    if eval_data is None:
        raise ValueError("eval_data: the sweep scores held-out perplexity and recall on text the cells never train on; "
                         "give --eval-data (default builtin:heldout only when --data is builtin:train and / or "
                         "stdlib-code:train)")
    return replace(cfg, eval_data=eval_data, command=cfg.command or command_line())


def _check_folder(out: Path, record: dict) -> None:
    from ..pretrain.train import differing_fields

    if diff := differing_fields(out / CONFIG_FILE, record):
        raise ValueError(f"{out} holds a sweep with other {', '.join(diff)} (its {CONFIG_FILE}); cells are compared "
                         "only when trained and scored alike: use a new --out, or the same settings to add cells")


def _tokenizer(out: Path, base):
    """The folder's tokenizer, or a new BPE of the size's vocabulary on its data (not yet saved)."""
    from ..evaluation.loading import load_tokenizer

    if (out / "tokenizer" / "tokenizer.json").is_file():
        return load_tokenizer(out / "tokenizer"), False
    from ..data.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(iter_documents(base.data), base.model["vocab_size"])
    tok.padding_side = "left"
    return tok, True


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Train and score the grid of `cfg` into `cfg.out` (the module docstring says how). Every check that can fail
    runs before anything is written: the grid, every cell's recipe, the data, the evaluation prompts at every length."""
    from ..pretrain.train import check_tokenizer
    from .score import EvalSet

    check_eval_settings(cfg)
    base = base_recipe(cfg)
    check_sources(base.data)
    cfg = _resolved(cfg)
    check_sources(cfg.eval_data)
    cells = grid_cells(cfg, base.seed, base.model["num_hidden_layers"])
    for cell in cells:  # a mix the size cannot hold (e.g. 'middle' with too many attention layers) fails here
        cell_recipe(base, cell, cfg.overrides).validate()
    out = Path(cfg.out)
    _check_folder(out, cfg.folder_record())
    todo = [c for c in cells if not (out / "cells" / c.name / "result.json").is_file()]
    tok, new_tokenizer = _tokenizer(out, base)
    evalset = None
    if todo:  # the episodes fit the training length, the prompts of every task every length, the held-out text a window
        check_tokenizer(cell_recipe(base, todo[0], cfg.overrides), tok)
        evalset = EvalSet.build(tok, cfg.eval_data, base.train.seq_len, cfg.lengths, cfg.tasks, cfg.samples,
                                cfg.eval_windows, cfg.eval_seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(cfg.folder_record(), indent=1))
    if new_tokenizer:
        tok.save_pretrained(out / "tokenizer")
    failed: list[str] = []
    if todo:
        from ..data import tokenize_corpus

        from transformers import AutoTokenizer

        # into the token cache once, before the lanes read it (keyed by the tokenizer as the cells load it)
        tokenize_corpus(base.data, AutoTokenizer.from_pretrained(out / "tokenizer"))
        deadline = None if cfg.max_minutes is None else time.time() + 60 * cfg.max_minutes
        lanes = _lanes(todo, cfg.jobs)
        if len(lanes) == 1:
            try:
                run_lane(cfg, lanes[0], deadline, evalset, report=True)
            finally:
                _write(out)
        else:
            failed = _run_lanes(cfg, lanes, deadline, evalset)
    rows = _write(out)
    done = {r["cell"] for r in rows}
    return SweepResult(rows, [c.name for c in cells], [c.name for c in cells if c.name not in done], failed)


def _lanes(cells: list[Cell], jobs: int) -> list[list[Cell]]:
    """Cells split over at most `jobs` lanes: the cells of one mixer together (its kernels compile once per process),
    the largest groups first, each to the lane with the fewest cells; where lanes outnumber mixers, cells one by one."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.mixer or "transformer", []).append(c)
    n = min(jobs, len(cells))
    lanes: list[list[Cell]] = [[] for _ in range(n)]
    if len(groups) >= n:
        for group in sorted(groups.values(), key=len, reverse=True):
            min(lanes, key=len).extend(group)
    else:
        for i, c in enumerate(c for g in groups.values() for c in g):
            lanes[i % n].append(c)
    return [lane for lane in lanes if lane]


def _run_lanes(cfg: SweepConfig, lanes: list[list[Cell]], deadline, evalset) -> list[str]:
    """Each lane in a process of its own (spawned: no CUDA state is forked), its output in logs/lane-<i>.log; returns
    the logs of the lanes that failed."""
    import multiprocessing
    import signal
    import threading

    logs = Path(cfg.out) / "logs"
    logs.mkdir(exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i, lane in enumerate(lanes):
        log = logs / f"lane-{i}.log"
        p = ctx.Process(target=_lane_process, args=(cfg, lane, deadline, evalset, str(log)), name=f"sweep-lane-{i}")
        p.start()
        print(f"sweep: lane {i} ({', '.join(c.name for c in lane)}) -> {log}", flush=True)
        procs.append((p, log))
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) would end this process without the `finally` below and leave its lanes training on, two
        # processes in one cell once the command runs again: it stops the lanes as Ctrl-C does
        def stop(signum, frame):
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, stop)
    try:
        for p, _ in procs:
            p.join()
    finally:
        for p, _ in procs:  # an interrupted parent stops its lanes (a lane in training checkpoints its step first)
            if p.is_alive():
                p.terminate()
                p.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return [str(log) for p, log in procs if p.exitcode != 0]


def _lane_process(cfg: SweepConfig, cells: list[Cell], deadline, evalset, log: str) -> None:
    """A spawned lane: stdout and stderr (Python's and the C libraries') into `log`."""
    import torch

    f = open(log, "a", buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    if not torch.cuda.is_available() or (cfg.device or "cuda").startswith("cpu"):  # the lanes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.jobs))
    from ..distill.loop import Preempted

    try:
        run_lane(cfg, cells, deadline, evalset, report=False)
    except Preempted as stopped:  # SIGTERM or Ctrl-C (the parent's or the terminal's): the cell kept its step
        print(f"sweep: {stopped}", flush=True)
        sys.exit(128 + stopped.signum)


def run_lane(cfg: SweepConfig, cells: list[Cell], deadline: float | None, evalset, report: bool = False) -> None:
    """Train and score `cells` one after another; once `deadline` (time.time()) has passed, stop the cell in training
    (with a checkpoint, after at least one step, as `pretrain --max-minutes` does) and start no other.
    `report`: rewrite sweep.json after each cell (one lane)."""
    from ..evaluation.loading import load_tokenizer

    out = Path(cfg.out)
    base = base_recipe(cfg)
    tok = load_tokenizer(out / "tokenizer")
    for i, cell in enumerate(cells):
        if i and deadline is not None and time.time() >= deadline:
            print(f"sweep: out of time before {cell.name}", flush=True)
            return
        row = run_cell(cfg, base, cell, tok, evalset, deadline)
        if row is None:
            print(f"sweep: {cell.name} stopped with a checkpoint (out of time); the same command continues it",
                  flush=True)
            return
        if report:
            _write(out, figures=False)


def run_cell(cfg: SweepConfig, base, cell: Cell, tok, evalset, deadline: float | None = None) -> dict | None:
    """Train (or resume) and score one cell; its row, or None when its training stopped at the deadline."""
    import torch

    from ..pretrain import mix_summary, pretrain
    from .score import score_checkpoint

    cell_dir = Path(cfg.out) / "cells" / cell.name
    result_path = cell_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    recipe = cell_recipe(base, cell, cfg.overrides)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not (cell_dir / "pretrain.json").is_file():
        minutes = None if deadline is None else max(0.0, (deadline - time.time()) / 60)
        workers = cfg.data_workers
        if workers is None and torch.device(device).type == "cuda":  # the CPU's share of this lane
            workers = max(1, min(8, (os.cpu_count() or 2) // 2 // max(1, cfg.jobs)))
        print(f"sweep: training {cell.name}", flush=True)
        result = pretrain(recipe, cell_dir, tokenizer=Path(cfg.out) / "tokenizer", device=device,
                          max_minutes=minutes, data_workers=workers, eval_data=cfg.eval_data,
                          eval_every=max(1, recipe.train.steps // 10), eval_windows=4, record_name="pretrain.json",
                          record_extra={"sweep_cell": cell.as_dict()})
        if not result.finished:
            return None
    record = json.loads((cell_dir / "pretrain.json").read_text())
    print(f"sweep: scoring {cell.name}", flush=True)
    scores = score_checkpoint(cell_dir, tok, evalset, device)
    config = recipe.model_config()
    row = {"cell": cell.name, **cell.as_dict(), "size": cfg.size, "params": record["parameters"],
           "tokens": record["result"]["tokens"], "steps": record["result"]["steps"],
           "train_len": recipe.train.seq_len, "train_loss_last": record["result"]["loss_last"],
           "train_seconds": record["result"]["seconds"], **mix_summary(config),
           "layer_types": list(config.layer_types), **scores,
           "command": cfg.command, "commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    tmp = result_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(result_path)  # a killed write leaves no result.json: the cell is scored again
    return row


def collect_rows(out: str | Path) -> list[dict]:
    """Every finished cell of the folder, ordered by seed, mixer (the Transformer last) and attention share."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(out).glob("cells/*/result.json"))]
    return sorted(rows, key=lambda r: (r["seed"], r["mixer"] is None, r["mixer"] or "", r["attention_kv_groups"],
                                       r["fusion"], r["placement"] or ""))


def _write(out: Path, figures: bool = True) -> list[dict]:
    from .report import write_report

    rows = collect_rows(out)
    write_report(out, rows, figures=figures)
    return rows


__all__ = ["SweepResult", "collect_rows", "run_cell", "run_lane", "run_sweep"]
