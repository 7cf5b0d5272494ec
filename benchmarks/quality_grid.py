"""Conversion quality on one fixed teacher: per mixer, conversion seed and selector one conversion at a budget, each
evaluated on the teacher's own prompts, as the rows of `summary.json` (issue 26).

    python benchmarks/quality_grid.py --teacher /tmp/work/teacher-small --state results/quality \
        --work /tmp/work/quality --mixers lightning,gated_deltanet --selectors uniform,halo,flashmorph --seeds 3 \
        --recipe gpu-small --data builtin:train stdlib-code:train /tmp/work/episodes.jsonl \
        --eval-data builtin:heldout --deadline 500
    python benchmarks/quality_grid.py --state results/quality --summary-only   # summary.json / .md from state.json

The state folder holds three files, all a later call needs: `state.json` (the settings, the teacher's name and weights
hash, its evaluation, and per finished conversion its record and per-prompt results), `summary.json` and
`summary.md`. Conversions (weights, checkpoints) live under `--work`. A call skips every conversion state.json holds,
continues an unfinished one from its checkpoints when `--work` still has them (same machine), and before each one
stops if `--deadline` seconds (from its start) would not leave room for it, going by what this grid has measured of
the mixer part by part (`estimate_seconds`; DEFAULT_SECONDS before anything is): where only its stage 1 fits, it runs
that alone; a conversion longer than a whole call starts at a call's start and is stopped at the deadline by SIGTERM
with a checkpoint of the stage in training (exit 143), which the next call on the same machine continues. Bring the
state folder back, pass it again, and the grid goes on: on another machine too, but only with a teacher of the
recorded weights hash (another is refused, `--teacher-sha256` likewise).

`--jobs N` runs up to N (mixer, seed) groups side by side on the device, each a process of its own (a lane: its
stage 1, then its selectors one after another), in `--work`/lanes/<mixer>-seed<k>/ with its log; the parent merges
each conversion a lane finishes into the state as it lands. Small conversions leave a GPU waiting on Python and
kernel launches, so lanes add throughput; each record says how many lanes ran (`lanes`), since a selection's and a
stage's seconds measured beside other lanes are not its seconds alone.

Per (mixer, seed): one stage 1 (align), shared by that seed's selectors; per selector its selection, distill and
finetune (`pipeline.stages.convert`, the recipe's `seed` = the conversion seed), then `hybridize eval` of the
exported hybrid on `--tasks` at `--lengths` (multiples of the teacher's trained context), `--depths`, `--samples`
prompts per depth (default: hybridize eval's, 200 per task and length over the depths on CUDA), evaluation seed 0:
the prompts the teacher was scored on, checked by their fingerprints, so every hybrid pairs with the teacher and with
every other (McNemar's test).

`summary.json`, a list of rows, one per conversion, task and length: teacher (its folder name), teacher_sha256, mixer,
budget, fusion (inter: whole layers; intra: KV-head groups of every layer, `--fusion`), selector, seed, task, length (a multiple of the teacher's trained context), length_tokens, n, successes,
recall, ci_low, ci_high (Wilson 95%), teacher_recall (with teacher_n, teacher_ci_low, teacher_ci_high), p_vs_teacher
and p_vs_<first selector> (McNemar, exact, on the same prompts), tokens (the conversion's training tokens: stage 1 +
distill + finetune), tokens_per_parameter (of the teacher), select_tokens and select_gpu_s (the selection's tokens and
wall seconds on `device`; lanes: how many conversions ran side by side), layers, stage1_sha256 (the aligned model's weights: which selectors of a seed shared
one stage 1), device, commit.

Perplexity rides along: `--windows` windows (default 16) of the longest length from `--eval-data`, bucketed at the
lengths, the teacher's and every hybrid's on the same windows (checked by their fingerprint). Its rows in
summary.json have task `perplexity`, length (the bucket's end as a multiple of the trained context), length_from (its
start, tokens), n (windows), perplexity with ci_low / ci_high (95% bootstrap over windows), teacher_perplexity (with
its interval), p_vs_teacher and p_vs_<first selector> (paired sign-flip test of the per-window NLLs); a state made
before perplexity was measured gets the teacher's on its next call, and its earlier conversions have none.

Where recall is lost: for the conversions of `--stage-seeds` (default 0) the grid also scores the student after each
stage on the same prompts (`hybridize eval --stages`' models: aligned, the all-linear stage-1 model, shared by a
seed's selectors and scored once; selected, the hybrid distill starts from; distilled; the finetuned one is the
conversion's own evaluation), on the same perplexity windows too. `stages.json` holds one row per conversion, stage,
task and length (recall, Wilson interval, McNemar's p against the stage before and against the teacher; task
`perplexity`: perplexity with its bootstrap interval and the paired sign-flip p against the stage before and the
teacher), and summary.md a table of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from hybridize.data.synthetic import TASKS
from hybridize.evaluation.compare import fmt_p, paired, pooled
from hybridize.evaluation.stages import stage_models
from hybridize.evaluation.runner import EvalConfig, default_samples, run_eval
from hybridize.metrics.stats import paired_permutation_p
from hybridize.mixers import LINEAR_MIXERS
from hybridize.pipeline import load_recipe
from hybridize.pipeline.stages import Conversion, align, convert
from hybridize.provenance import check_weights, device_name, git_commit, provenance, weights_sha256
from hybridize.names import LAYER_FUSIONS
from hybridize.selection import GROUP_SELECTORS, SELECTORS

STATE, SUMMARY, SUMMARY_MD, STAGES = "state.json", "summary.json", "summary.md", "stages.json"
STAGE_ORDER = ("aligned", "selected", "distilled", "finetuned")
# Seconds of one conversion and its evaluation before any is measured: the recipe gpu-small on the `small` teacher
# on an H200 with compiled kernels (results/gpu/: stage 1 25-31 s, distill ~60 s, finetune ~10 s, HALO 14-41 s,
# FlashMorph 43-103 s, 150 s with its first compile; evaluation ~30 s for 2 tasks x 3 lengths x 201 prompts), rounded
# up. Estimates only: the deadline check prefers what this grid has measured.
DEFAULT_SECONDS = {"stage1": 60, "train": 90, "eval": 45, "overhead": 25,
                   "select": {"uniform": 0, "random": 0, "halo": 45, "flashmorph": 150, "kl_guided": 130}}
# what a state's results depend on: a call with other values would mix two grids
STOPPED = 3  # exit status of a call that stopped at its deadline with conversions to go (0: the grid is complete)
SETTINGS = ("recipe", "overrides", "budget", "fusion", "data", "eval_data", "tasks", "lengths", "depths", "samples",
            "windows")
# settings added after states were committed: a state without one takes this call's value
ADDED_SETTINGS = ("windows",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state", required=True, help="folder of state.json, summary.json, summary.md (bring it back)")
    p.add_argument("--summary-only", action="store_true", help="write summary.json / summary.md from state.json")
    p.add_argument("--teacher", help="the teacher's folder")
    p.add_argument("--teacher-sha256", metavar="HEX", help="insist on this teacher weights hash (default: state's)")
    p.add_argument("--work", default="/tmp/work/quality", help="conversions (weights, checkpoints)")
    p.add_argument("--mixers", default="lightning,gated_deltanet")
    p.add_argument("--selectors", default="uniform,halo,flashmorph", help="the first is each row's paired baseline")
    p.add_argument("--seeds", type=int, default=3, help="conversion seeds 0..N-1")
    p.add_argument("--budget", default="0.25")
    p.add_argument("--fusion", default="inter", help="inter: the budget's whole layers keep attention; intra: that "
                   "share of every layer's KV-head groups (selectors uniform, random, halo, flashmorph). Each fusion "
                   "is a grid of its own --state; both score the teacher's same prompts, so their conversions pair")
    p.add_argument("--recipe", default="gpu-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", nargs="+", default=None, help="conversion data (default: the recipe's)")
    p.add_argument("--eval-data", default="builtin:heldout", help="filler text of the prompts")
    p.add_argument("--tasks", default="passkey,niah_single_2")
    p.add_argument("--lengths", default="1,2,4", help="multiples of the teacher's trained context")
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--samples", type=int, default=None, help="prompts per (task, length, depth) (default: hybridize "
                   "eval's on this device, then the state's)")
    p.add_argument("--stage-seeds", default="0", help="seeds whose conversions are also scored after each stage "
                   "(comma-separated; 'none': no stage table)")
    p.add_argument("--windows", type=int, default=16, help="perplexity windows of the longest length (default 16)")
    p.add_argument("--device", default=None)
    p.add_argument("--deadline", type=float, default=None, help="seconds this call may run (default: no limit)")
    p.add_argument("--jobs", type=int, default=1, help="(mixer, seed) groups converted side by side on the device, "
                   "each in a process of its own (default 1)")
    p.add_argument("--lane", default=None, metavar="MIXER:SEED", help=argparse.SUPPRESS)  # set by --jobs for a lane
    return p.parse_args(argv)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def check_args(a: argparse.Namespace) -> dict:
    """The grid's settings from the arguments, each checked (ValueError naming the field and what it allows)."""
    mixers, selectors, tasks = _split(a.mixers), _split(a.selectors), _split(a.tasks)
    if not mixers or any(m not in LINEAR_MIXERS for m in mixers):
        raise ValueError(f"--mixers {a.mixers!r}: comma-separated linear mixers of {sorted(LINEAR_MIXERS)}")
    if not selectors or any(s not in SELECTORS for s in selectors) or len(set(selectors)) != len(selectors):
        raise ValueError(f"--selectors {a.selectors!r}: distinct selectors of {sorted(SELECTORS)}")
    if a.fusion not in LAYER_FUSIONS:
        raise ValueError(f"--fusion {a.fusion!r}: one of {list(LAYER_FUSIONS)}")
    if a.fusion == "intra" and any(s not in GROUP_SELECTORS for s in selectors):
        raise ValueError(f"--selectors {a.selectors!r}: with --fusion intra (KV-head groups) distinct selectors of "
                         f"{sorted(GROUP_SELECTORS)}")
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"--tasks {a.tasks!r}: comma-separated synthetic tasks of {sorted(TASKS)}")
    if a.seeds < 1:
        raise ValueError(f"--seeds must be >= 1 (conversion seeds 0..N-1), got {a.seeds}")
    try:
        lengths = [float(x) for x in _split(a.lengths)]
        depths = [float(x) for x in _split(a.depths)]
    except ValueError:
        lengths = depths = []
    if not lengths or any(x <= 0 for x in lengths):
        raise ValueError(f"--lengths {a.lengths!r}: comma-separated multiples > 0 of the teacher's trained context")
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise ValueError(f"--depths {a.depths!r}: comma-separated fractions in [0, 1]")
    if a.samples is not None and a.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {a.samples}")
    try:
        stage_seeds = [] if a.stage_seeds == "none" else [int(x) for x in _split(a.stage_seeds)]
    except ValueError:
        stage_seeds = [-1]
    if any(k < 0 for k in stage_seeds):
        raise ValueError(f"--stage-seeds {a.stage_seeds!r}: comma-separated conversion seeds >= 0, or none")
    if a.windows < 2:
        raise ValueError(f"--windows must be >= 2 (an interval needs two windows), got {a.windows}")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.deadline is not None and a.deadline <= 0:
        raise ValueError(f"--deadline must be > 0 seconds, got {a.deadline}")
    if a.jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (conversions side by side), got {a.jobs}")
    if a.teacher is None:
        raise ValueError("--teacher: the teacher's folder is needed to run the grid (or give --summary-only)")
    for m in mixers:  # the recipe with every override, so that a bad --set fails now
        load_recipe(a.recipe, [f"budget={a.budget}", f"fusion={a.fusion}", f"mixer={m}", *a.overrides])
    return {"recipe": a.recipe, "overrides": a.overrides, "budget": a.budget, "fusion": a.fusion, "data": a.data,
            "eval_data": a.eval_data, "tasks": tasks, "lengths": lengths, "depths": depths, "samples": a.samples,
            "windows": a.windows, "stage_seeds": stage_seeds, "mixers": mixers, "selectors": selectors, "seeds": a.seeds, "device": device}


