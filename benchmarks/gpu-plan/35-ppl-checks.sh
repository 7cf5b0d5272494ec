#!/usr/bin/env bash
# Step 35 (one GPU, ~1-2 min): why do the small teacher's hybrids score a lower held-out perplexity than the teacher
# (ratio 0.66-0.78 in results/gpu/mixers-small-code-teacher/)? Perplexity only, 16 windows at the teacher's length,
# of the teacher, each row's final hybrids and the same hybrids after distill (before the finetune at 2x the
# teacher's length), on text the teacher trained on (builtin:train), on held-out English (builtin:heldout) and on
# held-out code (stdlib-code:heldout); builtin:heldout again in fp32, in case bf16 costs one model more than another.
# Beside perplexity, each model's loss minus the entropy of its predictions: whether the teacher is overconfident on
# text it has not read (the reading of results/gpu/mixers-small-lightning-gla/, where the ratio followed the text).
# Run after step 30 on the same machine (its run folders hold the weights). ROWS: the row folders (default: all of
# step 30's); SELECTORS: which of their selectors (default uniform,halo).
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER=${TEACHER:-$SMALL_TEACHER}
ROOT=${ROOT:-$MIXER_ROWS}
OUT=$RES/ppl-checks
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER"; exit 1; }
LENGTH=${LENGTH:-$(python3 -c "import json; print(json.load(open('$TEACHER/config.json'))['max_position_embeddings'])")}
# each model under a link named after its row and stage, which the report uses as its name
LINKS=${LINKS:-/tmp/work/ppl-check-models}
rm -rf "$LINKS"; mkdir -p "$LINKS"
MODELS=()
for row in ${ROWS:-$(ls -d "$ROOT"/*/ 2>/dev/null)}; do
  row=${row%/}
  for sel in $(echo "${SELECTORS:-uniform,halo}" | tr , ' '); do
    name=$(basename "$row")-$sel
    if [ -f "$row/$sel/config.json" ]; then ln -s "$row/$sel" "$LINKS/$name"; MODELS+=(--model "$LINKS/$name"); fi
    if [ -f "$row/$sel/stages/distill/model/config.json" ]; then
      ln -s "$row/$sel/stages/distill/model" "$LINKS/$name-distill"; MODELS+=(--model "$LINKS/$name-distill")
    fi
  done
done
[ ${#MODELS[@]} -gt 0 ] || { echo "ERROR: no hybrid under $ROOT (step 30 did not run here)"; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT"   # a rerun scores every model again: no column of an earlier run stays
printf '%s\n' "commit: ${SHA:-unknown}" "models: ${MODELS[*]}" > "$OUT/command.txt"
# one table: a row per model, a column per text and dtype (the teacher's ratio in brackets); written again after
# each evaluation, so that a cut run keeps the columns it finished
summary() {
python3 - "$OUT" > "$OUT/summary.md" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {d.name: [r for r in json.loads((d / "report.json").read_text())["results"] if r["metric"] == "perplexity"]
        for d in sorted(out.iterdir()) if (d / "report.json").is_file()}
cols = {name: {r["model"]: (r["role"], r["value"]) for r in rs} for name, rs in rows.items()}
models = list(dict.fromkeys(m for c in cols.values() for m in c))
teacher = {name: next((v for role, v in c.values() if role == "teacher"), None) for name, c in cols.items()}
print("| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
for m in models:
    cells = ["-" if m not in c else f"{c[m][1]:.2f}" + (f" ({c[m][1] / teacher[name]:.3f})" if teacher[name] else "")
             for name, c in cols.items()]
    print(f"| {m} | " + " | ".join(cells) + " |")
# how sure each model is against how right: mean loss minus the mean entropy of its predictions (nats per token);
# > 0: more confident than its errors warrant
gaps = {name: {r["model"]: r["nll"] - r["entropy"] for r in rs if "entropy" in r} for name, rs in rows.items()}
if any(gaps.values()):
    print("\nloss - predictive entropy (nats/token; > 0: overconfident)\n")
    print("| model | " + " | ".join(gaps) + " |\n|---|" + "---|" * len(gaps))
    for m in models:
        print(f"| {m} | " + " | ".join(f"{g[m]:+.3f}" if m in g else "-" for g in gaps.values()) + " |")
PY
}
status=0
for spec in builtin:heldout builtin:train stdlib-code:heldout builtin:heldout@float32; do
  data=${spec%@*}; dtype=bfloat16; [ "$spec" != "$data" ] && dtype=${spec#*@}
  name=$(echo "$data-$dtype" | tr ':' '-')
  CMD=(python3 -m hybridize eval --teacher "$TEACHER" "${MODELS[@]}" --suite perplexity --lengths "$LENGTH"
       --samples 16 --data "$data" --dtype "$dtype" --device "$DEVICE" --out "$OUT/$name" --no-progress)
  echo "=== $name"; echo "${CMD[*]}" >> "$OUT/command.txt"
  timeout "${EVAL_TIMEOUT:-300}" "${CMD[@]}" 2>&1 | tail -40 | tee "$OUT/$name.log" || status=1
  summary
done
cat "$OUT/summary.md"
exit "$status"
