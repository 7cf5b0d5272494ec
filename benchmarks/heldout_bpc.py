"""Bits per character of models on the same held-out text, comparable across tokenizers (perplexity per token is
not: a tokenizer that cuts the text into more tokens gets a lower per-token loss for the same model quality).

    python benchmarks/heldout_bpc.py TEACHER_A TEACHER_B --data builtin:heldout --chars 200000 --out bpc.json

The first `--chars` characters of the data's documents (joined by blank lines) are tokenized by each model's own
tokenizer and cut into consecutive windows of `--window` + 1 tokens, each scored from its own start; the summed
next-token loss is divided by the characters those windows decode to (the first token of each window is context
only: about 1 / (window + 1) of the characters for every model).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hybridize.data.sources import iter_documents
from hybridize.metrics.perplexity import token_nll
from hybridize.provenance import device_name, provenance


def score(path: str, text: str, window: int, device: str) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.encode(text, add_special_tokens=False)
    n = len(ids) // (window + 1)
    if n == 0:
        raise ValueError(f"{path}: {len(ids)} tokens, fewer than one window of {window + 1}; give more --chars")
    x = torch.tensor(ids[:n * (window + 1)]).view(n, window + 1)
    nll = torch.cat([token_nll(model, x[i:i + 16].to(device)).cpu() for i in range(0, n, 16)])
    chars = len(tok.decode(ids[:n * (window + 1)]))
    return {"windows": n, "tokens": n * (window + 1), "chars": chars, "chars_per_token": chars / (n * (window + 1)),
            "nll_per_token": nll.mean().item(), "ppl_per_token": math.exp(nll.mean().item()),
            "bits_per_char": nll.sum().item() / chars / math.log(2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data", default="builtin:heldout")
    p.add_argument("--chars", type=int, default=200_000)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    text = "\n\n".join(iter_documents(a.data))[:a.chars]
    record = {**provenance(), "command": " ".join(sys.argv), "device": device_name(a.device), "data": a.data,
              "chars": len(text), "window": a.window, "models": {}}
    for m in a.models:
        record["models"][m] = score(m, text, a.window, a.device)
        print(m, {k: round(v, 4) if isinstance(v, float) else v for k, v in record["models"][m].items()}, flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
