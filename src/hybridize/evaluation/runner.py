"""`run_eval`: teacher and students on the same perplexity windows and the same synthetic prompts, one report.

Models run one after another (each is freed before the next loads); everything they are scored on is built once
from the shared tokenizer, so every number in the report compares like with like, and any two models can be
compared prompt by prompt (McNemar's test, `evaluation.compare`).

Sample sizes: `samples` prompts per (task, length, depth). Left unset it is `GPU_PROMPTS_PER_CELL` (200) per (task,
length) spread over the depths on CUDA (ceil(200 / depths) each: 67 x 3 depths = 201), enough to tell 90% from 75%
(Wilson 95% intervals about +-4 and +-6 points); on the CPU `CPU_SAMPLES` (8) per depth, which keeps CPU runs in
minutes and decides nothing finer than ~30 points.
"""

from __future__ import annotations

import gc
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.sources import iter_documents
from ..data.synthetic import TASKS, FillerTokens, suite_tasks
from ..metrics.perplexity import perplexity_by_length, perplexity_windows, windows_fingerprint
from ..metrics.recall import PROMPT_SEED_BASE, build_cells, evaluate_cells
from ..metrics.stats import wilson_interval
from ..provenance import check_weights, git_commit
from .loading import DTYPES, check_model_dir, has_tokenizer, load_model, load_tokenizer, pick_device
from .suites import SUITES

GPU_PROMPTS_PER_CELL = 200  # prompts per (task, length), over all depths, when `samples` is left unset on CUDA
CPU_SAMPLES = 8  # prompts per (task, length, depth) when `samples` is left unset elsewhere
DEFAULT_WINDOWS = 8  # perplexity windows when neither `windows` nor `samples` is given


