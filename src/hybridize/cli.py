"""`hybridize` command line: a thin layer over the package's functions.

Every user mistake ends with one line on stderr (`hybridize: error: ...`) and a non-zero exit; tracebacks are kept
for our own bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading

from .names import LAYER_FUSIONS, LINEAR_MIXER_NAMES, PLACEMENTS


class UserError(Exception):
    """A problem with the user's input: reported in one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line too (`hybridize <command> --help` prints the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, teacher=args.teacher, retrain_teacher=args.retrain_teacher, mixer=args.mixer,
             device=args.device, samples=args.samples, overrides=args.overrides, command=args.command)


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 2,5,9, got {text!r}") from None


def _stage_list(text: str) -> list[str]:
    return [] if text.strip() == "none" else [s.strip() for s in text.split(",") if s.strip()]


def _add_conversion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder (config.json + safetensors + "
                   "tokenizer) or hub id")
    p.add_argument("--teacher-sha256", metavar="HEX", default=None, help="refuse to run unless the teacher's "
                   "weights hash (sha256 of its tensors: teacher.json and source-teacher.json record it) starts "
                   "with HEX")
    p.add_argument("--out", default=None, help="output folder: the final model, and stages/<stage>/ run folders "
                   "(required but with --plan)")
    p.add_argument("--recipe", default=None, help="built-in recipe name or YAML file (default: smoke, a setup check)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set distill.lr=3e-5 (repeatable)")
    p.add_argument("--data", nargs="+", default=None, help="text files, folders, .jsonl, .parquet, or HF dataset "
                   "names (default: the recipe's, else the built-in offline corpus)")
    p.add_argument("--mixer", choices=LINEAR_MIXER_NAMES, default=None, metavar="NAME",
                   help="linear mixer of the layers that leave attention (default: the recipe's): %(choices)s")
    p.add_argument("--fusion", choices=["inter", "intra"], default=None,
                   help="inter: whole layers keep attention (default); intra: KV-head groups keep it and every layer "
                   "splits its heads between attention and the mixer (--budget then counts groups)")
    p.add_argument("--budget", default=None, help="attention layers to keep: a fraction (0.25) or a count (7); with "
                   "--fusion intra, KV-head groups of all layers")
    p.add_argument("--keep-layers", type=_layer_list, default=None, help="explicit attention layers, e.g. 2,5,9")
    p.add_argument("--selector", default=None, help="layer selector (default: the recipe's)")
    p.add_argument("--no-hype", action="store_true", help="keep RoPE in attention, no query scaling or output gate, "
                   "no RoPE in the mixers")
    p.add_argument("--seed", type=int, default=None, help="seed of the data order and of the fresh weights (gates, "
                   "decays, norms) each stage creates (default: the recipe's, 0 in the built-in ones)")
    p.add_argument("--eval-data", nargs="+", default=None, help="held-out text scored while stages 1-3 train "
                   "(alignment MSE, KL to the teacher, CE: eval/* in the metrics and done.json), e.g. builtin:heldout "
                   "when training on builtin:train; it does not change the weights (default: none)")
    p.add_argument("--eval-every", type=_non_negative_int, default=None,
                   help="steps between held-out evaluations (default: a tenth of each stage)")
    p.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    p.add_argument("--teacher-placement", choices=["auto", "replicated", "sharded"], default="auto",
                   help="under torchrun, the frozen teacher on each GPU: whole (replicated: no all-gathers, faster) or "
                   "sharded per block like the student; auto: replicated when the memory plan fits, else sharded")
    p.add_argument("--plan", action="store_true", help="print the memory plan (GiB per GPU of each stage: teacher, "
                   "student, gradients, optimizer, activations, logits chunk) and exit; reads no weights, so --teacher "
                   "may also be a built-in shape (qwen3-1.7b, qwen3-8b, qwen3-32b, ...)")
    p.add_argument("--gpus", type=_positive_int, default=None,
                   help="--plan: GPUs to plan for (default: torchrun's processes, else 1)")
    p.add_argument("--shard-size", type=_positive_int, default=None, help="--plan: GPUs that shard one copy of the "
                   "models (HSDP: HYBRIDIZE_SHARD_SIZE under torchrun; default: all of them)")
    p.add_argument("--gpu-memory", type=_positive_float, default=None, help="GiB of one GPU: a run whose plan needs "
                   "more stops before any work (default: the CUDA device's total memory; on the CPU no check)")


