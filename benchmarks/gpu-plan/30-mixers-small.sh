#!/usr/bin/env bash
# Step 30 (if time is left): the `uniform` selection with other mixers and budgets on the small teacher, same recipe
# (gpu-small) and evaluation as step 20, one folder per row: gated_deltanet 25%, gla 25%, lightning 12.5% (12 x
# 0.125 = 1.5 rounds to 2 of 12 layers). Lightning 25% uniform is step 20's `uniform` row. Rows run in order,
# each under its own timeout, so a cut plan still leaves the rows before it. ~3 min per row (the lightning row
# reuses step 20's stage 1 and takes ~2). GatedDeltaNet / GLA training on Hopper needs Triton >= 3.7.1.
set -uo pipefail
# tqdm redraws its bar at every step: keep a bar at every 20%, drop blank lines and weight loading/saving bars
progress() { awk 'NF == 0 || /^(Loading weights|Writing model shards)/ { next } /^[^ ].*: +[0-9]+%\|/ { k = substr($0, 1, index($0, "%|")); sub(/ *[0-9]+%$/, "", k); match($0, /[0-9]+%\|/); p = substr($0, RSTART, RLENGTH - 2) + 0; if (!(k in last) || p >= last[k] + 20 || p < last[k] || (p == 100 && last[k] != 100)) { print; fflush(); last[k] = p }; next } { print; fflush() }'; }
TEACHER=${TEACHER:-/tmp/work/teacher-small}
ROOT=${ROOT:-/tmp/work/mixers-small}
OUTROOT=$RES/mixers-small
DEVICE=${DEVICE:-cuda}
STAGE1_LIGHTNING=${STAGE1_LIGHTNING:-/tmp/work/selectors-small-lightning-25/stage1/stages/align}
EPISODES=${EPISODES:-/tmp/work/episodes-$(basename "$TEACHER").jsonl}
ROWS=${ROWS:-"gated_deltanet:0.25 gla:0.25 lightning:0.125"}
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 did not finish)"; exit 1; }
[ -f "$EPISODES" ] || { echo "ERROR: no episodes at $EPISODES (step 20 writes them)"; exit 1; }
mkdir -p ~/.triton/cache && tar xzf benchmarks/triton-autotune/autotune-h100-triton3.7.1-fla0.6.0.tgz -C ~/.triton/cache
mkdir -p "$ROOT" "$OUTROOT"
cp src/hybridize/recipes/gpu-small.yaml "$OUTROOT/"
python3 -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"

status=0
for row in $ROWS; do
  mixer=${row%%:*}; budget=${row##*:}
  name=$mixer-$(python3 -c "print(f'{100 * float(\"$budget\"):g}'.replace('.', '_'))")
  work=$ROOT/$name; out=$OUTROOT/$name
  mkdir -p "$work" "$out"
  # lightning's stage 1 does not depend on the budget: reuse step 20's (its done.json makes align() skip)
  if [ "$mixer" = lightning ] && [ -f "$STAGE1_LIGHTNING/done.json" ] && [ ! -e "$work/stage1/stages/align" ]; then
    mkdir -p "$work/stage1/stages" && cp -r "$STAGE1_LIGHTNING" "$work/stage1/stages/align"
    echo "$name: stage 1 reused from $STAGE1_LIGHTNING"
  fi
  CMD=(python3 benchmarks/compare_selectors.py --teacher "$TEACHER" --out "$work" --recipe gpu-small
       --budget "$budget" --selectors uniform --set "mixer=$mixer" --device "$DEVICE" --data builtin "$EPISODES" "$@")
  echo "=== $name"
  printf '%s\n' "commit: ${SHA:-unknown}" "command: ${CMD[*]}" | tee "$out/command.txt"
  timeout "${ROW_TIMEOUT:-420}" "${CMD[@]}" 2>&1 | tr '\r' '\n' | progress | tee "$out/run.log"
  rc=${PIPESTATUS[0]}
  (cd "$work" && find . \( -name checkpoints -o -name tb \) -prune -o -type f \
     \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.yaml' \) \
     ! -name 'tokenizer*.json' -print0 | xargs -0 -r cp --parents -t "$out")
  if [ "$rc" -eq 0 ]; then
    find "$work" -type d -name checkpoints -prune -exec rm -rf {} +
  else
    echo "ERROR: $name exited with $rc"; status=$rc
  fi
  df -h /tmp | tail -1
done

# fla's autotune results for this model's shapes (JSON, tens of KB): unpacked into ~/.triton/cache before a later
# run, the kernels compile only the winning configuration instead of autotuning again
(cd ~/.triton/cache 2>/dev/null && find . -name '*.autotune.json' -print0 | tar czf "$OUTROOT/triton-autotune-cache.tgz" --null -T -) || true

# One table: every row here plus step 20's lightning 25% uniform row, where it exists.
python3 - "$OUTROOT" "$RES/selectors-small-lightning-25/selectors.json" <<'PY'
import json, sys
from pathlib import Path
root, sel = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for path in [sel, *sorted(root.glob("*/selectors.json"))]:
    if not path.is_file():
        continue
    rec = json.loads(path.read_text())
    mixer = "lightning" if path == sel else next((o.split("=", 1)[1] for o in rec["overrides"] if o.startswith("mixer=")), "lightning")
    for r in rec["rows"]:
        if r["selector"] == "uniform":
            rows.append((mixer, rec["budget"], r, rec["lengths"], rec["teacher_results"]))
if rows:
    lengths = rows[0][3]
    tasks = ["passkey", "niah_single_2", "mqar"]
    head = ["mixer", "budget", "layers"] + [f"ppl ratio @{n}" for n in lengths] + [f"{t} @{n}" for t in tasks for n in lengths]
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = rows[0][4]
    lines.append("| teacher | - | all | " + " | ".join("1.000" for _ in lengths) + " | "
                 + " | ".join(pct(t.get(f"{k}@{n}")) for k in tasks for n in lengths) + " |")
    for mixer, budget, r, ls, _ in rows:
        ratios = ["-" if r.get(f"perplexity_ratio@{n}") is None else f"{r[f'perplexity_ratio@{n}']:.3f}" for n in ls]
        lines.append(f"| {mixer} | {budget} | {','.join(map(str, r['layers']))} | " + " | ".join(ratios) + " | "
                     + " | ".join(pct(r.get(f"{k}@{n}")) for k in tasks for n in ls) + " |")
    (root / "mixers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
PY
exit "$status"
