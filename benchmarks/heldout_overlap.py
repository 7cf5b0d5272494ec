r"""How much of a held-out text also occurs, line for line, in training texts: a leak check for held-out evaluation.

    python benchmarks/heldout_overlap.py --heldout builtin:heldout --train builtin:train stdlib-code:train \
        --out results/cpu-teacher-text/heldout-overlap.json

Counts the held-out documents' lines of at least `--min-chars` characters (stripped) and the share of them found
verbatim in each training spec, and in any of them. Short lines (blank, `return x`, closing quotes) are common to any two
texts and say nothing, hence the floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from hybridize.data.sources import iter_documents
from hybridize.provenance import provenance


def long_lines(documents: Iterable[str], min_chars: int) -> list[str]:
    return [s for doc in documents for line in doc.splitlines() if len(s := line.strip()) >= min_chars]


def overlap(heldout: list[str], train: dict[str, list[str]], min_chars: int) -> dict:
    """{"lines", "in": {name: share of held-out lines also in that text}, "in_any"}."""
    held = long_lines(heldout, min_chars)
    if not held:
        raise ValueError(f"the held-out text has no line of {min_chars} or more characters; lower --min-chars")
    sets = {name: set(long_lines(docs, min_chars)) for name, docs in train.items()}
    found = {name: [line in s for line in held] for name, s in sets.items()}
    any_hit = [any(hits[i] for hits in found.values()) for i in range(len(held))]
    return {"lines": len(held), "in": {name: sum(h) / len(held) for name, h in found.items()},
            "in_any": sum(any_hit) / len(held)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heldout", default="builtin:heldout")
    p.add_argument("--train", nargs="+", default=["builtin:train", "stdlib-code:train"])
    p.add_argument("--min-chars", type=int, default=40)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    result = overlap(list(iter_documents(a.heldout)), {t: list(iter_documents(t)) for t in a.train}, a.min_chars)
    record = {**provenance(), "command": " ".join(sys.argv), "device": "cpu", "seed": None,  # nothing random
              "heldout": a.heldout,
              "min_chars": a.min_chars, **result}
    print(json.dumps({k: record[k] for k in ("heldout", "lines", "in", "in_any")}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