def _recipe(args: argparse.Namespace):
    from .pipeline import load_recipe

    overrides = list(args.overrides)
    for flag, key in (("mixer", "mixer"), ("budget", "budget"), ("selector", "selector"), ("seed", "seed"),
                      ("fusion", "fusion")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.keep_layers is not None:
        overrides.append(f"keep_layers={args.keep_layers}")
    if args.no_hype:
        overrides.append("hype=false")
    if args.recipe is None:
        print("hybridize: recipe 'smoke' (a quick setup check, not a quality recipe; give --recipe "
              "halo-qwen3-1.7b or your own YAML for a real conversion)", file=sys.stderr)
    return load_recipe(args.recipe, overrides)


def _memory_plan(args: argparse.Namespace, recipe, stages: list[str] | None, device: str, memory: int | None):
    """The memory plan of this command (`pipeline.plan`) for `device` ("cuda" or "cpu") with `memory` bytes per GPU
    (None: no fit verdict)."""
    from .distributed import requested_world, shard_size_from_env
    from .pipeline.plan import load_teacher_config, memory_plan

    name, config = load_teacher_config(args.teacher)
    gpus = args.gpus or requested_world()
    shard = args.shard_size or shard_size_from_env(gpus)
    return memory_plan(config, recipe, world=gpus, shard=shard, device=device, stages=stages,
                       teacher_placement=args.teacher_placement, device_memory=memory, teacher_name=name)


def _run_device(args: argparse.Namespace) -> str:
    import torch

    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).type


def _conversion(args: argparse.Namespace, stages: list[str] | None = None):
    """The conversion of a command, after its memory plan was checked against the GPU (before any work)."""
    from .pipeline import Conversion

    from .pipeline.plan import device_memory

    if args.out is None:
        raise UserError("--out is required (the output folder); only --plan runs without it")
    recipe = _recipe(args)
    device = _run_device(args)
    memory = device_memory(device, args.gpu_memory)  # CUDA's total memory, --gpu-memory, or None on the CPU
    plan = None
    if memory is not None:
        try:
            plan = _memory_plan(args, recipe, stages, device, memory)
        except (ValueError, OSError):  # a bad teacher, layer or stage: the conversion says so in its own words
            plan = None
    if plan is not None and plan.over():
        worst = max(plan.over(), key=lambda s: s.peak)
        raise UserError(f"memory plan: stage {worst.stage} needs {worst.peak / 2**30:.1f} GiB per GPU, more than "
                        f"{plan.device_memory * 0.9 / 2**30:.1f} GiB (90% of {plan.device_memory / 2**30:.0f}) on "
                        f"{plan.world} GPU(s); see --plan, then use more GPUs or lower {worst.stage}.micro_batch_size")
    return Conversion(teacher=args.teacher, out=args.out, recipe=recipe, data=args.data, device=args.device,
                      eval_data=_eval_data(args, default=None), eval_every=args.eval_every,
                      teacher_placement=args.teacher_placement, teacher_sha256=args.teacher_sha256)


def _print_plan(args: argparse.Namespace, stages: list[str] | None) -> None:
    """`--plan`: the table, for the GPUs of `--device` (default CUDA: the plan is for GPU runs)."""
    from .distributed import is_main

    from .pipeline.plan import device_memory

    device = "cpu" if args.device is not None and args.device.startswith("cpu") else "cuda"
    # the fit verdict's figure: --gpu-memory, else this machine's GPU (none when planning from a machine without one)
    memory = device_memory(device, args.gpu_memory) if args.gpu_memory is not None or device == "cuda" else None
    plan = _memory_plan(args, _recipe(args), stages, device, memory)
    if is_main():
        print(plan.table())


def _convert(args: argparse.Namespace) -> None:
    from .distributed import is_main
    from .pipeline import convert

    if args.plan:
        return _print_plan(args, args.stages)
    out = convert(_conversion(args, args.stages), args.stages)
    if is_main():
        print(f"hybridize: wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True) "
              "loads it, hybridize installed or not (its code is in the folder)")