def load_state(folder: Path) -> dict | None:
    path = folder / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def save_state(folder: Path, state: dict) -> None:
    """state.json (written whole, then renamed: a call killed mid-write leaves the last one) and the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(folder / STATE)
    rows, stages = summary_rows(state), stage_rows(state)
    (folder / SUMMARY).write_text(json.dumps(rows, indent=1) + "\n")
    if stages:
        (folder / STAGES).write_text(json.dumps(stages, indent=1) + "\n")
    (folder / SUMMARY_MD).write_text(summary_markdown(state, rows) + stage_markdown(state, stages))


def unit_key(mixer: str, selector: str, seed: int) -> str:
    return f"{mixer}/{selector}/seed{seed}"


def _entries(report: dict, model: str) -> list[dict]:
    """A report's exact-match entries of one model, as much as pairing and pooling need."""
    keep = ("task", "length", "depth", "samples", "successes", "correct", "prompts")
    return [{k: e[k] for k in keep} for e in report["results"] if e["model"] == model and e["metric"] == "exact_match"]


def _perplexity(report: dict, model: str) -> list[dict]:
    """A report's perplexity entries of one model (per bucket, with per-window NLLs and the windows' fingerprint)."""
    keep = ("length", "length_from", "samples", "value", "nll", "ci_low", "ci_high", "window_nll", "windows")
    return [{k: e[k] for k in keep} for e in report["results"] if e["model"] == model and e["metric"] == "perplexity"]


