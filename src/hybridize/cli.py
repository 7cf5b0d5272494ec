"""`hybridize` command line: a thin layer over the package's functions.

Every user mistake ends with one line on stderr (`hybridize: error: ...`) and a non-zero exit; tracebacks are kept
for our own bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: reported in one line, no traceback."""


def _demo(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from .models import HybridConfig, HybridForCausalLM
    from .models.shapes import shape_config
    from .selection import resolve_budget, uniform_layers

    torch.manual_seed(args.seed)
    out = Path(args.out)
    L = 8
    attn = uniform_layers(L, resolve_budget(0.25, L))
    config = HybridConfig(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=L, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, qk_norm=True, tie_word_embeddings=True,
        layer_types=["full_attention" if i in attn else "linear_attention" for i in range(L)],
        linear_mixers=args.mixer, attention_rope=False, hype_a=500.0, attention_output_gate=True,
    )
    print(f"[1/4] a random {L}-layer hybrid: attention in layers {attn}, {args.mixer} elsewhere (HyPE on)")
    model = HybridForCausalLM(config).eval()
    model.save_pretrained(out / "model")
    print(f"[2/4] saved to {out / 'model'} (safetensors); reloading with transformers' AutoModelForCausalLM")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    prompts = [torch.randint(1, 512, (n,)) for n in (12, 5, 9)]
    T = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(T - len(p), dtype=torch.long), p]) for p in prompts])
    mask = (ids != 0).long()
    kw = dict(attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    t0 = time.perf_counter()
    cached = model.generate(ids, **kw)
    t1 = time.perf_counter()
    uncached = model.generate(ids, use_cache=False, **kw)
    t2 = time.perf_counter()
    same = torch.equal(cached, uncached)
    print(f"[3/4] greedy generation, 3 left-padded prompts x {args.new_tokens} tokens: with cache {t1 - t0:.2f}s, "
          f"without {t2 - t1:.2f}s, identical tokens: {same}")
    if not same:
        raise SystemExit("hybridize: error: cached and uncached generation differ (a bug: please report it)")
    print("[4/4] decode state per sequence, Qwen3-1.7B shape, bf16: Transformer vs 25% attention hybrid")
    shape = shape_config("qwen3-1.7b")
    layers = shape["num_hidden_layers"]
    keep = uniform_layers(layers, resolve_budget(0.25, layers))
    with torch.device("meta"):
        teacher = HybridForCausalLM(HybridConfig(**shape))
        hybrid = HybridForCausalLM(HybridConfig(
            **shape, layer_types=["full_attention" if i in keep else "linear_attention" for i in range(layers)],
            linear_mixers=args.mixer))
    print(f"  {'context':>8} {'Transformer':>12} {'hybrid':>10} {'ratio':>6}")
    for ctx in (4096, 32768, 131072, 524288):
        a, b = teacher.state_size(ctx, dtype=torch.bfloat16), hybrid.state_size(ctx, dtype=torch.bfloat16)
        print(f"  {ctx:>8} {a / 2**30:>10.2f}Gi {b / 2**30:>8.2f}Gi {b / a:>6.1%}")


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
    p.add_argument("--out", required=True, help="output folder: the final model, and stages/<stage>/ run folders")
    p.add_argument("--recipe", default=None, help="built-in recipe name or YAML file (default: smoke, a setup check)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set distill.lr=3e-5 (repeatable)")
    p.add_argument("--data", nargs="+", default=None, help="text files, folders, .jsonl, .parquet, or HF dataset "
                   "names (default: the recipe's, else the built-in offline corpus)")
    p.add_argument("--mixer", choices=["lightning", "gated_deltanet", "gla"], default=None)
    p.add_argument("--budget", default=None, help="attention layers to keep: a fraction (0.25) or a count (7)")
    p.add_argument("--keep-layers", type=_layer_list, default=None, help="explicit attention layers, e.g. 2,5,9")
    p.add_argument("--selector", default=None, help="layer selector (default: the recipe's)")
    p.add_argument("--no-hype", action="store_true", help="keep RoPE in attention, no query scaling or output gate, "
                   "no RoPE in the mixers")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")


def _conversion(args: argparse.Namespace):
    from .distill.recipe import load_recipe
    from .distill.stages import Conversion

    overrides = list(args.overrides)
    for flag, key in (("mixer", "mixer"), ("budget", "budget"), ("selector", "selector"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.keep_layers is not None:
        overrides.append(f"keep_layers={args.keep_layers}")
    if args.no_hype:
        overrides.append("hype=false")
    if args.recipe is None:
        print("hybridize: recipe 'smoke' (a quick setup check, not a quality recipe; give --recipe "
              "halo-qwen3-1.7b or your own YAML for a real conversion)", file=sys.stderr)
    recipe = load_recipe(args.recipe, overrides)
    return Conversion(teacher=args.teacher, out=args.out, recipe=recipe, data=args.data, device=args.device)


def _convert(args: argparse.Namespace) -> None:
    from .distill.stages import convert

    out = convert(_conversion(args), args.stages)
    print(f"hybridize: wrote {out} (load it with AutoModelForCausalLM.from_pretrained after `import hybridize`)")


def _one_stage(stage: str):
    def run(args: argparse.Namespace) -> None:
        from .distill import stages

        conv = _conversion(args)
        record = stages.RUNNERS[stage](conv)
        if stage in ("distill", "finetune"):
            stages.export(conv)
        print(f"hybridize: {stage} done: " + json.dumps(record.get("result", {k: record[k] for k in ("layers",)
                                                                              if k in record})))

    return run


def _teacher(args: argparse.Namespace) -> None:
    from .teacher import train_teacher

    result = train_teacher(args.size, args.out, args.overrides, data=args.data, device=args.device,
                           max_minutes=args.max_minutes)
    if result.finished:
        print(f"hybridize: teacher written to {args.out} ({result.steps} steps, {result.tokens:,} tokens)")
    else:
        print(f"hybridize: stopped after {args.max_minutes} minutes with a checkpoint; run the same command again "
              "to continue")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridize", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build, save, reload and generate with a small random hybrid model")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--mixer", default="lightning", choices=["lightning", "gated_deltanet", "gla"])
    demo.add_argument("--new-tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=0)
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
    teacher.add_argument("--size", choices=["tiny", "small", "base"], default="tiny")
    teacher.add_argument("--out", required=True)
    teacher.add_argument("--data", nargs="+", default=None, help="training text (default: the built-in corpus)")
    teacher.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe field, e.g. --set train.lr=1e-3 (repeatable)")
    teacher.add_argument("--max-minutes", type=float, default=None,
                         help="stop after this long with a checkpoint; the same command continues")
    teacher.add_argument("--device", default=None)
    teacher.set_defaults(func=_teacher)
    from .evaluation.cli import add_commands as add_evaluation_commands

    add_evaluation_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"hybridize: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .distill.loop import NonFiniteLoss

        if not isinstance(err, NonFiniteLoss):
            raise
        print(f"hybridize: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hybridize: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