def _one_stage(stage: str):
    def run(args: argparse.Namespace) -> None:
        from .distributed import is_main
        from .pipeline import stages

        if args.plan:
            return _print_plan(args, [stage])
        conv = _conversion(args, [stage])
        record = stages.RUNNERS[stage](conv)
        if stage in ("distill", "finetune"):
            stages.export(conv, [stage])
        if is_main():
            shown = record.get("result", {k: record[k] for k in ("layers",) if k in record})
            print(f"hybridize: {stage} done: " + json.dumps(shown))

    return run


def _eval_data(args: argparse.Namespace, default):
    """--eval-data as given; `default` without it; None (no evaluation) for `--eval-data none` or --eval-every 0."""
    if args.eval_every == 0 or args.eval_data == ["none"]:
        return None
    return default if args.eval_data is None else args.eval_data


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _teacher(args: argparse.Namespace) -> None:
    from .teacher.train import EVAL_DEFAULT, train_teacher

    result = train_teacher(args.size, args.out, args.overrides, data=args.data, device=args.device,
                           max_minutes=args.max_minutes, data_workers=args.data_workers,
                           eval_data=_eval_data(args, default=EVAL_DEFAULT), eval_every=args.eval_every or None)
    if result.finished:
        print(f"hybridize: teacher written to {args.out} ({result.steps} steps, {result.tokens:,} tokens)")
    else:
        print(f"hybridize: stopped after {args.max_minutes} minutes with a checkpoint; run the same command again "
              "to continue")


def _pretrain(args: argparse.Namespace) -> None:
    from .distributed import is_main
    from .pretrain import build_recipe, pretrain
    from .pretrain.train import EVAL_DEFAULT

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    recipe = build_recipe(args.preset, args.config, mixer=args.mixer, ratio=args.ratio, fusion=args.fusion,
                          placement=args.placement, overrides=overrides, data=args.data)
    result = pretrain(recipe, args.out, device=args.device, max_minutes=args.max_minutes,
                      data_workers=args.data_workers, eval_data=_eval_data(args, default=EVAL_DEFAULT),
                      eval_every=args.eval_every or None)
    if not is_main():
        return
    if result.finished:
        print(f"hybridize: wrote {args.out} ({result.steps} steps, {result.tokens:,} tokens; load it with "
              "AutoModelForCausalLM.from_pretrained after `import hybridize`)")
    else:
        print(f"hybridize: stopped after {args.max_minutes} minutes with a checkpoint; run the same command again "
              "to continue")


def _add_from_scratch_args(p: argparse.ArgumentParser, what: str, no_eval_data: str) -> None:
    """Options `hybridize pretrain` and `hybridize sweep` share."""
    p.add_argument("--out", required=True, help=f"output folder ({what}); the same command continues there")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field: model.<config field>, train.<field> or a data-mix field, e.g. "
                   "--set train.tokens=1000000 --set episode_rows=4 (repeatable)")
    p.add_argument("--data", nargs="+", default=None, help="training text (default: the recipe's)")
    p.add_argument("--eval-data", nargs="+", default=None,
                   help="held-out text (default: builtin:heldout when training on builtin:train and / or "
                   f"stdlib-code:train, else {no_eval_data})")
    p.add_argument("--max-minutes", type=_non_negative_float, default=None,
                   help="stop after this long with a checkpoint; the same command continues")
    p.add_argument("--data-workers", type=_non_negative_int, default=None,
                   help="processes drawing retrieval episodes ahead of the GPU (default: up to 8 on CUDA, 0 on "
                   "the CPU); the batches do not depend on it")
    p.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train any hybrid (or Transformer) from scratch: a preset or a recipe file, "
                       "any mixer, ratio, placement, inter- or intra-layer")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", default=None, metavar="FILE",
                        help="recipe file (.json / .yaml): {\"model\": {config fields}, \"train\": {...}, data-mix "
                        "fields}")
    source.add_argument("--preset", default=None, metavar="NAME",
                        help="a named recipe: sweep sizes tiny, mini, small (a Transformer unless --ratio) or the "
                        "teachers teacher-tiny, teacher-small, teacher-base")
    p.add_argument("--mixer", default=None, metavar="NAME",
                   help=f"linear mixer of the layer mix: {', '.join(LINEAR_MIXER_NAMES)}")
    p.add_argument("--ratio", default=None, help="transformer, all-linear, or N:1 (N linear layers per attention "
                   "layer, e.g. 3:1)")
    p.add_argument("--fusion", default=None, metavar="|".join(LAYER_FUSIONS),
                   help="inter: whole layers are attention (default); intra: every layer keeps the same share of its "
                   "KV-head groups as attention beside the mixer")
    p.add_argument("--placement", default=None, metavar="|".join(PLACEMENTS),
                   help="inter-layer attention: uniform (each closes a group of layers, never the first; default) "
                   "or middle (spread over the middle half)")
    p.add_argument("--seed", type=int, default=None, help="data order, episodes and initial weights (default: the "
                   "recipe's)")
    _add_from_scratch_args(p, "the model, pretrain.json, run/ with metrics, TensorBoard and checkpoints",
                           "none; 'none': no evaluation")
    p.add_argument("--eval-every", type=_non_negative_int, default=None,
                   help="steps between held-out evaluations (default: a twentieth of the run; 0: off)")
    p.set_defaults(func=_pretrain)