class Grid:
    def __init__(self, a: argparse.Namespace, settings: dict, state: dict | None, argv: list[str] | None = None):
        self.a, self.settings, self.t0 = a, settings, time.monotonic()
        self.argv = list(sys.argv[1:] if argv is None else argv)  # a lane's command is this one's, re-pointed
        self.device = settings["device"]
        self.state_dir, self.work = Path(a.state), Path(a.work)
        # an intra-layer grid's conversions (their recipes differ in `fusion`, stage 1 too) apart from an inter one's
        self.root = self.work / "intra" if settings["fusion"] == "intra" else self.work
        sha = check_weights(a.teacher, a.teacher_sha256)
        if sha is None:
            raise ValueError(f"--teacher {a.teacher} holds no *.safetensors: the grid needs a local teacher folder")
        recorded = (state or {}).get("teacher", {}).get("weights_sha256")
        if recorded is not None and sha != recorded:
            raise ValueError(f"--teacher {a.teacher} has weights sha256 {sha}, but {self.state_dir} was made with "
                             f"{recorded}: bring that teacher, or use a new --state")
        # prompts per depth, resolved once and kept: a later call on another kind of device draws the same prompts
        settings["samples"] = (settings["samples"] or (state or {}).get("settings", {}).get("samples")
                               or default_samples(self.device, len(settings["depths"])))
        if state is not None:
            for k in ADDED_SETTINGS:
                state["settings"].setdefault(k, settings[k])
            old = {k: state["settings"].get(k, "inter" if k == "fusion" else None) for k in SETTINGS}
            diff = [k for k in SETTINGS if old[k] != settings[k]]
            if diff:
                detail = ", ".join(f"{k}: {old[k]!r} -> {settings[k]!r}" for k in diff[:3])
                raise ValueError(f"{self.state_dir} holds a grid of other settings ({detail}); use a new --state")
        config = json.loads((Path(a.teacher) / "config.json").read_text())
        self.trained = int(config["max_position_embeddings"])
        self.kv_groups = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        self.state = state or {"settings": {k: settings[k] for k in SETTINGS}, "units": {}}
        kept = {k: v for k, v in self.state.get("teacher", {}).items() if k in ("eval", "parameters")}
        self.state["teacher"] = {"name": Path(a.teacher).name, "path": str(a.teacher), "weights_sha256": sha,
                                 "trained_context": self.trained, **kept}
        self.state["settings"].update(mixers=settings["mixers"], selectors=settings["selectors"],
                                      seeds=settings["seeds"])

    def left(self) -> float:
        return math.inf if self.a.deadline is None else self.a.deadline - (time.monotonic() - self.t0)

    def eval_config(self, models: list[Path], names: list[str], out: Path,
                    suites: list[str] | None = None) -> EvalConfig:
        s = self.settings
        return EvalConfig(models=[str(m) for m in models], names=names, out=str(out),
                          suites=suites or [*s["tasks"], "perplexity"],
                          lengths=[round(m * self.trained) for m in s["lengths"]], depths=s["depths"],
                          samples=s["samples"], windows=s["windows"], data=s["eval_data"], seed=0,
                          device=str(self.device), progress=False, command=" ".join(sys.argv))

    def teacher_eval(self) -> None:
        """The teacher's recall and perplexity, once; a state from before perplexity gets the teacher's alone."""
        teacher = self.state["teacher"]
        if "eval" in teacher and "perplexity" in teacher:
            return
        out = self.work / "teacher-eval"
        run_eval(self.eval_config([Path(self.a.teacher)], ["teacher"], out,
                                  suites=["perplexity"] if "eval" in teacher else None))
        report = json.loads((out / "report.json").read_text())
        if "eval" not in teacher:
            teacher["eval"] = {"entries": _entries(report, "teacher"), "samples": report["meta"]["samples"],
                               "device": report["meta"]["device"]}
            teacher["parameters"] = report["meta"]["models"][0]["parameters"]
        teacher["perplexity"] = _perplexity(report, "teacher")
        save_state(self.state_dir, self.state)

    def estimate(self, mixer: str, selector: str, seed: int) -> float:
        """Seconds the next conversion should take (`estimate_seconds` on what this grid has measured)."""
        s = self.settings
        return estimate_seconds(self.state["units"].values(), mixer, selector,
                                stage1_done=self.stage1_done(mixer, seed), stage_table=seed in s["stage_seeds"],
                                halo_evaluations=self.kv_groups if s["fusion"] == "intra" else 1,
                                select_scale=selection_scale(s["recipe"], s["overrides"], selector))

    def oversized(self, need: float) -> bool:
        """Whether a conversion estimated at `need` seconds is longer than this whole call (--deadline) while the call
        has just begun: it starts anyway (no call would ever start it otherwise), stopped at the deadline with a
        checkpoint of the stage in training (`stopped_at_deadline`), and the next call on this machine goes on."""
        return self.a.deadline is not None and need > self.a.deadline and self.left() >= 0.9 * self.a.deadline

    @contextlib.contextmanager
    def stopped_at_deadline(self, margin: float = 15.0):
        """Inside: a SIGTERM to this process once the deadline (less `margin`) has passed, so that the training loop
        ends its step with a checkpoint and raises `Preempted` (distill.loop.stop_on_signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGALRM, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
        signal.setitimer(signal.ITIMER_REAL, max(1.0, self.left() - margin))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def stage1_done(self, mixer: str, seed: int) -> bool:
        return (self.stage1_dir(mixer, seed) / "stages" / "align" / "done.json").is_file()

    def stage1_estimate(self, mixer: str) -> float:
        """Seconds stage 1 alone should take on this machine."""
        return stage1_seconds(self.state["units"].values(), mixer) + DEFAULT_SECONDS["overhead"]

    def conversion(self, mixer: str, seed: int, out: Path, *overrides: str) -> Conversion:
        """(mixer, seed)'s conversion into `out` with the grid's recipe, data, device and teacher, plus `overrides`."""
        s = self.settings
        base = [f"budget={s['budget']}", f"fusion={s['fusion']}", f"mixer={mixer}", *s["overrides"], f"seed={seed}"]
        return Conversion(self.a.teacher, out, load_recipe(s["recipe"], [*base, *overrides]), data=s["data"],
                          device=self.device, teacher_sha256=self.state["teacher"]["weights_sha256"])

    def stage1_conversion(self, mixer: str, seed: int) -> Conversion:
        """The stage 1 that (mixer, seed)'s selectors share."""
        return self.conversion(mixer, seed, self.stage1_dir(mixer, seed))

    def stage1_dir(self, mixer: str, seed: int) -> Path:
        return self.root / mixer / f"seed{seed}" / "stage1"

    def run_unit(self, mixer: str, selector: str, seed: int) -> dict:
        t0 = time.perf_counter()
        a, s = self.a, self.settings
        shared = self.stage1_conversion(mixer, seed)
        align(shared)
        conv = self.conversion(mixer, seed, self.root / mixer / f"seed{seed}" / selector, f"selector={selector}")
        if not conv.done("align"):
            shutil.copytree(shared.stage_dir("align"), conv.stage_dir("align"), dirs_exist_ok=True)
        convert(conv)
        key = unit_key(mixer, selector, seed)
        t_eval = time.perf_counter()
        run_eval(self.eval_config([conv.out], [key.replace("/", "-")], conv.out / "eval"))
        report = json.loads((conv.out / "eval" / "report.json").read_text())
        entries = _entries(report, key.replace("/", "-"))
        teacher = {(e["task"], e["length"], e["depth"]): e["prompts"] for e in self.state["teacher"]["eval"]["entries"]}
        other = [e for e in entries if teacher.get((e["task"], e["length"], e["depth"])) != e["prompts"]]
        if other:
            raise ValueError(f"{key} was scored on other prompts than the teacher (e.g. {other[0]['task']} at "
                             f"{other[0]['length']}): a tokenizer or settings differ; use a new --state")
        perplexity = _perplexity(report, key.replace("/", "-"))
        windows = {e["windows"] for e in [*perplexity, *self.state["teacher"]["perplexity"]]}
        if len(windows) > 1:
            raise ValueError(f"{key} was scored on other perplexity windows than the teacher ({sorted(windows)}): a "
                             f"tokenizer or settings differ; use a new --state")
        sel = conv.done("select")
        stages = {st: conv.done(st) for st in ("align", "distill", "finetune")}
        t_stages = time.perf_counter()
        by_stage, stage_ppl = self.stage_entries(conv, mixer, seed, key) if seed in s["stage_seeds"] else (None, None)
        stage_eval = {"stage_eval_seconds": time.perf_counter() - t_stages} if by_stage else {}
        record = {"mixer": mixer, "selector": selector, "seed": seed, "layers": sel["layers"], "groups": sel.get("groups"),
                  "tokens": {st: r["result"]["tokens"] for st, r in stages.items() if r},
                  "stage_seconds": {st: r["result"]["seconds"] for st, r in stages.items() if r},
                  "select_tokens": sel.get("tokens"), "select_seconds": sel.get("seconds"), "lanes": a.jobs,
                  "device": device_name(conv.device), "eval_seconds": t_stages - t_eval, **stage_eval,
                  "seconds": time.perf_counter() - t0,
                  "stage1_sha256": weights_sha256(shared.stage_dir("align") / "model"),
                  "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "entries": entries,
                  "perplexity": perplexity,
                  **({"stages": by_stage, "stage_perplexity": stage_ppl} if by_stage else {})}
        for folder in (conv.out / "stages", shared.out / "stages"):  # resume state no longer needed: free the disk
            for ckpt in folder.glob("*/checkpoints"):
                shutil.rmtree(ckpt, ignore_errors=True)
        return record

    def stage_entries(self, conv: Conversion, mixer: str, seed: int, key: str) -> tuple[dict, dict]:
        """Per stage before the last (aligned, selected, distilled) the student's recall entries on the teacher's
        prompts and its perplexity on the teacher's windows; aligned taken from a conversion of the same stage 1 that
        has it."""
        sha = weights_sha256(conv.stage_dir("align") / "model")
        stages, ppl = {}, {}
        for u in self.state["units"].values():
            if (u["mixer"], u["seed"], u.get("stage1_sha256")) == (mixer, seed, sha) and "aligned" in u.get("stages", {}) \
                    and "aligned" in u.get("stage_perplexity", {}):
                stages["aligned"], ppl["aligned"] = u["stages"]["aligned"], u["stage_perplexity"]["aligned"]
                break
        out = conv.out / "stage-eval"
        models = [(n, p) for n, p in stage_models(conv.out, self.a.teacher, out, str(conv.device))
                  if n not in stages and n != "finetuned"]
        if models:
            run_eval(self.eval_config([p for _, p in models], [n for n, _ in models], out))
            report = json.loads((out / "report.json").read_text())
            teacher = {(e["task"], e["length"], e["depth"]): e["prompts"]
                       for e in self.state["teacher"]["eval"]["entries"]}
            windows = {e["windows"] for e in self.state["teacher"]["perplexity"]}
            for name, _ in models:
                stages[name], ppl[name] = _entries(report, name), _perplexity(report, name)
                if any(teacher.get((e["task"], e["length"], e["depth"])) != e["prompts"] for e in stages[name]):
                    raise ValueError(f"{key}: its {name} stage was scored on other prompts than the teacher")
                if {e["windows"] for e in ppl[name]} - windows:
                    raise ValueError(f"{key}: its {name} stage was scored on other perplexity windows than the teacher")
        return ({n: stages[n] for n in STAGE_ORDER if n in stages}, {n: ppl[n] for n in STAGE_ORDER if n in ppl})

    def run(self) -> bool:
        """Every conversion of the grid not yet in the state, as far as the deadline allows; True when all are in."""
        self.state.setdefault("calls", []).append({**provenance(), "device": device_name(self.device)})
        save_state(self.state_dir, self.state)
        if self.left() < DEFAULT_SECONDS["eval"] and "eval" not in self.state["teacher"]:
            print(f"stopped: {self.left():.0f} s left, not enough for the teacher's evaluation; run again")
            return False
        self.teacher_eval()
        s = self.settings
        todo = [(m, sel, k) for m in s["mixers"] for k in range(s["seeds"]) for sel in s["selectors"]
                if unit_key(m, sel, k) not in self.state["units"]]
        if self.a.lane is not None:
            todo = [t for t in todo if f"{t[0]}:{t[2]}" == self.a.lane]
        elif self.a.jobs > 1:
            return self.run_lanes(todo)
        for mixer, selector, seed in todo:
            need = self.estimate(mixer, selector, seed)
            over = need > self.left() and self.oversized(need)
            if need > self.left() and not over:
                print(f"stopped before {unit_key(mixer, selector, seed)}: {self.left():.0f} s left, ~{need:.0f} s "
                      f"needed; {len(todo) - todo.index((mixer, selector, seed))} conversions to go: run again")
                if not self.stage1_done(mixer, seed) and self.stage1_estimate(mixer) <= self.left():
                    # a conversion longer than what is left, stage 1 included, may be longer than any call: its
                    # stage 1 now, so that the next call on this machine has only the rest to fit
                    print(f"--- stage 1 of {mixer}/seed{seed} alone (~{self.stage1_estimate(mixer):.0f} s)", flush=True)
                    align(self.stage1_conversion(mixer, seed))
                return False
            print(f"--- {unit_key(mixer, selector, seed)} (~{need:.0f} s; {self.left():.0f} s left"
                  + ("; longer than any call: stopped at the deadline, continued by the next call on this machine)"
                     if over else ")"), flush=True)
            with self.stopped_at_deadline() if over else contextlib.nullcontext():
                unit = self.run_unit(mixer, selector, seed)
            self.state["units"][unit_key(mixer, selector, seed)] = unit
            save_state(self.state_dir, self.state)
        print(f"grid complete: {len(self.state['units'])} conversions in {self.state_dir / SUMMARY}")
        return True

    def lane_argv(self, mixer: str, seed: int, folder: Path) -> list[str]:
        """This call's arguments for the lane of (mixer, seed): its own state folder and what is left of the
        deadline."""
        drop, argv, skip = {"--state", "--deadline", "--lane"}, [], False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg in drop:
                skip = True
            elif arg.split("=", 1)[0] not in drop:
                argv.append(arg)
        argv += ["--state", str(folder), "--lane", f"{mixer}:{seed}"]
        if self.a.deadline is not None:
            argv += ["--deadline", f"{max(1.0, self.left()):.0f}"]
        return argv

    def merge(self, folder: Path) -> int:
        """The conversions a lane's state holds that this one does not yet: added and saved; how many."""
        lane = load_state(folder)
        new = {k: u for k, u in (lane or {}).get("units", {}).items() if k not in self.state["units"]}
        if new:  # in the grid's order (mixer, selector, seed) whichever lane lands first, as one process writes them
            units = {**self.state["units"], **new}
            mixers, selectors = self.state["settings"]["mixers"], self.state["settings"]["selectors"]

            def rank(key: str) -> tuple:  # a mixer or selector of an earlier call's settings after this call's
                u = units[key]
                return (mixers.index(u["mixer"]) if u["mixer"] in mixers else len(mixers),
                        selectors.index(u["selector"]) if u["selector"] in selectors else len(selectors), u["seed"])

            self.state["units"] = {k: units[k] for k in sorted(units, key=rank)}  # sorted is stable
            save_state(self.state_dir, self.state)
        return len(new)

    def run_lanes(self, todo: list[tuple[str, str, int]], poll: float = 5.0) -> bool:
        """`todo`'s (mixer, seed) groups in up to --jobs lane processes; a group starts while its first conversion
        fits the deadline. True when every conversion is in the state."""
        groups = list(dict.fromkeys((m, k) for m, _, k in todo))
        root = self.root / "lanes"
        running: dict[tuple[str, int], tuple[subprocess.Popen, Path]] = {}
        failed: list[str] = []
        env = dict(os.environ)
        if self.device.type == "cpu":  # the lanes share the cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.a.jobs))
        try:
            while groups or running:
                while groups and len(running) < self.a.jobs:
                    mixer, seed = groups[0]
                    first = next(sel for m, sel, k in todo if (m, k) == (mixer, seed))
                    need = self.estimate(mixer, first, seed)
                    if not self.stage1_done(mixer, seed):  # the lane runs stage 1 alone where that is all that fits
                        need = min(need, self.stage1_estimate(mixer))
                    if need > self.left() and not self.oversized(need):
                        print(f"stopped before the lane {mixer}/seed{seed}: {self.left():.0f} s left, ~{need:.0f} s "
                              f"needed; run again", flush=True)
                        groups = []
                        break
                    groups.pop(0)
                    folder = root / f"{mixer}-seed{seed}"
                    folder.mkdir(parents=True, exist_ok=True)
                    save_state(folder, self.state)  # the teacher's evaluation and what is done: the lane's start
                    log = open(folder / "lane.log", "a", buffering=1)
                    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                             *self.lane_argv(mixer, seed, folder)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
                    log.close()
                    running[(mixer, seed)] = (proc, folder)
                    print(f"--- lane {mixer}/seed{seed} -> {folder / 'lane.log'} ({self.left():.0f} s left)",
                          flush=True)
                time.sleep(poll if running else 0)
                for key, (proc, folder) in list(running.items()):
                    landed = self.merge(folder)
                    if landed:
                        print(f"lane {key[0]}/seed{key[1]}: {landed} conversion(s) in", flush=True)
                    if proc.poll() is not None:
                        del running[key]
                        self.merge(folder)
                        if proc.returncode not in (0, STOPPED, 128 + signal.SIGTERM, 128 + signal.SIGINT):
                            failed.append(str(folder / "lane.log"))
        finally:
            for proc, _ in running.values():  # an interrupted parent stops its lanes (each keeps its checkpoints)
                proc.terminate()
                proc.wait()
        if failed:
            print(f"lanes failed (exit status other than 0 and {STOPPED}): {', '.join(failed)}", flush=True)
        left = [t for t in todo if unit_key(*t) not in self.state["units"]]
        if left:
            print(f"{len(left)} conversions to go: run again")
            return False
        print(f"grid complete: {len(self.state['units'])} conversions in {self.state_dir / SUMMARY}")
        return True


