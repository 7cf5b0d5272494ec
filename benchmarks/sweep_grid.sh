#!/usr/bin/env bash
# Issue 22's design-space grid on one GPU, at the `mini` size (12 layers of 384, 256-token rows, 256 steps of 16 rows;
# src/hybridize/pretrain/presets.py):
#   1. every linear mixer x {all-linear, 12:1, 6:1, 3:1} plus the Transformer: 33 cells, 9 side by side (one lane per
#      mixer, the Transformer alone);
#   2. inter- against intra-layer at 6:1 for Mamba-2 (the fusion study's mixer) and GatedDeltaNet: the intra-layer cells
#      (one of 6 KV groups kept in each of the 12 layers: 5:1 in every layer), whose inter-layer twins (2 of 12 layers:
#      5:1) and parameter counts (within 0.1%) are in grid 1.
# Every cell: the same BPE, tokens, data order and seed 0, scored on builtin:heldout (perplexity by context bucket) and
# on passkey / NIAH-single-2 / MQAR at 256 / 512 / 1024 tokens, 16 prompts each, with Wilson 95% intervals.
#
# Run from the repository root on the GPU machine, after fla and Triton >= 3.7.1 are installed
# (../shared/gpu/README.md: start with `bash .gpu/send/install.sh &&`):
#     HYBRIDIZE_COMMIT=<sha> OUT=$OUT bash benchmarks/sweep_grid.sh
# The sweep folder with weights and checkpoints is $WORK (default /tmp/work/sweep-grid); $OUT/sweep-grid/ gets what is
# worth keeping: sweep.json, README.md with the table, the three figures, each cell's result.json, pretrain.json,
# config.json and training metrics and curves, the lanes' logs, the tokenizer and the Triton autotune results. Both
# grids stop by $MINUTES (default 7.5) minutes after the start, each cell in training at a step boundary with a
# checkpoint. Running the script again continues: on the same machine from $WORK (a stopped cell resumes from its
# checkpoint); on a fresh one with RESUME_FROM=<an earlier $OUT/sweep-grid>, whose finished cells are not trained again.
# Extra arguments go to both `hybridize sweep` calls (e.g. --set train.tokens=...). CPU check of the script (~2 min
# on 2 cores): SIZE=tiny DEVICE=cpu JOBS=2 MIXERS=retnet,mamba2 INTRA=mamba2 OUT=/tmp/o bash benchmarks/sweep_grid.sh
#
# Time on one H100, estimated, not measured (no GPU run of this script yet), ~7 min:
# - Compiling and autotuning fla's Triton kernels for these shapes, the first cell of each lane: ~2-3 min. The shipped
#   autotune archives hold other shapes (benchmarks/README.md); new mixers took 281-383 s per conversion with their
#   first compiles on an H200 (benchmarks/gpu-plan/README.md, step 30), and the lanes compile at once on 16 cores.
# - Training, 256 steps x 35 cells: a 12-layer step of 16 x 256 tokens is ~0.5 TFLOP (~10 ms of H100 arithmetic) and
#   ~1,300 small kernels. One process alone: ~30-40 ms a step (Python and launches: a 12-layer step at these shapes
#   with tiny tensors took 55 ms on this project's 2-core CPU, without fla's Triton launches); the tiny teacher
#   trained at 27-28 steps/s on an H200 (results/gpu/mixers-small-12/logs/teacher-gpu-test.log). Nine lanes share the
#   GPU's ~10 ms of kernels a step each: ~100-120 ms a step per lane, 4 cells x 256 steps = ~2-2.5 min per lane.
# - Scoring: ~5-10 s a cell (9 greedy batches of <= 1024-token prompts, ~20 new tokens each; 8 perplexity windows).
# - Grid 2: two cells side by side, new kernels for the intra-layer 5-head linear branches: ~1-1.5 min.
# If compiling takes longer, the run stops at $MINUTES with what finished; run it again to finish the rest.
set -uo pipefail
source benchmarks/gpu-plan/lib.sh

SIZE=${SIZE:-mini}
WORK=${WORK:-/tmp/work/sweep-grid}
OUT=${OUT:-out/sweep-grid-results}
MINUTES=${MINUTES:-7.5}
JOBS=${JOBS:-9}
MIXERS=${MIXERS:-lightning,gated_deltanet,gla,deltanet,hgrn,hgrn2,retnet,mamba2}
INTRA=${INTRA:-mamba2,gated_deltanet}
RES=$OUT/sweep-grid
mkdir -p "$WORK" "$RES"
start=$(date +%s)
log() { echo "[$(date +%T)] $*" | tee -a "$RES/run.log"; }
left() { python3 -c "print(max(0.0, $MINUTES - ($(date +%s) - $start) / 60))"; }

if [ -n "${RESUME_FROM:-}" ] && [ ! -f "$WORK/sweep-config.json" ]; then
  # an earlier run's finished cells: their result.json is all a sweep reads of them
  (cd "$RESUME_FROM" && find . \( -name 'result.json' -o -name 'pretrain.json' -o -path './tokenizer/*' \
     -o -name 'sweep-config.json' \) -print0 | xargs -0 -r cp --parents -t "$WORK")
  log "resumed from $RESUME_FROM: $(find "$WORK/cells" -name result.json 2>/dev/null | wc -l) finished cells"
fi
unpack_autotune
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$RES/run.log" || true
COMMON=(--size "$SIZE" --out "$WORK" --device "${DEVICE:-cuda}")

log "grid 1: $MIXERS x all-linear,12:1,6:1,3:1 + transformer, $JOBS lanes"
python3 -m hybridize sweep "${COMMON[@]}" --mixers "$MIXERS" --ratios all-linear,12:1,6:1,3:1,transformer \
  --jobs "$JOBS" --max-minutes "$(python3 -c "print(max(0.5, $(left) - 1.5))")" "$@" 2>&1 | lines | progress | tee -a "$RES/run.log"
status=${PIPESTATUS[0]}
log "grid 1 exited $status"

if [ "$(python3 -c "print(int($(left) > 0.5))")" = 1 ]; then
  log "grid 2: $INTRA at 6:1, inter and intra"
  python3 -m hybridize sweep "${COMMON[@]}" --mixers "$INTRA" --ratios 6:1 --fusion inter,intra \
    --jobs "$(echo "$INTRA" | tr ',' '\n' | wc -l)" --max-minutes "$(left)" "$@" 2>&1 | lines | progress | tee -a "$RES/run.log"
  status2=${PIPESTATUS[0]}
  log "grid 2 exited $status2"
  [ "$status2" != 0 ] && status=$status2
else
  log "grid 2 not started: out of time (run the script again)"
fi

# what is worth keeping, without weights, checkpoints or TensorBoard files
copy_results "$WORK" "$RES"
mkdir -p "$RES/tokenizer" "$RES/logs"
cp "$WORK"/tokenizer/* "$RES/tokenizer/" 2>/dev/null || true
cp "$WORK"/logs/*.log "$RES/logs/" 2>/dev/null || true
save_autotune "$RES"
log "done in $(( $(date +%s) - start )) s: $(find "$WORK/cells" -name result.json 2>/dev/null | wc -l) cells scored"
exit "$status"