def _sweep(args: argparse.Namespace) -> None:
    from .sweep import SweepConfig, run_sweep

    def spec(items):  # one data item as a string, so that a later run naming it the same way matches
        return items[0] if items and len(items) == 1 else items

    cfg = SweepConfig(out=args.out, size=args.size, mixers=args.mixers or [], ratios=args.ratios, fusions=args.fusion,
                      placements=args.placement, seeds=args.seeds, overrides=list(args.overrides), data=spec(args.data),
                      eval_data=spec(args.eval_data), tasks=args.tasks, lengths=args.lengths, samples=args.samples,
                      eval_windows=args.eval_windows, jobs=args.jobs, device=args.device,
                      max_minutes=args.max_minutes, data_workers=args.data_workers, command=args.command)
    result = run_sweep(cfg)
    done = len(result.cells) - len(result.remaining)
    print(f"hybridize: {done} of {len(result.cells)} cells done; {args.out}/sweep.json holds {len(result.rows)} rows, "
          f"{args.out}/README.md the table and figures")
    if result.failed_lanes:
        raise UserError(f"{len(result.failed_lanes)} lane(s) stopped with an error: see {', '.join(result.failed_lanes)}")
    if result.remaining:
        print(f"hybridize: {len(result.remaining)} cells left ({', '.join(result.remaining[:4])}"
              f"{', ...' if len(result.remaining) > 4 else ''}); run the same command again to continue")


def _names_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="the design-space grid: every mixer x ratio (x fusion x placement x seed) trained "
                       "from scratch on the same tokens and seed, scored on held-out perplexity and recall with 95%% "
                       "intervals; sweep.json, README.md and figures; resumable cell by cell")
    p.add_argument("--mixers", type=_names_list, default=None, metavar="NAME[,NAME...]",
                   help=f"linear mixers: {', '.join(LINEAR_MIXER_NAMES)}")
    p.add_argument("--ratios", type=_names_list, required=True, metavar="R[,R...]",
                   help="linear : attention, e.g. all-linear,24:1,12:1,6:1,3:1,transformer (N:1 = N linear layers per "
                   "attention layer)")
    p.add_argument("--fusion", type=_names_list, default=["inter"], metavar="F[,F...]",
                   help=f"{','.join(LAYER_FUSIONS)}: whole attention layers, or the same share of KV-head groups inside "
                   "every layer (default inter)")
    p.add_argument("--placement", type=_names_list, default=["uniform"], metavar="P[,P...]",
                   help=f"{','.join(PLACEMENTS)}: where inter-layer attention goes (default uniform: each closes a "
                   "group of layers, never the first; middle: spread over the middle half)")
    p.add_argument("--size", required=True, help="the cells' shape and training: tiny (CPU check), mini (the GPU "
                   "grid of `benchmarks/gpu_run.sh sweep-grid`), small")
    p.add_argument("--seeds", type=_positive_int, default=1, help="cells per mix, seeds s .. s + N - 1 from the "
                   "recipe's seed (default 1)")
    p.add_argument("--tasks", type=_names_list, default=["passkey", "niah_single_2", "mqar"],
                   help="recall tasks (default passkey,niah_single_2,mqar: the sizes' training episodes)")
    p.add_argument("--lengths", type=_int_list, default=[1, 2, 4],
                   help="recall and perplexity at these multiples of the training length (default 1,2,4)")
    p.add_argument("--samples", type=_positive_int, default=16, help="prompts per task and length (default 16)")
    p.add_argument("--eval-windows", type=_positive_int, default=8,
                   help="held-out windows of the longest length (default 8)")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="cells trained side by side on the device, each in a process of its own (default 1)")
    _add_from_scratch_args(p, "sweep.json, README.md, figures, cells/<cell>/", "required")
    p.set_defaults(func=_sweep)


