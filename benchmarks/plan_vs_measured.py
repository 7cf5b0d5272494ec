"""The memory plan (`hybridize convert --plan`) against the measured peak, stage by stage, on one device.

A teacher of a built-in shape (random weights, made here: speed and memory do not depend on their values; the shipped
tiny teacher's tokenizer, whose ids fit any vocabulary) is converted with a recipe for `--steps` optimizer steps of
`--accum` micro-batches per stage (align, a uniform selection, distill, finetune) by the pipeline's own stage
functions. Each stage's peak is the training loop's `torch.cuda.max_memory_allocated` over its steps (`done.json`),
which the plan's peak is compared with; a stage's checkpoints are deleted once it is done (a 1.7B stage writes ~20 GB
of them). Prints and writes `plan_vs_measured.json` (command, commit, device, one row per stage).

    python benchmarks/plan_vs_measured.py --shape qwen3-1.7b --recipe halo-qwen3-1.7b --out results/plan/qwen3-1.7b
    python benchmarks/plan_vs_measured.py --shape tiny --recipe smoke --device cpu --out /tmp/plan   # plan only

On the CPU nothing is measured (the rows say so): it checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import torch


TOKENIZER_SIZE = 2048  # the shipped tiny teacher's tokenizer


def shape_fields(shape: str) -> dict:
    """The shape's config fields; a vocabulary smaller than the tokenizer's (the `tiny` shape) is raised to it."""
    from hybridize.models.shapes import shape_config

    fields = shape_config(shape)
    fields["vocab_size"] = max(fields["vocab_size"], TOKENIZER_SIZE)
    return fields


def make_teacher(fields: dict, path: Path, device: torch.device) -> None:
    """A Hugging Face checkpoint of these config fields with random weights (bf16 on CUDA) and the tiny teacher's
    tokenizer."""
    from transformers import AutoModelForCausalLM

    from hybridize.bench.inference import hf_config
    from hybridize.models import HybridConfig

    config = hf_config(HybridConfig(**fields))

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):  # initialising a 1.7B model on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    tiny = resources.files("hybridize.assets").joinpath("teacher-tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if tiny.joinpath(name).is_file():
            shutil.copyfile(str(tiny.joinpath(name)), path / name)
    del model


def stage_overrides(recipe, steps: int, accum: int) -> list[str]:
    """Each training stage: `steps` optimizer steps of `accum` micro-batches of the recipe's (with accumulation the
    gradients are there in every forward but the first, as in the recipes' own)."""
    out = []
    for stage in ("align", "distill", "finetune"):
        r = getattr(recipe, stage)
        out += [f"{stage}.batch_size={accum * r.micro_batch_size}", f"{stage}.save_every={steps}",
                f"{stage}.tokens={steps * accum * r.micro_batch_size * r.seq_len}", f"{stage}.warmup_steps=0"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", help="built-in teacher shape (hybridize.models.shapes)")
    parser.add_argument("--recipe", default="halo-qwen3-1.7b")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per stage (default 2)")
    parser.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step (default 2)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--out", required=True, help="work folder; plan_vs_measured.json is written there")
    parser.add_argument("--data", default="builtin:train")
    args = parser.parse_args(argv)

    from hybridize.pipeline import Conversion, load_recipe, stages
    from hybridize.pipeline.plan import GiB, memory_plan
    from hybridize.provenance import device_name, git_commit
    from hybridize.models import HybridConfig

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    teacher_dir = out / "teacher"
    if not (teacher_dir / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        make_teacher(shape_fields(args.shape), teacher_dir, device)
    base = load_recipe(args.recipe, args.overrides)
    recipe = load_recipe(args.recipe, [*args.overrides, *stage_overrides(base, args.steps, args.accum),
                                       "selector=uniform"])
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    conv = Conversion(teacher=teacher_dir, out=run, recipe=recipe, data=args.data, device=device)
    for stage in ("align", "select", "distill", "finetune"):
        stages.RUNNERS[stage](conv)
        shutil.rmtree(conv.stage_dir(stage) / "checkpoints", ignore_errors=True)
    plan = memory_plan(HybridConfig(**shape_fields(args.shape)), recipe, world=1, device=device.type,
                       teacher_name=args.shape, stages=["align", "distill", "finetune"])
    rows = []
    for planned in plan.stages:
        done = json.loads((run / "stages" / planned.stage / "done.json").read_text())
        measured = done["result"]["peak_memory_gib"]
        rows.append({"stage": planned.stage, "tokens": planned.tokens, "planned_gib": planned.peak / GiB,
                     "measured_gib": measured,
                     "planned_over_measured": None if not measured else planned.peak / GiB / measured,
                     "terms_gib": {k: getattr(planned, k) / GiB for k in
                                   ("teacher", "student", "gradients", "optimizer", "activations", "logits")}})
    record = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "commit": git_commit(short=True), "device": device_name(device), "torch": torch.__version__,
              "shape": args.shape, "recipe": args.recipe, "overrides": args.overrides, "steps": args.steps,
              "accum": args.accum,
              "measured": "torch.cuda.max_memory_allocated over each stage's training loop" if device.type == "cuda"
              else "nothing (CPU): plan only", "seconds": time.perf_counter() - t0,
              "date": time.strftime("%Y-%m-%d %H:%M"), "stages": rows}
    (out / "plan_vs_measured.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
