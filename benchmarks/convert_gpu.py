"""A conversion on the GPU, end to end, recording throughput, memory and losses per stage.

No pretrained weights can be downloaded on our GPU machine, so the teacher is made here: a Qwen3-architecture
model (8 layers, hidden 1024, 16 query heads x 128, 8 KV heads, vocab 32000: 0.16B parameters) with a BPE tokenizer
trained on the built-in corpus, pretrained for `--teacher-seconds` on that corpus (a short run: it is a language
model of Python's documentation, not a general one). It is then converted with `hybridize convert`.

    python benchmarks/convert_gpu.py --out results/gpu/convert --commit $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from hybridize.data import PackedSequences, SequenceLoader, builtin_corpus, tokenize_corpus
from hybridize.data.tokenizer import train_bpe_tokenizer


def make_teacher(path: Path, seconds: float, seed: int, device: str) -> dict:
    torch.manual_seed(seed)
    tok = train_bpe_tokenizer(builtin_corpus(), 32000)
    config = Qwen3Config(
        vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    corpus = tokenize_corpus(None, tok)
    loader = SequenceLoader(PackedSequences(corpus, 1024), 16, seed=seed, document_masking=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    t0, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        batch = next(loader).to(device)
        for g in opt.param_groups:  # warmup then flat
            g["lr"] = 1e-3 * min(1.0, (step + 1) / 100)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
    model.to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return {"parameters": params, "corpus_tokens": int(corpus.tokens.shape[0]), "steps": step,
            "tokens": step * 16 * 1024, "seconds": time.perf_counter() - t0,
            "loss_first": sum(losses[:10]) / 10, "loss_last": sum(losses[-10:]) / 10,
            "ppl_last": math.exp(sum(losses[-10:]) / 10)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mixer", default="gated_deltanet")
    ap.add_argument("--teacher-seconds", type=float, default=120)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe overrides (a dry run)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/hybridize-convert-gpu")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    teacher_dir, hybrid_dir = work / "teacher", work / "hybrid"
    teacher = make_teacher(teacher_dir, args.teacher_seconds, args.seed, args.device)
    print("teacher:", json.dumps(teacher), flush=True)
    recipe = Path(__file__).with_name("convert_gpu.yaml")
    cmd = [sys.executable, "-m", "hybridize.cli", "convert", "--teacher", str(teacher_dir), "--out", str(hybrid_dir),
           "--recipe", str(recipe), "--mixer", args.mixer, "--seed", str(args.seed), "--device", args.device,
           *[x for o in args.overrides for x in ("--set", o)]]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, text=True)
    if run.returncode:
        raise SystemExit(f"convert failed with exit code {run.returncode}")
    stages = {s: json.loads((hybrid_dir / "stages" / s / "done.json").read_text())
              for s in ("align", "select", "distill", "finetune")}
    record = {
        "command": "python benchmarks/convert_gpu.py --out OUT --mixer " + args.mixer,
        "convert_command": " ".join(["hybridize", *cmd[3:]]),
        "commit": args.commit,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__,
        "python": sys.version.split()[0], "seed": args.seed, "teacher": teacher,
        "convert_seconds": time.perf_counter() - t0, "stages": stages,
    }
    (out / "convert_run.json").write_text(json.dumps(record, indent=1))
    (out / "model_card.md").write_text((hybrid_dir / "README.md").read_text())
    for s in ("align", "distill", "finetune"):
        r = stages[s]["result"]
        print(f"{s:>9}: {r['steps']} steps, {r['tokens']:,} tokens, {r['tokens_per_s']:,.0f} tok/s, "
              f"loss {r['loss_first']:.4g} -> {r['loss_last']:.4g}, peak {r['peak_memory_gib'] or 0:.1f} GiB")


if __name__ == "__main__":
    main()