def _int_list(text: str) -> list[int]:
    """Comma-separated token counts, with K = 1024: "4K,8192" -> [4096, 8192]."""
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        scale = 1024 if part[-1] in "kK" else 1
        try:
            values.append(int(part[:-1] if scale > 1 else part) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers like 4K,8192, got {text!r}") from None
    return values


def _mixer_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in LINEAR_MIXER_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown mixer {', '.join(bad) or repr(text)}; allowed: "
                                         f"{', '.join(LINEAR_MIXER_NAMES)}")
    return names


def _bench(args: argparse.Namespace) -> None:
    from .bench import run_bench, run_train_bench

    model = args.config or args.model
    command = args.command
    if args.profile and not args.train:
        raise SystemExit("hybridize bench: --profile profiles a distillation step; add --train")
    if args.largest_batch and args.train:
        raise SystemExit("hybridize bench: --largest-batch searches decode batches; leave out --train")
    if args.train:
        if len(args.mixer) != 1:
            raise SystemExit("hybridize bench: --train measures one mixer; give one name to --mixer")
        run_train_bench(model, args.out, budget=args.budget, mixer=args.mixer[0], seq_len=args.seq_len,
                        batch=args.train_batch, accum=args.train_accum, steps=args.steps, device=args.device,
                        dtype=args.dtype, commit=args.commit, command=command, profile=args.profile)
    else:
        variants = args.variants
        if variants is None:
            from .bench import VARIANTS

            variants = [*VARIANTS[:1], "hybrid-intra", *VARIANTS[1:]] if args.fusion == "intra" else list(VARIANTS)
        run_bench(model, args.out, budget=args.budget, mixer=args.mixer, contexts=args.contexts,
                  batches=args.batches, variants=variants, device=args.device, dtype=args.dtype,
                  new_tokens=args.new_tokens, repeats=args.repeats, prefill_chunk=args.prefill_chunk,
                  largest_batch=args.largest_batch, gpu_memory=args.gpu_memory, commit=args.commit, command=command)
    print(f"hybridize: wrote {args.out}/{'train.json' if args.train else 'summary.json and latency.png'}")


