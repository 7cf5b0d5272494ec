#!/usr/bin/env bash
# Step 20: the five layer selectors on the small teacher at a 25% budget (3 of 12 layers), lightning mixers, recipe
# gpu-small (src/hybridize/recipes/gpu-small.yaml): one shared stage 1, then per selector its selection, distill and
# finetune, then one evaluation of every hybrid, the all-linear stage-1 student and the teacher (perplexity, passkey,
# niah_single_2, mqar at 1x / 2x / 4x the teacher's length). Converted on $TRAIN_DATA (lib.sh) + retrieval episodes (what
# the teacher trained on), evaluated on builtin:heldout (text it never saw). ~13 min on an H100 (estimated from the
# 961 s run with 3x the stage-1 tokens).
# Run folders (weights, checkpoints) stay under /tmp/work; only json / jsonl / md / png / yaml files go to $RES.
# Resumable: run again after an interruption and finished stages are skipped.
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER=${TEACHER:-$SMALL_TEACHER}
NAME=${NAME:-selectors-small-lightning-25}
WORK=${WORK:-/tmp/work/$NAME}
OUTDIR=$RES/$NAME
EPISODES=${EPISODES:-$(episodes_path "$TEACHER")}
N_EPISODES=${N_EPISODES:-800}  # ~430K tokens at 1024, about as many as the built-in corpus (460K)
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 did not finish)"; exit 1; }
unpack_autotune
mkdir -p "$WORK" "$OUTDIR"

# The conversion's data is what the teacher trained on: the built-in corpus plus retrieval episodes (new draws,
# seed 1; hybridize demo does the same). On the corpus alone the student never sees a question and forgets how to
# answer one.
make_episodes "$EPISODES" "$TEACHER" "$N_EPISODES" || exit 1

CMD=(python3 benchmarks/compare_selectors.py --teacher "$TEACHER" --out "$WORK" --recipe gpu-small --budget 0.25
     --selectors "${SELECTORS:-uniform,flashmorph,halo,kl_guided,random}" --device "$DEVICE"
     --data $TRAIN_DATA "$EPISODES" --eval-data builtin:heldout --all-linear "$@")
printf '%s\n' "commit: ${SHA:-unknown}" "command: ${CMD[*]}" | tee "$OUTDIR/command.txt"
cp src/hybridize/recipes/gpu-small.yaml "$OUTDIR/"
[ -f "$TEACHER/teacher.json" ] && cp "$TEACHER/teacher.json" "$OUTDIR/teacher.json"

timeout "${SEL_TIMEOUT:-1500}" "${CMD[@]}" 2>&1 | lines | progress | tee "$OUTDIR/run.log"
rc=${PIPESTATUS[0]}

copy_results "$WORK" "$OUTDIR"
echo "copied to $OUTDIR: $(find "$OUTDIR" -type f | wc -l) files, $(du -sh "$OUTDIR" | cut -f1);" \
     "largest: $(find "$OUTDIR" -type f -printf '%s %P\n' | sort -n | tail -1)"
df -h /tmp | tail -1
save_autotune "$OUTDIR"
if [ "$rc" -eq 0 ]; then  # done: the resume state is no longer needed; free the disk for step 30
  find "$WORK" -type d -name checkpoints -prune -exec rm -rf {} +
else
  echo "ERROR: compare_selectors exited with $rc; run this step again to resume"
fi
exit "$rc"