def _longest(values, default: float) -> float:
    values = [v for v in values if v is not None]
    return max(values) if values else default


def stage1_seconds(units, mixer: str) -> float:
    """Stage 1 of `mixer`: the longest measured (a fresh machine's compiling and autotuning included), else the
    default."""
    return _longest([u["stage_seconds"].get("align") for u in units if u["mixer"] == mixer], DEFAULT_SECONDS["stage1"])


def selection_scale(recipe: str, overrides: list[str], selector: str) -> float:
    """How much more selection work `overrides` ask of `selector` than `recipe` does (1: as the recipe; PUBLISHED=1's
    FlashMorph at 20M tokens against gpu-small's 1.2M: ~16)."""
    base, grid = load_recipe(recipe).select, load_recipe(recipe, overrides).select
    sizes = {"flashmorph": ("flashmorph_tokens",), "halo": ("halo_examples", "halo_lm_sequences"),
             "kl_guided": ("kl_tokens",)}.get(selector, ())
    return max([getattr(grid, f) / getattr(base, f) for f in sizes if getattr(base, f)], default=1.0)


def estimate_seconds(units, mixer: str, selector: str, stage1_done: bool, stage_table: bool,
                     halo_evaluations: int = 1, select_scale: float = 1.0) -> float:
    """Seconds a conversion of `mixer` by `selector` should take, part by part, each the longest this grid has
    measured for the mixer (its first conversion on a machine included: compiling and autotuning its kernels fall in
    stage 1), else DEFAULT_SECONDS: stage 1 (0 when done on this machine), selection, distill and finetune, the
    evaluation, the stage table's evaluations (`stage_table`), and loading. A selector not yet measured on this mixer
    takes the larger of its default times `select_scale` (`selection_scale`: the grid's selection sizes against the
    recipe's, which the defaults are of) and another mixer's measured selection scaled by how much longer this mixer's
    evaluation ran (selection runs the student as the evaluation does). Over-estimates cost a call's tail; an
    under-estimate runs past the deadline into the call's timeout."""
    units = list(units)
    mine = [u for u in units if u["mixer"] == mixer]
    stage1 = 0.0 if stage1_done else stage1_seconds(mine, mixer)
    train = _longest([u["stage_seconds"].get("distill", 0) + u["stage_seconds"].get("finetune", 0) for u in mine],
                     DEFAULT_SECONDS["train"])
    evaluation = _longest([u.get("eval_seconds") for u in mine], DEFAULT_SECONDS["eval"])
    stages = _longest([u.get("stage_eval_seconds") for u in mine], evaluation) if stage_table else 0.0
    measured = [u.get("select_seconds") for u in mine if u["selector"] == selector]
    if any(v is not None for v in measured):
        select = _longest(measured, 0.0)
    else:
        select = DEFAULT_SECONDS["select"].get(selector, 150) * (halo_evaluations if selector == "halo" else 1)
        select *= select_scale  # the defaults are of the recipe's sizes; this grid's measurements of its own
        for u in units:
            if u["mixer"] != mixer and u["selector"] == selector and u.get("select_seconds") and u.get("eval_seconds"):
                select = max(select, u["select_seconds"] * evaluation / u["eval_seconds"])
    return stage1 + select + train + evaluation + stages + DEFAULT_SECONDS["overhead"]


