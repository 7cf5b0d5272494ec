#!/usr/bin/env bash
# Step 30 (if time is left): the `uniform` selection with other mixers and budgets on the small teacher, same recipe
# (gpu-small) and evaluation as step 20, one folder per row: gated_deltanet 25%, gla 25%, lightning 12.5% (12 x
# 0.125 = 1.5 rounds to 2 of 12 layers). Lightning 25% uniform is step 20's `uniform` row. Rows run in order,
# each under its own timeout, so a cut plan still leaves the rows before it. ~3 min per row (the lightning row
# reuses step 20's stage 1 and takes ~2). GatedDeltaNet / GLA training on Hopper needs Triton >= 3.7.1.
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER=${TEACHER:-/tmp/work/teacher-small}
ROOT=${ROOT:-/tmp/work/mixers-small}
OUTROOT=$RES/mixers-small
DEVICE=${DEVICE:-cuda}
STAGE1_LIGHTNING=${STAGE1_LIGHTNING:-/tmp/work/selectors-small-lightning-25/stage1/stages/align}
EPISODES=${EPISODES:-/tmp/work/episodes-$(basename "$TEACHER").jsonl}
ROWS=${ROWS:-"gated_deltanet:0.25 gla:0.25 lightning:0.125"}
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 did not finish)"; exit 1; }
[ -f "$EPISODES" ] || { echo "ERROR: no episodes at $EPISODES (step 20 writes them)"; exit 1; }
unpack_autotune
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
  copy_results "$work" "$out"
  if [ "$rc" -eq 0 ]; then
    find "$work" -type d -name checkpoints -prune -exec rm -rf {} +
  else
    echo "ERROR: $name exited with $rc"; status=$rc
  fi
  df -h /tmp | tail -1
done

save_autotune "$OUTROOT"

# One table: every row here plus step 20's lightning 25% uniform row, where it exists.
python3 benchmarks/gpu-plan/mixers_table.py "$RES/selectors-small-lightning-25/selectors.json" \
  "$OUTROOT"/*/selectors.json --selectors uniform --out "$OUTROOT/mixers.md"
exit "$status"