def _add_bench(sub) -> None:
    from .bench.variants import ALL_VARIANTS, DTYPE_NAMES, VARIANTS

    bench = sub.add_parser("bench", help="speed of a hybrid vs its teacher: prefill latency, time per output token, "
                           "decode throughput, peak memory, each beside its roofline bound (--train: distillation "
                           "tokens/s and MFU)")
    bench.add_argument("--model", default="qwen3-1.7b", help="a built-in shape (qwen3-0.6b, qwen3-1.7b, llama-3.2-1b, "
                       "tiny), a .json file of HybridConfig fields, or a teacher checkpoint folder (config only: "
                       "weights are random)")
    bench.add_argument("--config", default=None, help="a .json file of HybridConfig fields (same as --model FILE)")
    bench.add_argument("--budget", default="0.25", help="attention layers of the hybrid, placed uniformly: a fraction "
                       "(0.25) or a count (7)")
    bench.add_argument("--mixer", type=_mixer_list, default=["lightning"], metavar="NAME[,NAME...]",
                       help="linear mixer(s) of the hybrid, each a hybrid row beside the same teacher rows: "
                       f"{', '.join(LINEAR_MIXER_NAMES)} (default lightning)")
    bench.add_argument("--contexts", type=_int_list, default=_int_list("4K,8K,16K,32K,64K,128K"),
                       help="context lengths (default 4K,8K,16K,32K,64K,128K)")
    bench.add_argument("--batches", type=_int_list, default=[1], help="batch sizes, e.g. 1,8,64 (default 1)")
    bench.add_argument("--variants", type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
                       default=None, help=f"subset of {','.join(ALL_VARIANTS)} (default: "
                       f"{','.join(VARIANTS)}; the -fused ones add fused input projections)")
    bench.add_argument("--fusion", choices=["inter", "intra"], default="inter",
                       help="intra: add the intra-layer hybrid of the same attention share (variant hybrid-intra: "
                       "every layer keeps that share of its KV-head groups) to the default variants")
    bench.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    bench.add_argument("--dtype", choices=list(DTYPE_NAMES), default="bfloat16",
                       help="weights, activations and caches (default: bfloat16)")
    bench.add_argument("--new-tokens", type=int, default=32, help="timed decode steps per measurement")
    bench.add_argument("--repeats", type=int, default=3, help="timed prefills per measurement (median)")
    bench.add_argument("--prefill-chunk", type=int, default=16384, help="tokens per prefill chunk (our engine)")
    bench.add_argument("--largest-batch", action="store_true", help="also find the largest batch that fits at each "
                       "context (doubling, then bisection; each try one prefill and a few decode steps), measure it "
                       "and add its tokens/s to the throughput table")
    bench.add_argument("--gpu-memory", type=_positive_float, default=None, metavar="GIB",
                       help="memory the run may use: on CUDA a cap the allocator enforces (an H100's total, about 79, "
                       "runs an H200 as an 80 GB H100); on the CPU the peak a --largest-batch try must stay under "
                       "(required there)")
    bench.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    bench.add_argument("--commit", default=None, help="commit measured (default: git rev-parse of the package)")
    bench.add_argument("--train", action="store_true", help="benchmark stage-2 distillation instead")
    bench.add_argument("--seq-len", type=int, default=512, help="--train: sequence length (default 512)")
    bench.add_argument("--train-batch", type=int, default=8, help="--train: sequences per step (default 8)")
    bench.add_argument("--train-accum", type=int, default=1, help="--train: micro-batches of --train-batch sequences "
                       "per optimizer step, as the recipes' batch_size / micro_batch_size (default 1)")
    bench.add_argument("--steps", type=int, default=5, help="--train: timed steps (default 5)")
    bench.add_argument("--profile", action="store_true", help="--train: profile one more step and split its time by "
                       "kind of work (matmul, attention, linear mixers, softmax / loss, optimizer, ...) into train.json")
    bench.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybridize", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job on the built-in default: convert the shipped tiny teacher "
                          "(attention kept in 2 of its 4 layers), evaluate teacher vs hybrid, measure their decode "
                          "speed and cache size on this machine, print the tables and write the report")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--teacher", default=None, help="a teacher folder instead of the shipped tiny teacher")
    demo.add_argument("--retrain-teacher", action="store_true", help="train the tiny teacher anew (a few minutes)")
    demo.add_argument("--mixer", default="lightning", choices=LINEAR_MIXER_NAMES, metavar="NAME",
                      help="linear mixer of the hybrid: %(choices)s (default %(default)s)")
    demo.add_argument("--samples", type=int, default=40, help="prompts per (task, length, depth) (default: 40, "
                      "120 per task and length over 3 depths)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field of the demo recipe, e.g. --set distill.tokens=100000")
    demo.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    demo.set_defaults(func=_demo)
    conv = sub.add_parser("convert", help="convert a Hugging Face Transformer into a hybrid (align, select, "
                          "distill, finetune)")
    _add_conversion_args(conv)
    conv.add_argument("--stages", type=_stage_list, default=None,
                      help="comma-separated subset of align,select,distill,finetune, or none (weight transfer alone)")
    conv.set_defaults(func=_convert)
    for stage, text in (("align", "stage 1: per-layer alignment of every layer's mixer to its teacher attention"),
                        ("select", "choose the layers that keep attention"),
                        ("distill", "stage 2: end-to-end KL distillation of the hybrid"),
                        ("finetune", "stage 3: long-context next-token finetuning")):
        p = sub.add_parser(stage, help=text)
        _add_conversion_args(p)
        p.set_defaults(func=_one_stage(stage))
    teacher = sub.add_parser("teacher", help="train a Qwen3-architecture teacher from scratch (corpus + synthetic "
                             "retrieval episodes)")
    teacher.add_argument("--size", choices=["tiny", "small", "base"], default="tiny",
                         help="tiny: 1M parameters, minutes on a CPU; small (67M) and base (316M): GPU recipes "
                         "(default: tiny)")
    teacher.add_argument("--out", required=True, help="output folder: the checkpoint, teacher.json, metrics and "
                         "checkpoints to resume from")
    teacher.add_argument("--data", nargs="+", default=None, help="training text (default: the built-in corpus)")
    teacher.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe field, e.g. --set train.lr=1e-3 (repeatable)")
    teacher.add_argument("--max-minutes", type=float, default=None,
                         help="stop after this long with a checkpoint; the same command continues")
    teacher.add_argument("--data-workers", type=_non_negative_int, default=None,
                         help="processes drawing retrieval episodes ahead of the GPU (default: up to 8 on CUDA, 0 on "
                         "the CPU); the batches do not depend on it")
    teacher.add_argument("--eval-data", nargs="+", default=None,
                         help="held-out text scored during training (default: builtin:heldout when training on "
                         "builtin:train and / or stdlib-code:train, else none; 'none': no evaluation); it does not "
                         "change the weights")
    teacher.add_argument("--eval-every", type=_non_negative_int, default=None,
                         help="steps between held-out evaluations (default: a twentieth of the run; 0: off)")
    teacher.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    teacher.set_defaults(func=_teacher)
    _add_pretrain(sub)
    _add_sweep(sub)
    _add_bench(sub)
    from .evaluation.cli import add_commands as add_evaluation_commands

    add_evaluation_commands(sub)
    return parser