def summary_rows(state: dict) -> list[dict]:
    """One row per conversion, task and length (module docstring)."""
    teacher = state["teacher"]
    if "eval" not in teacher:
        return []
    trained = teacher["trained_context"]
    selectors = state["settings"].get("selectors") or []
    entries = [{**e, "model": "teacher", "metric": "exact_match"} for e in teacher["eval"]["entries"]]
    for key, u in state["units"].items():
        entries += [{**e, "model": key, "metric": "exact_match"} for e in u["entries"]]
    params = teacher.get("parameters")
    rows = []
    for key, u in state["units"].items():
        baseline = unit_key(u["mixer"], selectors[0], u["seed"]) if selectors else None
        tokens = sum(u["tokens"].values())
        for task in dict.fromkeys(e["task"] for e in u["entries"]):
            for n in sorted({e["length"] for e in u["entries"] if e["task"] == task}):
                r, t = pooled(entries, key, task, n), pooled(entries, "teacher", task, n)
                row = {"teacher": teacher["name"], "teacher_sha256": teacher["weights_sha256"], "mixer": u["mixer"],
                       "budget": float(state["settings"]["budget"]),
                       "fusion": state["settings"].get("fusion", "inter"), "selector": u["selector"], "seed": u["seed"],
                       "task": task, "length": n / trained, "length_tokens": n, "n": r["n"],
                       "successes": r["successes"], "recall": r["recall"], "ci_low": r["ci_low"],
                       "ci_high": r["ci_high"], "teacher_recall": t["recall"] if t else None,
                       "teacher_n": t["n"] if t else None, "teacher_ci_low": t["ci_low"] if t else None,
                       "teacher_ci_high": t["ci_high"] if t else None,
                       "p_vs_teacher": (paired(entries, key, "teacher", task, n) or {}).get("p")}
                if baseline and baseline != key and baseline in state["units"]:
                    row[f"p_vs_{selectors[0]}"] = paired(entries, key, baseline, task, n)["p"]
                rows.append({**row, **_unit_fields(u, tokens, params)})
        ppl_teacher = {e["length"]: e for e in teacher.get("perplexity", [])}
        for e in u.get("perplexity", []):
            t = ppl_teacher.get(e["length"])
            row = {"teacher": teacher["name"], "teacher_sha256": teacher["weights_sha256"], "mixer": u["mixer"],
                   "budget": float(state["settings"]["budget"]), "fusion": state["settings"].get("fusion", "inter"),
                   "selector": u["selector"], "seed": u["seed"], "task": "perplexity", "length": e["length"] / trained,
                   "length_tokens": e["length"], "length_from": e["length_from"], "n": e["samples"],
                   "perplexity": e["value"], "ci_low": e["ci_low"], "ci_high": e["ci_high"],
                   "teacher_perplexity": t["value"] if t else None, "teacher_ci_low": t["ci_low"] if t else None,
                   "teacher_ci_high": t["ci_high"] if t else None,
                   "p_vs_teacher": paired_permutation_p(e["window_nll"], t["window_nll"]) if t else None}
            b = state["units"].get(baseline, {}) if baseline and baseline != key else {}
            other = {x["length"]: x for x in b.get("perplexity", [])}.get(e["length"])
            if other is not None:
                row[f"p_vs_{selectors[0]}"] = paired_permutation_p(e["window_nll"], other["window_nll"])
            rows.append({**row, **_unit_fields(u, tokens, params)})
    return rows


