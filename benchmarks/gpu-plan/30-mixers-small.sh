#!/usr/bin/env bash
# Step 30 (one GPU): the `uniform` selection (or ROW_SELECTORS, e.g. uniform,halo) with other mixers and budgets on
# the small teacher, same recipe (gpu-small) and data as step 20: converted on $TRAIN_DATA (lib.sh) + retrieval
# episodes, evaluated on builtin:heldout.
# One folder per row; default rows gated_deltanet 25%, gla 25%, lightning 12.5% (12 x 0.125 = 1.5 rounds to 2 of
# 12 layers). Lightning 25% uniform is step 20's `uniform` row. Rows run in order, each under its own timeout
# (ROW_TIMEOUT, default 600 s), so a cut plan still leaves the rows before it. ~4-5 min per new mixer (its own stage
# 1 and first-time kernel compiles), ~2 min for a row that reuses its mixer's stage 1 (lightning's from step 20, or
# an earlier row's). Extra arguments go to every compare_selectors call (e.g. --all-linear: the mixer's all-linear
# student beside the hybrid). GatedDeltaNet / GLA training on Hopper needs Triton >= 3.7.1.
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER=${TEACHER:-$SMALL_TEACHER}
ROOT=${ROOT:-$MIXER_ROWS}
OUTROOT=$RES/mixers-small
STAGE1_LIGHTNING=${STAGE1_LIGHTNING:-/tmp/work/selectors-small-lightning-25/stage1/stages/align}
EPISODES=${EPISODES:-$(episodes_path "$TEACHER")}
ROWS=${ROWS:-"gated_deltanet:0.25 gla:0.25 lightning:0.125"}
ROW_SELECTORS=${ROW_SELECTORS:-uniform}  # halo adds ~20-60 s per row, flashmorph ~30-150 s (first-step compile)
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 did not finish)"; exit 1; }
# (step 31 unpacks once for its lanes: a lane untarring over files another lane's kernels are reading could break it)
[ "${AUTOTUNE_UNPACKED:-0}" = 1 ] || unpack_autotune
mkdir -p "$ROOT" "$OUTROOT"
make_episodes "$EPISODES" "$TEACHER" || exit 1
[ -f "$TEACHER/teacher.json" ] && cp "$TEACHER/teacher.json" "$OUTROOT/teacher.json"
cp src/hybridize/recipes/gpu-small.yaml "$OUTROOT/"
python3 -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"

status=0
for row in $ROWS; do
  mixer=${row%%:*}; budget=${row##*:}
  name=$mixer-$(python3 -c "print(f'{100 * float(\"$budget\"):g}'.replace('.', '_'))")
  work=$ROOT/$name; out=$OUTROOT/$name
  mkdir -p "$work" "$out"
  # the mixer's stage 1 from an earlier row, or lightning's from step 20
  src=$STAGE1_LIGHTNING
  [ "$mixer" = lightning ] || src=$(ls -d "$ROOT/$mixer"-*/stage1/stages/align/done.json 2>/dev/null | head -1)
  src=${src%/done.json}
  reuse_stage1 "$src" "$work" "$name"
  CMD=(python3 benchmarks/compare_selectors.py --teacher "$TEACHER" --out "$work" --recipe gpu-small
       --budget "$budget" --selectors "$ROW_SELECTORS" --set "mixer=$mixer" --device "$DEVICE" --data $TRAIN_DATA "$EPISODES" --eval-data builtin:heldout "$@")
  echo "=== $name"
  printf '%s\n' "commit: ${SHA:-unknown}" "command: ${CMD[*]}" | tee "$out/command.txt"
  # at the deadline USR1 first (compare_selectors.py prints every thread's stack and goes on), the kill 30 s later
  timeout -s USR1 -k 30 "${ROW_TIMEOUT:-600}" "${CMD[@]}" 2>&1 | lines | progress | tee "$out/run.log"
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
write_mixers_table "$OUTROOT" "$ROW_SELECTORS"
exit "$status"
