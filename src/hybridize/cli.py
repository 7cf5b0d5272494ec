"""`hybridize` command line: a thin layer over the package's functions.

Every user mistake ends with one line on stderr (`hybridize: error: ...`) and a non-zero exit; tracebacks are kept
for our own bugs.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridize", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build, save, reload and generate with a small random hybrid model")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--mixer", default="lightning", choices=["lightning", "gated_deltanet", "gla"])
    demo.add_argument("--new-tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    from .evaluation.cli import add_commands as add_evaluation_commands

    add_evaluation_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"hybridize: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hybridize: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