@dataclass
class EvalConfig:
    """What `hybridize eval` runs. `suites` takes suite names (SUITES) and synthetic task names (TASKS)."""

    models: list[str]
    out: str
    teacher: str | None = None
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    samples: int | None = None  # prompts per (task, length, depth); None: `default_samples` for the device
    windows: int | None = None  # perplexity windows; None: `samples` when given, else DEFAULT_WINDOWS
    data: str | None = None  # a data spec (hybridize.data.sources); None: the built-in corpus
    seed: int = 0
    tokenizer: str | None = None  # default: the teacher's, else the first model's that has one
    batch_tokens: int = 65536  # tokens per batch (prompt + generated): batch size = batch_tokens // length
    device: str | None = None
    dtype: str | None = None
    progress: bool = True
    command: str | None = None  # recorded in the report; the CLI passes the full command line
    names: list[str] | None = None  # report names of `models` (default: their folder names)
    teacher_sha256: str | None = None  # refuse a teacher whose weights hash (`provenance.weights_sha256`) differs
    distinct_prompts: bool = True  # False: the same needles in every cell (`metrics.recall.build_cells`)
    # a `hybridize convert` output folder: evaluate its student after each stage (`evaluation.stages`) instead of
    # `models`, and write stages.md / stages.json beside the report
    stages: str | None = None

    def __post_init__(self):
        if bool(self.models) == bool(self.stages):
            raise ValueError("models / stages: give at least one model directory (--model DIR) or one conversion "
                             "folder (--stages DIR), not both")
        if not self.suites:
            raise ValueError(f"suites: give at least one of {list(SUITES)} or a task name")
        allowed = list(SUITES) + sorted(TASKS)
        for s in self.suites:
            if s not in allowed:
                raise ValueError(f"unknown suite {s!r}; allowed: {', '.join(SUITES)}, or a task: {', '.join(sorted(TASKS))}")
        if not self.lengths or any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in self.lengths):
            raise ValueError(f"lengths must be integers >= 2 (tokens), got {self.lengths}")
        self.lengths = sorted(set(self.lengths))
        if not self.depths or any(d is not None and not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be fractions in [0, 1] (0 = top of the context, 1 = bottom), got {self.depths}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.windows is not None and self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")
        if self.names is not None and (len(self.names) != len(self.models) or len(set(self.names)) != len(self.names)
                                       or not all(isinstance(n, str) and n for n in self.names)):
            raise ValueError(f"names must give each of the {len(self.models)} models its own non-empty name, got "
                             f"{self.names}")
        if self.teacher_sha256 is not None and not (self.teacher or self.stages):
            raise ValueError("teacher_sha256 needs a teacher to check: give teacher (--teacher DIR) too")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

    @property
    def tasks(self) -> list[str]:
        names = []
        for s in self.suites:
            names += suite_tasks(s) if s in SUITES else [s]
        return [n for n in dict.fromkeys(names) if n != "perplexity"]


def default_samples(device: torch.device, depths: int) -> int:
    """Prompts per (task, length, depth) when none is asked for: GPU_PROMPTS_PER_CELL per (task, length) over the
    depths on CUDA, CPU_SAMPLES per depth elsewhere."""
    return -(-GPU_PROMPTS_PER_CELL // depths) if device.type == "cuda" else CPU_SAMPLES


def attention_layers(config) -> int:
    """How many layers keep softmax attention (whole or in part): 0 for an all-linear student."""
    types = getattr(config, "layer_types", None)
    if not types:
        return int(config.num_hidden_layers)
    return sum(t != "linear_attention" for t in types)


def _names(paths: list[Path]) -> list[str]:
    names = []
    for p in paths:
        base = p.name if p.name not in ("", ".", "..") else p.resolve().name  # a symlink keeps its own name
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def run_eval(cfg: EvalConfig) -> list[Path]:
    """Evaluate the teacher (if any) and every model; write the report into `cfg.out`; return the files written.
    (`cfg.stages`, a conversion's students after each stage, is `evaluation.stages.run_stage_eval`'s.)"""
    if cfg.stages:
        raise ValueError(f"stages={cfg.stages!r}: a conversion's stages are evaluated by run_stage_eval(cfg)")
    import transformers
    from transformers import AutoConfig

    import hybridize

    from .report import write_report

    paths = ([check_model_dir(cfg.teacher, "teacher")] if cfg.teacher else []) + [check_model_dir(m) for m in cfg.models]
    roles = (["teacher"] if cfg.teacher else []) + ["student"] * len(cfg.models)
    names = _names(paths)
    if cfg.names is not None:
        names = names[:len(paths) - len(cfg.models)] + list(cfg.names)
        if len(set(names)) != len(names):
            raise ValueError(f"names {cfg.names} repeat the teacher's name {names[0]!r}")
    if cfg.teacher_sha256 is not None:
        check_weights(paths[0], cfg.teacher_sha256)
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else next((p for p in paths if has_tokenizer(p)), None)
    if tok_dir is None:
        raise FileNotFoundError("none of the model directories holds a tokenizer; give one with --tokenizer DIR")
    tokenizer = load_tokenizer(tok_dir)
    vocab = tokenizer.get_vocab()
    for p in paths:
        if p != tok_dir and has_tokenizer(p) and load_tokenizer(p).get_vocab() != vocab:
            raise ValueError(f"{p} has a different tokenizer from {tok_dir}: teacher and students must share one "
                             "to be scored on identical tokens")
    reference = AutoConfig.from_pretrained(paths[0])
    trained = getattr(reference, "max_position_embeddings", None)
    device, dtype = pick_device(cfg.device, cfg.dtype)
    tasks = cfg.tasks
    samples = cfg.samples or default_samples(device, len(cfg.depths))
    n_windows = cfg.windows or cfg.samples or DEFAULT_WINDOWS

    windows = cells = None
    if "perplexity" in cfg.suites:
        windows = perplexity_windows(tokenizer, iter_documents(cfg.data), cfg.lengths[-1], n_windows)
        fingerprint = windows_fingerprint(windows)
    if tasks:
        filler = FillerTokens.build(tokenizer, iter_documents(cfg.data))
        cells = build_cells(tasks, cfg.lengths, cfg.depths, samples, cfg.seed, tokenizer, filler,
                            distinct=cfg.distinct_prompts)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: check_weights(path, None) for path, name in zip(paths, names)}
    entries, model_meta = [], []
    for path, role, name in zip(paths, roles, names):
        t0 = time.perf_counter()
        model = load_model(path, device, dtype)
        info = {"name": name, "role": role, "path": str(path),
                "parameters": sum(p.numel() for p in model.parameters()),
                "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
                "attention_layers": attention_layers(model.config), "weights_sha256": weights[name]}
        base = {"model": name, "role": role}
        if windows is not None:
            bs = max(1, cfg.batch_tokens // windows.shape[1])
            for row in perplexity_by_length(model, windows, cfg.lengths, bs, cfg.progress, f"{name} perplexity"):
                entries.append({**base, "suite": "perplexity", "task": "perplexity", "metric": "perplexity",
                                "value": row["perplexity"], "length": row["length"], "depth": None,
                                "length_from": row["length_from"], "tokens": row["tokens"], "samples": len(windows),
                                "nll": row["nll"], "entropy": row["entropy"], "ci_low": row["ci_low"],
                                "ci_high": row["ci_high"], "window_nll": row["window_nll"], "windows": fingerprint})
        if cells:
            rows, predictions = evaluate_cells(model, tokenizer, cells, cfg.batch_tokens, progress=cfg.progress,
                                               desc=f"{name} recall")
            for row in rows:
                cell = {**base, "suite": TASKS[row["task"]].suite, "task": row["task"], "length": row["length"],
                        "depth": row["depth"], "samples": row["samples"], "n": row["samples"]}
                lo, hi = wilson_interval(row["successes"], row["samples"])
                entries.append({**cell, "metric": "exact_match", "value": row["exact_match"],
                                "successes": row["successes"], "ci_low": lo, "ci_high": hi,
                                "correct": row["correct"], "prompts": row["prompts"]})
                entries.append({**cell, "metric": "ruler_match", "value": row["ruler_match"]})
            with open(out / f"predictions_{name}.jsonl", "w", encoding="utf-8") as f:
                for p in predictions:
                    f.write(json.dumps(p) + "\n")
        info["seconds"] = round(time.perf_counter() - t0, 2)
        model_meta.append(info)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for e in entries:
        e["beyond_trained_context"] = bool(trained is not None and e["length"] > trained)

    meta = {
        "command": cfg.command or f"run_eval({EvalConfig.__name__}(**{json.dumps(_plain(cfg))}))",
        "models": model_meta,
        "trained_context": trained,
        "trained_context_source": f"max_position_embeddings of {'the teacher' if cfg.teacher else 'the first model'} "
                                  f"({names[0]})",
        "tokenizer": str(tok_dir),
        "seed": cfg.seed,
        "samples": samples,
        "prompts_per_cell": samples * len(cfg.depths),
        "windows": len(windows) if windows is not None else None,
        "sample_seeds": (f"prompts drawn in (task, length, depth, sample) order with seeds {PROMPT_SEED_BASE} + "
                         f"{cfg.seed} * 1000003 + k, k = 0, 1, ..., skipping any whose needle or value an earlier "
                         "prompt holds: no two prompts share one" if cfg.distinct_prompts else
                         f"sample i of every (task, length, depth) cell uses seed {cfg.seed} * 1000003 + i"),
        "lengths": cfg.lengths,
        "depths": cfg.depths,
        "tasks": tasks,
        "suites": cfg.suites,
        "data": cfg.data or "builtin",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dtype": str(dtype).replace("torch.", ""),
        "scoring": "exact_match: first line of the greedy generation, lowercased, non-alphanumerics as spaces; its "
                   "first k words must equal the k words of all expected values in order. ruler_match: fraction of "
                   "values found case-insensitively anywhere in the generation (RULER string_match_all). "
                   "perplexity: tokens bucketed by how many tokens precede them in the window.",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "hybridize": hybridize.__version__},
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_report(out, entries, meta)


def _plain(cfg: EvalConfig) -> dict:
    d = asdict(cfg)
    d.pop("command")
    return d
