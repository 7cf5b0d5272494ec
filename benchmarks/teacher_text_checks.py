r"""Three checks behind results/cpu-teacher-text/ (and the held-out evaluations of the `small` teacher), in one file:

1. the sizes of the built-in texts (`builtin` and `stdlib-code`, and their splits) on this Python;
2. the teacher's training-time held-out evaluation (`heldout_lm` on `heldout_windows`) and the comparison's
   (`perplexity_by_length` on `perplexity_windows`) agree when they score the same windows, and differ by which
   text they score (per-window perplexities shown);
3. whether a retrained teacher's weights are bit-identical to a reference (the shipped tiny teacher).

    python benchmarks/teacher_text_checks.py --teacher src/hybridize/assets/teacher-tiny \
        --retrained /tmp/tinyexp/A --out results/cpu-teacher-text/checks.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hybridize.data import sources
from hybridize.metrics.perplexity import (heldout_lm, heldout_windows, perplexity_by_length, perplexity_windows,
                                          token_nll)
from hybridize.provenance import provenance


def text_sizes() -> dict:
    parts = {"builtin": sources.builtin_corpus(), "builtin:train": sources.builtin_split("train"),
             "builtin:heldout": sources.builtin_split("heldout"),
             "stdlib-code": tuple(c for c, _ in sources.stdlib_code()),
             "stdlib-code:train": sources.stdlib_code_split("train"),
             "stdlib-code:heldout": sources.stdlib_code_split("heldout")}
    sizes = {k: {"documents": len(v), "characters": sum(map(len, v))} for k, v in parts.items()}
    sizes["stdlib-code / builtin (characters)"] = sizes["stdlib-code"]["characters"] / sizes["builtin"]["characters"]
    return sizes


def evaluations(teacher: str) -> dict:
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    tok = AutoTokenizer.from_pretrained(teacher)
    n = model.config.max_position_embeddings
    train_time = heldout_windows(tok, "builtin:heldout", n, 16)  # what the teacher scores while it trains
    comparison = perplexity_windows(tok, sources.iter_documents("builtin:heldout"), 4 * n, 8)  # compare_selectors'
    by_length = perplexity_by_length(model, comparison, [n, 2 * n, 4 * n], progress=False)
    return {"length": n,
            "train_time_eval (16 windows)": heldout_lm(model, train_time)["heldout_ppl"],
            "comparison_eval @1x (8 windows)": by_length[0]["perplexity"],
            "train_time_eval on the comparison's windows": heldout_lm(model, comparison[:, :n + 1])["heldout_ppl"],
            "train_time_eval per window": [math.exp(x) for x in token_nll(model, train_time).mean(1).tolist()]}


def same_weights(a: str, b: str) -> bool:
    x, y = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="reference teacher (its held-out evaluations, check 2)")
    p.add_argument("--retrained", default=None, help="a teacher retrained with the reference's recipe (check 3)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    record = {**provenance(), "command": " ".join(sys.argv), "device": "cpu", "seed": 0,
              "text_sizes": text_sizes(), "evaluations": evaluations(a.teacher)}
    if a.retrained:
        record["weights_bit_identical"] = {"reference": a.teacher, "retrained": a.retrained,
                                           "identical": same_weights(a.teacher, a.retrained)}
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k in ("text_sizes", "evaluations", "weights_bit_identical")},
                     indent=1))


if __name__ == "__main__":
    main()