# Commands that train data-parallel under torchrun (hybridize.distributed; a conversion's layer selection runs on rank
# 0 alone). The others (evaluation, benchmarks, the demo) would run whole on every rank and write the same files at
# once, so under torchrun they refuse instead.
DATA_PARALLEL = ("teacher", "pretrain", "convert", "align", "select", "distill", "finetune")
# lm-eval's HFLM splits the requests over the processes of `accelerate launch` itself: left to it
OWN_LAUNCHER = ("lm-eval",)


def _join_torchrun(subcommand: str) -> None:
    from .distributed import init_from_env, requested_world

    world = requested_world()
    if world <= 1 or subcommand in OWN_LAUNCHER:
        return
    if subcommand not in DATA_PARALLEL:
        raise UserError(f"`hybridize {subcommand}` runs in one process; under torchrun (WORLD_SIZE={world}) only "
                        f"{', '.join('`hybridize ' + c + '`' for c in DATA_PARALLEL)} trains data-parallel. Run it "
                        "without torchrun (one GPU)")
    init_from_env()


def dump_stacks_on_sigusr1() -> bool:
    """`kill -USR1 <pid>` prints every thread's Python stack to stderr and the run goes on: where a long run that has
    gone quiet is, when its log says nothing (a GPU row past its deadline). Returns whether it was registered:
    not on Windows, nor where stderr has no file descriptor (`main` called in-process under captured output)."""
    import faulthandler

    if not hasattr(signal, "SIGUSR1"):
        return False
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    except (AttributeError, ValueError):  # io.UnsupportedOperation (no fileno) is a ValueError
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that wait by spinning (torch's default) keep the cores busy while the other thread of a parallel
    # region is descheduled: on 2 cores shared with other processes (load ~5) a training step of the tiny teacher took
    # 6.6 s (median) with 2 threads against 1.2 s with passive waiting (results/cpu-demo/omp-wait.json). Set before
    # torch loads its OpenMP runtime (the parser imports no torch); an OMP_WAIT_POLICY already set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    dump_stacks_on_sigusr1()
    subcommand = args.command
    args.command = "hybridize " + shlex.join(sys.argv[1:] if argv is None else argv)  # recorded in results
    # SIGTERM (`kill`, `timeout`, a scheduler) ends a command through its `finally` blocks, as Ctrl-C does (workers
    # stopped, the process group destroyed); a training run stops at its step boundary with a checkpoint on either
    # (`distill.loop.stop_on_signals`)
    previous = raise_on_sigterm()
    try:
        _join_torchrun(subcommand)
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"hybridize: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .distill.loop import NonFiniteLoss, Preempted

        if isinstance(err, Preempted):
            print(f"hybridize: {err}", file=sys.stderr)
            return 128 + err.signum
        if not isinstance(err, NonFiniteLoss):
            raise
        print(f"hybridize: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hybridize: interrupted", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def raise_on_sigterm():
    """SIGTERM raises SystemExit(143) in the main thread; returns the handler it replaced (None off the main
    thread, where none can be installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":
    sys.exit(main())
