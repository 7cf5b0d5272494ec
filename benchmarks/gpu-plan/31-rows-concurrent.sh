#!/usr/bin/env bash
# Step 31 (one GPU): step 30's rows, each in its own process at the same time on the one GPU, instead of one after
# another. Measured on an H200 (2026-12-01, results/gpu/mixers-small-12/): three 12.5% rows (uniform, FlashMorph,
# HALO each) side by side trained in 12 min (716 s) where the same stages measured alone (the ninth session's 25% rows)
# sum to ~18-20 min; each lane's distillation ran at 24-32K tokens/s against ~71K alone, i.e. ~1.2-1.3x in all: the
# GPU is busier than its matmul rate suggests, and more of the gain is the lanes' stage 1, selections and compiles
# overlapping. The costs: each row's `seconds` (selectors.json, done.json) are wall-clock seconds on a shared GPU, not
# its cost alone, and a cut session loses every lane's evaluation at once instead of the last row only. gpu-util.csv
# logs the GPU's utilisation every 5 s. Speed measurements (steps 40, 45, 47) never run beside this.
# ROWS, ROW_SELECTORS and extra arguments as step 30 (one lane per row; each lane's log in $RES/mixers-small/lane-*.log).
# CPU check (~3 min): DEVICE=cpu with a tiny teacher and the --set values of README.md's CPU check.
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER=${TEACHER:-$SMALL_TEACHER}
ROWS=${ROWS:-"lightning:0.125 gla:0.125 gated_deltanet:0.125"}
OUTROOT=$RES/mixers-small
EPISODES=${EPISODES:-$(episodes_path "$TEACHER")}
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 did not finish)"; exit 1; }
mkdir -p "$OUTROOT"
make_episodes "$EPISODES" "$TEACHER" || exit 1   # once, before the lanes (each would otherwise write it)
unpack_autotune                                   # once, before any lane's kernels read the cache
if command -v nvidia-smi > /dev/null; then
  # (single queries in a loop: each line is written whole, whenever the log is packed)
  echo "timestamp, utilization.gpu [%], memory.used [MiB]" > "$OUTROOT/gpu-util.csv"
  while sleep 5; do nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader \
    >> "$OUTROOT/gpu-util.csv"; done &
  smi=$!
fi
pids=()
for row in $ROWS; do
  name=${row%%:*}-${row##*:}
  ROWS=$row EPISODES=$EPISODES AUTOTUNE_UNPACKED=1 ROW_TIMEOUT=${ROW_TIMEOUT:-1500} TEACHER=$TEACHER \
    bash benchmarks/gpu-plan/30-mixers-small.sh "$@" > "$OUTROOT/lane-$name.log" 2>&1 &
  pids+=($!)
  echo "[$(date +%T)] lane $name started (pid $!)"
  sleep "${LANE_STAGGER:-15}"   # the lanes' first compiles and stage-1 starts apart
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
for f in "$OUTROOT"/lane-*.log; do echo "=== $f"; tail -n 25 "$f"; done
# the lanes each wrote these at their end; once more, now that every row is there
save_autotune "$OUTROOT"
write_mixers_table "$OUTROOT" "${ROW_SELECTORS:-uniform}"
exit "$status"
