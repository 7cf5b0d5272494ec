r"""One markdown table of mixer x budget rows from compare_selectors runs (their selectors.json): the teacher, then
per run the rows of the selectors asked for (all by default): layers, perplexity ratio per length, decode state at
the first length, exact-match recall per task and length. `benchmarks/gpu_run.sh mixer-rows` writes `mixers.md` with it.

    python benchmarks/mixers_table.py out/gpu/mixer-rows/*/selectors.json \
        --selectors uniform,flashmorph,all-linear --out out/gpu/mixer-rows/mixers.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ["passkey", "niah_single_2", "mqar"]


def pct(v):
    return "-" if v is None else f"{100 * v:.0f}%"


def mib(v):
    return "-" if v is None else f"{v / 2**20:.2f} MiB"


def table(records: list[dict], selectors: set[str] | None) -> str:
    lines: list[str] = []
    for rec in records:
        mixer = next((o.split("=", 1)[1] for o in rec["overrides"] if o.startswith("mixer=")), "lightning")
        ls = rec["lengths"]
        if not lines:
            head = (["mixer", "budget", "selector", "layers"] + [f"ppl ratio @{n}" for n in ls] + [f"state @{ls[0]}"]
                    + [f"{t} @{n}" for t in TASKS for n in ls])
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            t = rec["teacher_results"]
            lines.append("| teacher | 1 | - | all | " + " | ".join("1.000" for _ in ls)
                         + f" | {mib(t.get(f'state_bytes@{ls[0]}'))} | "
                         + " | ".join(pct(t.get(f"{k}@{n}")) for k in TASKS for n in ls) + " |")
        for r in rec["rows"]:
            if selectors and r["selector"] not in selectors:
                continue
            ratios = ["-" if r.get(f"perplexity_ratio@{n}") is None else f"{r[f'perplexity_ratio@{n}']:.3f}"
                      for n in ls]
            lines.append(f"| {mixer} | {rec['budget']} | {r['selector']} | {','.join(map(str, r['layers'])) or '-'} | "
                         + " | ".join(ratios) + f" | {mib(r.get(f'state_bytes@{ls[0]}'))} | "
                         + " | ".join(pct(r.get(f"{k}@{n}")) for k in TASKS for n in ls) + " |")
    return "\n".join(lines) + "\n" if lines else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", help="selectors.json files; missing ones are skipped")
    p.add_argument("--selectors", default=None, help="comma-separated rows to keep (default: every row)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    records = [json.loads(Path(f).read_text()) for f in a.records if Path(f).is_file()]
    text = table(records, set(a.selectors.split(",")) if a.selectors else None)
    if text:
        Path(a.out).write_text(text)
        print(text, end="")


if __name__ == "__main__":
    main()
