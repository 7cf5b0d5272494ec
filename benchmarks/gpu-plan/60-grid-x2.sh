#!/usr/bin/env bash
# Step 60 (two GPUs): issue 4's selector comparison and issue 6's mixer x budget rows on one teacher, in two lanes.
# Same recipe (gpu-small) and evaluation everywhere; conversion data = $TRAIN_DATA (lib.sh) + retrieval episodes drawn on
# builtin:train filler; evaluation (perplexity windows and haystacks) on builtin:heldout, text the teacher never saw.
#
#   lane 0: lightning 25%: stage 1 + uniform, random, halo (no eval) -> gla 25% uniform (+ its all-linear student)
#           -> [waits for lane 1's kl_guided + flashmorph] -> one evaluation of all five selectors + all-linear
#   lane 1: gated_deltanet 25% uniform (+ all-linear) -> [waits for lightning's stage 1] lightning 25% kl_guided +
#           flashmorph (no eval) -> lightning 12.5% uniform -> gated_deltanet 12.5% -> gla 12.5% (each row reuses
#           its mixer's stage 1)
# Rows that are done are skipped when the step runs again (the stages resume). Results (json / md / png / yaml) go
# to $RES/selectors-small-lightning-25/ and $RES/mixers-small/<mixer>-<budget>/; weights stay in /tmp/work.
# Needs /tmp/work/teacher-small (step 10 or 50). Extra arguments go to every compare_selectors call (e.g. the
# small --set values of README.md's CPU check). CPU check: DEVICE_0=cpu DEVICE_1=cpu LOW_BUDGET=0.5, with those --set values.
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER=${TEACHER:-$SMALL_TEACHER}
WORK=${WORK:-/tmp/work}
DEVICE_0=${DEVICE_0:-cuda:0}
DEVICE_1=${DEVICE_1:-cuda:1}
EPISODES=$WORK/episodes-train.jsonl
# the selectors of the mixer rows: issue 6 asks for uniform and flashmorph; flashmorph adds ~2 min per row, which
# the ~30 min of a session does not hold beside the teacher
ROW_SELECTORS=${ROW_SELECTORS:-uniform}
LOW_BUDGET=${LOW_BUDGET:-0.125}  # the second budget of the mixer rows (a 4-layer CPU check needs 0.5: 0.125 rounds to 0)
N_EPISODES=${N_EPISODES:-800}
SEL=$WORK/selectors-small-lightning-25
MIX=$WORK/mixers-small
EXTRA=("$@")
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 or 50 did not finish)"; exit 1; }
case "$DEVICE_0" in cuda*) unpack_autotune ;; esac
mkdir -p "$WORK" "$RES/selectors-small-lightning-25" "$RES/mixers-small"
cp src/hybridize/recipes/gpu-small.yaml "$RES/mixers-small/"
[ -f "$TEACHER/teacher.json" ] && cp "$TEACHER/teacher.json" "$RES/selectors-small-lightning-25/teacher.json"

make_episodes "$EPISODES" "$TEACHER" "$N_EPISODES" || exit 1

# compare DEVICE OUT_FOLDER RESULT_FOLDER LOG_NAME ARGS...: one compare_selectors call, results copied after it
compare() {
  local device=$1 work=$2 res=$3 log=$4; shift 4
  mkdir -p "$work" "$res"
  local cmd=(python3 benchmarks/compare_selectors.py --teacher "$TEACHER" --out "$work" --recipe gpu-small
             --device "$device" --data $TRAIN_DATA "$EPISODES" --eval-data builtin:heldout "$@" "${EXTRA[@]}")
  printf '%s\n' "commit: ${SHA:-unknown}" "command: ${cmd[*]}" > "$res/command-$log.txt"
  echo "[$(date +%T)] start $log on $device"
  timeout "${ROW_TIMEOUT:-1200}" "${cmd[@]}" 2>&1 | lines | progress > "$res/run-$log.log"
  local rc=${PIPESTATUS[0]}
  copy_results "$work" "$res"
  echo "[$(date +%T)] end $log rc=$rc"
  return "$rc"
}
# row DEVICE MIXER BUDGET ARGS...: the uniform selection of one mixer and budget; stage 1 reused from the mixer's
# 25% row (or lightning's from the selector comparison) when that exists
row() {
  local device=$1 mixer=$2 budget=$3; shift 3
  local name=$mixer-$(python3 -c "print(f'{100 * float(\"$budget\"):g}'.replace('.', '_'))")
  local work=$MIX/$name src=$MIX/$mixer-25/stage1/stages/align
  [ "$mixer" = lightning ] && src=$SEL/stage1/stages/align
  [ "$name" != "$mixer-25" ] && reuse_stage1 "$src" "$work" "$name"
  compare "$device" "$work" "$RES/mixers-small/$name" "$name" --budget "$budget" --selectors "$ROW_SELECTORS" \
    --set "mixer=$mixer" "$@"
}
wait_for() {  # file seconds
  local t=0
  while [ ! -e "$1" ] && [ "$t" -lt "$2" ]; do sleep 5; t=$((t + 5)); done
  [ -e "$1" ]
}

lane0() {
  compare "$DEVICE_0" "$SEL" "$RES/selectors-small-lightning-25" part-a --budget 0.25 \
    --selectors uniform,random,halo --no-eval && touch "$WORK/.part-a-done"
  row "$DEVICE_0" gla 0.25 --all-linear
  wait_for "$WORK/.part-b-done" 1500 || echo "lane 0: kl_guided / flashmorph not done; evaluating what is"
  local sels=uniform,random,halo
  [ -e "$WORK/.part-b-done" ] && sels=$sels,kl_guided,flashmorph
  compare "$DEVICE_0" "$SEL" "$RES/selectors-small-lightning-25" eval --budget 0.25 --selectors "$sels" --all-linear
}
lane1() {
  row "$DEVICE_1" gated_deltanet 0.25 --all-linear
  wait_for "$SEL/stage1/stages/align/done.json" 900 || { echo "lane 1: no lightning stage 1"; return 1; }
  compare "$DEVICE_1" "$SEL" "$RES/selectors-small-lightning-25" part-b --budget 0.25 \
    --selectors kl_guided,flashmorph --no-eval && touch "$WORK/.part-b-done"
  row "$DEVICE_1" lightning "$LOW_BUDGET"
  row "$DEVICE_1" gated_deltanet "$LOW_BUDGET"
  wait_for "$MIX/gla-25/stage1/stages/align/done.json" 600 && row "$DEVICE_1" gla "$LOW_BUDGET"
}
rm -f "$WORK/.part-a-done" "$WORK/.part-b-done"
lane0 > "$RES/lane0.log" 2>&1 &
p0=$!
lane1 > "$RES/lane1.log" 2>&1 &
p1=$!
wait $p0; r0=$?
wait $p1; r1=$?
cat "$RES/lane0.log" "$RES/lane1.log"

# One table of the mixer rows (and the selector comparison's uniform / flashmorph / all-linear rows)
write_mixers_table "$RES/mixers-small" uniform,flashmorph
save_autotune "$RES"
[ "$r0" -eq 0 ] && [ "$r1" -eq 0 ]
