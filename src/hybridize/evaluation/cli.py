"""`hybridize eval` and `hybridize lm-eval`: argparse over `run_eval` and lm-eval's own command line."""

from __future__ import annotations

import argparse
import shlex


class MissingExtra(ValueError):
    """An optional dependency is not installed (a ValueError so that the CLI reports it in one line)."""


def add_commands(subparsers) -> None:
    from .suites import SUITES

    ev = subparsers.add_parser(
        "eval", help="teacher vs students: perplexity and synthetic recall (NIAH, passkey, MQAR), one report",
        description="Evaluate one or more models (and optionally their teacher) on identical tokens and write "
                    "report.md, report.json and figures into --out.")
    ev.add_argument("--model", action="append", default=[], metavar="DIR",
                    help="a model folder to evaluate; repeat to compare several students (or --stages)")
    ev.add_argument("--stages", metavar="CONVERSION",
                    help="a `hybridize convert` output folder: evaluate its student after each stage (all-linear "
                         "aligned, the selected hybrid before distill, after distill, after finetune) beside the "
                         "teacher it records, and write stages.md / stages.json: where recall is lost")
    ev.add_argument("--teacher", metavar="DIR", help="the teacher's folder (any AutoModelForCausalLM)")
    ev.add_argument("--suite", default=",".join(SUITES),
                    help=f"comma-separated suites ({', '.join(SUITES)}) or synthetic task names (default: all suites)")
    ev.add_argument("--lengths", default="1024,2048,4096",
                    help="context lengths in tokens, comma-separated; a K suffix means x1024 (e.g. 4K,32K)")
    ev.add_argument("--depths", default="0,0.25,0.5,0.75,1",
                    help="needle depths in [0, 1], comma-separated, or 'random' (default: 0,0.25,0.5,0.75,1)")
    ev.add_argument("--samples", type=int, default=None,
                    help="prompts per (task, length, depth), each with needles and values of its own (default: 200 "
                         "per task and length over the depths on CUDA, e.g. 67 x 3 depths; 8 per depth on the CPU)")
    ev.add_argument("--windows", type=int, default=None,
                    help="perplexity windows (default: --samples when given, else 8)")
    ev.add_argument("--teacher-sha256", metavar="HEX", default=None,
                    help="refuse to run unless the teacher's weights hash (sha256 of its tensors, as teacher.json "
                         "and every report record it) starts with HEX")
    ev.add_argument("--data", default=None, help="text for perplexity and for the haystacks (default: builtin corpus)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts and of the perplexity windows "
                    "(default: 0)")
    ev.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ev.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the teacher's, else the model's)")
    ev.add_argument("--batch-tokens", type=int, default=65536, help="tokens per batch (default: 65536)")
    ev.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ev.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on CUDA, float32 on the CPU")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=_eval)

    lm = subparsers.add_parser(
        "lm-eval", add_help=False, prefix_chars="\0",  # every argument, --help included, goes to lm-eval
        help="lm-eval's command line with our model registered as 'hybridize' (needs the [lm-eval] extra)",
        description="hybridize lm-eval ARGS... == lm_eval ARGS... with the model 'hybridize' registered")
    lm.add_argument("args", nargs=argparse.REMAINDER)
    lm.set_defaults(func=_lm_eval)


def parse_lengths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().upper()
        try:
            n = int(p[:-1]) * 1024 if p.endswith("K") else int(p)
        except ValueError:
            n = 0
        if n < 2:
            raise ValueError(f"--lengths must be comma-separated token counts >= 2 (e.g. 1024,4096 or 4K,32K), "
                             f"got {text!r}")
        out.append(n)
    return out


def parse_depths(text: str) -> list[float | None]:
    if text.strip() == "random":
        return [None]
    out = []
    for part in text.split(","):
        try:
            d = float(part)
        except ValueError:
            d = -1.0
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"--depths must be comma-separated fractions in [0, 1] or 'random', got {text!r}")
        out.append(d)
    return out


def _eval(args: argparse.Namespace) -> None:
    from .runner import EvalConfig, run_eval

    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    lengths, depths = parse_lengths(args.lengths), parse_depths(args.depths)
    argv = ["hybridize", "eval"]
    for m in args.model:
        argv += ["--model", m]
    for flag, value in (("--stages", args.stages), ("--teacher", args.teacher), ("--suite", ",".join(suites)),
                        ("--lengths", ",".join(map(str, lengths))), ("--depths", args.depths),
                        ("--samples", args.samples), ("--windows", args.windows), ("--data", args.data),
                        ("--seed", args.seed), ("--tokenizer", args.tokenizer), ("--batch-tokens", args.batch_tokens),
                        ("--device", args.device), ("--dtype", args.dtype), ("--teacher-sha256", args.teacher_sha256),
                        ("--out", args.out)):
        if value is not None:
            argv += [flag, str(value)]
    cfg = EvalConfig(
        models=args.model, stages=args.stages, out=args.out, teacher=args.teacher, suites=suites, lengths=lengths,
        depths=depths, samples=args.samples, windows=args.windows, data=args.data, seed=args.seed,
        tokenizer=args.tokenizer, batch_tokens=args.batch_tokens, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, command=shlex.join(argv), teacher_sha256=args.teacher_sha256,
    )
    if cfg.stages:
        from .stages import run_stage_eval

        paths = run_stage_eval(cfg)
    else:
        paths = run_eval(cfg)
    for path in paths:
        print(path)


def _lm_eval(args: argparse.Namespace) -> None:
    try:
        from .lm_eval_adapter import main
    except ImportError as err:
        raise MissingExtra(str(err)) from None
    main(args.args)