def _unit_fields(u: dict, tokens: int, params: int | None) -> dict:
    """A summary row's fields about the conversion (the same on its recall and perplexity rows)."""
    return {"tokens": tokens, "tokens_per_parameter": tokens / params if params else None,
            "select_tokens": u["select_tokens"], "select_gpu_s": u["select_seconds"], "lanes": u.get("lanes", 1),
            "layers": u["layers"], "stage1_sha256": u.get("stage1_sha256"), "device": u["device"],
            "commit": u["commit"]}


def stage_rows(state: dict) -> list[dict]:
    """Per conversion with a stage table, stage (teacher first, finetuned last), task and length: recall pooled over
    depths with its Wilson interval, McNemar's p against the stage before it and against the teacher; then per
    perplexity bucket the same stages' perplexity, the paired sign-flip p in place of McNemar's."""
    teacher = state["teacher"]
    if "eval" not in teacher:
        return []
    trained = teacher["trained_context"]
    rows = []
    for key, u in state["units"].items():
        if "stages" not in u:
            continue
        models = {**u["stages"], "finetuned": u["entries"]}
        entries = [{**e, "model": "teacher", "metric": "exact_match"} for e in teacher["eval"]["entries"]]
        for name, es in models.items():
            entries += [{**e, "model": name, "metric": "exact_match"} for e in es]
        for task in dict.fromkeys(e["task"] for e in u["entries"]):
            for n in sorted({e["length"] for e in u["entries"] if e["task"] == task}):
                previous = None
                for name in ("teacher", *[m for m in STAGE_ORDER if m in models]):
                    r = pooled(entries, name, task, n)
                    row = {"mixer": u["mixer"], "selector": u["selector"], "seed": u["seed"], "stage": name,
                           "task": task, "length": n / trained, "length_tokens": n, **r}
                    if name != "teacher":
                        row["p_vs_teacher"] = paired(entries, name, "teacher", task, n)["p"]
                        if previous is not None:
                            row["p_vs_previous"] = paired(entries, name, previous, task, n)["p"]
                        previous = name
                    rows.append(row)
        # perplexity after each stage, on the teacher's windows (grids since it was measured per stage)
        if not u.get("stage_perplexity") or not teacher.get("perplexity"):
            continue
        ppl = {"teacher": teacher["perplexity"], **u["stage_perplexity"], "finetuned": u.get("perplexity", [])}
        for length in [e["length"] for e in ppl["teacher"]]:
            at = {name: next((e for e in es if e["length"] == length), None) for name, es in ppl.items()}
            previous = None
            for name in ("teacher", *[m for m in STAGE_ORDER if at.get(m)]):
                e = at[name]
                row = {"mixer": u["mixer"], "selector": u["selector"], "seed": u["seed"], "stage": name,
                       "task": "perplexity", "length": length / trained, "length_tokens": length,
                       "length_from": e["length_from"], "n": e["samples"], "perplexity": e["value"],
                       "ci_low": e["ci_low"], "ci_high": e["ci_high"]}
                if name != "teacher":
                    row["p_vs_teacher"] = paired_permutation_p(e["window_nll"], at["teacher"]["window_nll"])
                    if previous is not None:
                        row["p_vs_previous"] = paired_permutation_p(e["window_nll"], at[previous]["window_nll"])
                    previous = name
                rows.append(row)
    return rows


def _stage_table(rows: list[dict], cols: list[tuple], col_of, value) -> list[str]:
    """Rows of a stage table: the teacher, then each conversion's stages in order; `cols` the column keys, `col_of`
    a row's column key, `value` a cell's text before its p against the stage before."""
    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        return value(r) + (f" (p prev {fmt_p(r['p_vs_previous'])})" if "p_vs_previous" in r else "")

    at = {(r["mixer"], r["selector"], r["seed"], r["stage"], col_of(r)): r for r in rows}
    conversions = list(dict.fromkeys((r["mixer"], r["selector"], r["seed"]) for r in rows))
    lines = ["| | teacher | " + " | ".join(cell(at.get((*conversions[0], "teacher", c))) for c in cols) + " |"]
    for conversion in conversions:
        for stage in (st for st in STAGE_ORDER if any((*conversion, st, c) in at for c in cols)):
            lines.append(f"| {'/'.join(map(str, conversion[:2]))}/seed{conversion[2]} | {stage} | "
                         + " | ".join(cell(at.get((*conversion, stage, c))) for c in cols) + " |")
    return lines


def stage_markdown(state: dict, rows: list[dict]) -> str:
    """summary.md's stage tables: each conversion's recall after each stage, with McNemar's p against the stage
    before, and its perplexity after each stage, with the paired sign-flip p."""
    ppl_rows = [r for r in rows if r["task"] == "perplexity"]
    rows = [r for r in rows if r["task"] != "perplexity"]
    if not rows:
        return ""
    cols = list(dict.fromkeys((r["task"], r["length"]) for r in rows))
    lines = ["", "## Recall after each stage", "",
             "aligned: stage 1's all-linear model; selected: attention restored in the selected layers (or groups), "
             "before distill; distilled; finetuned: the conversion. Exact match over the depths [Wilson 95%]; "
             "(p prev: McNemar against the stage before, on the same prompts).", "",
             "| conversion | stage | " + " | ".join(f"{t} @ {m:g}x" for t, m in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    lines += _stage_table(rows, cols, lambda r: (r["task"], r["length"]),
                          lambda r: f"{100 * r['recall']:.0f}% [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}]")
    if ppl_rows:
        buckets = list(dict.fromkeys((r["length_from"], r["length_tokens"], r["length"]) for r in ppl_rows))
        lines += ["", "## Perplexity after each stage", "",
                  f"On the teacher's {ppl_rows[0]['n']} held-out windows, tokens by context position [bootstrap 95% "
                  "over windows]; (p prev: paired sign-flip test of the per-window NLLs against the stage before).", "",
                  "| conversion | stage | " + " | ".join(f"tokens {a}-{b} ({m:g}x)" for a, b, m in buckets) + " |",
                  "|---" * (len(buckets) + 2) + "|"]
        lines += _stage_table(ppl_rows, [b for _, b, _ in buckets], lambda r: r["length_tokens"],
                              lambda r: f"{r['perplexity']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
    return "\n".join(lines) + "\n"


def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)


def summary_markdown(state: dict, rows: list[dict]) -> str:
    """Per mixer and selector, each task and length: the mean recall over seeds ± its standard deviation [min-max],
    and that mean as a share of the teacher's recall."""
    t = state["teacher"]
    lines = ["# Conversion quality on one teacher", "",
             f"Teacher `{t['name']}` (weights sha256 `{t['weights_sha256'][:16]}`, trained context "
             f"{t['trained_context']}); settings: `{json.dumps(state['settings'])}`.", ""]
    ppl_rows = [r for r in rows if r["task"] == "perplexity"]
    rows = [r for r in rows if r["task"] != "perplexity"]
    if not rows:
        return "\n".join(lines + ["No conversion evaluated yet."]) + "\n"
    cols = list(dict.fromkeys((r["task"], r["length"]) for r in rows))
    lines += ["Exact match, mean over seeds ± sample standard deviation [min-max] (seeds), then the mean as a share "
              "of the teacher's recall. Each seed's rate, interval and McNemar p are in summary.json.", "",
              "| mixer | selector | " + " | ".join(f"{task} @ {m:g}x" for task, m in cols) + " |",
              "|---" * (len(cols) + 2) + "|"]
    teacher = {(r["task"], r["length"]): r for r in rows}
    lines.append("| teacher | | " + " | ".join(
        f"{100 * teacher[c]['teacher_recall']:.0f}% [{100 * teacher[c]['teacher_ci_low']:.0f}, "
        f"{100 * teacher[c]['teacher_ci_high']:.0f}] n={teacher[c]['teacher_n']}" for c in cols) + " |")
    for mixer, selector in dict.fromkeys((r["mixer"], r["selector"]) for r in rows):
        cells = []
        for task, m in cols:
            xs = [r for r in rows if (r["mixer"], r["selector"], r["task"], r["length"]) == (mixer, selector, task, m)]
            if not xs:
                cells.append("-")
                continue
            mean, sd = _mean_sd([r["recall"] for r in xs])
            lo, hi = min(r["recall"] for r in xs), max(r["recall"] for r in xs)
            share = f", {mean / xs[0]['teacher_recall']:.0%} of teacher" if xs[0]["teacher_recall"] else ""
            cells.append(f"{100 * mean:.0f}%" + (f" ± {100 * sd:.0f}" if sd is not None else "")
                         + f" [{100 * lo:.0f}-{100 * hi:.0f}] ({len(xs)}){share}")
        lines.append(f"| {mixer} | {selector} | " + " | ".join(cells) + " |")
    if ppl_rows:
        buckets = list(dict.fromkeys((r["length_from"], r["length_tokens"], r["length"]) for r in ppl_rows))
        lines += ["", f"Perplexity on {ppl_rows[0]['n']} held-out windows by context position (the teacher's with its "
                  "95% bootstrap interval over windows), mean over seeds ± standard deviation; each seed's interval "
                  "and paired p in summary.json.", "",
                  "| mixer | selector | " + " | ".join(f"tokens {a + 1}-{b} ({m:g}x)" for a, b, m in buckets) + " |",
                  "|---" * (len(buckets) + 2) + "|"]
        first = {r["length_tokens"]: r for r in ppl_rows}
        lines.append("| teacher | | " + " | ".join(
            f"{first[b]['teacher_perplexity']:.3f} [{first[b]['teacher_ci_low']:.3f}, {first[b]['teacher_ci_high']:.3f}]"
            if first[b]["teacher_perplexity"] is not None else "-" for _, b, _ in buckets) + " |")
        for mixer, selector in dict.fromkeys((r["mixer"], r["selector"]) for r in ppl_rows):
            cells = []
            for _, b, _ in buckets:
                xs = [r["perplexity"] for r in ppl_rows
                      if (r["mixer"], r["selector"], r["length_tokens"]) == (mixer, selector, b)]
                mean, sd = _mean_sd(xs) if xs else (None, None)
                cells.append("-" if mean is None else f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
                             + f" ({len(xs)})")
            lines.append(f"| {mixer} | {selector} | " + " | ".join(cells) + " |")
    calls = state.get("calls", [])
    if calls:
        last = calls[-1]
        lines += ["", f"{len(calls)} call(s); the last: `{last.get('command')}` at commit {last.get('commit')} on "
                  f"{last.get('device')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """0: the grid is complete (or the summary written); STOPPED: stopped at --deadline; 2: bad input; 128 + the
    signal: stopped by SIGTERM or Ctrl-C with a checkpoint of the step in training (run again to continue)."""
    from hybridize.cli import dump_stacks_on_sigusr1, raise_on_sigterm

    dump_stacks_on_sigusr1()  # a `timeout -s USR1` then shows where an overrunning conversion was
    a = parse_args(argv)
    try:
        if a.summary_only:
            state = load_state(Path(a.state))
            if state is None:
                raise ValueError(f"--state {a.state} holds no {STATE}")
            save_state(Path(a.state), state)
            print(Path(a.state) / SUMMARY)
            return 0
        settings = check_args(a)
        grid = Grid(a, settings, load_state(Path(a.state)), argv)
    except ValueError as err:
        print(f"quality_grid: error: {err}", file=sys.stderr)
        return 2
    from hybridize.distill.loop import Preempted

    previous = raise_on_sigterm()  # SIGTERM outside a training loop: through the `finally` blocks, exit 143
    try:
        return 0 if grid.run() else STOPPED
    except Preempted as stopped:  # the state holds every conversion recorded before it
        print(f"quality_grid: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:  # outside training (evaluation, the lanes' parent): the state as last saved
        print("quality_grid: interrupted; the state holds every conversion recorded before it", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
