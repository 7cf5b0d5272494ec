#!/usr/bin/env bash
# Step 10: train the built-in `small` teacher (67M parameters, Qwen3 architecture, 12 layers, trained at 1024
# tokens; src/hybridize/teacher/recipe.py) on the GPU, into /tmp/work/teacher-small.
# Run from the repository root with PYTHONPATH=<repo>/src, $RES = results folder, $SHA = commit measured.
#
# Set TEACHER_TOKENS from the measured tokens/s so that it finishes inside TEACHER_MINUTES: the teacher (config +
# weights + teacher.json) is written only once all its tokens are trained. A run stopped by --max-minutes leaves a
# checkpoint and no teacher; running this script again continues it (same tokens, same out folder).
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
TEACHER_TOKENS=${TEACHER_TOKENS:-120000000}   # <- the one line to edit (steps = tokens / (TEACHER_BATCH * 1024))
TEACHER_BATCH=${TEACHER_BATCH:-128}            # sequences per optimizer step (the recipe's train.batch_size)
TEACHER_MINUTES=${TEACHER_MINUTES:-9}          # training-loop minutes; setup (tokenizer, data) comes on top
TEACHER=${TEACHER:-/tmp/work/teacher-small}
OUTDIR=$RES/${NAME:-teacher-small}
# Warmup: the recipe's ~10% of the steps (300 of 3052 at its 400M tokens), at least 50 steps.
WARMUP=$(( TEACHER_TOKENS / (TEACHER_BATCH * 1024) / 10 )); [ "$WARMUP" -lt 50 ] && WARMUP=50
mkdir -p /tmp/work "$OUTDIR"

CMD=(python3 -m hybridize teacher --size "${SIZE:-small}" --out "$TEACHER" --max-minutes "$TEACHER_MINUTES"
     --set "train.tokens=$TEACHER_TOKENS" --set "train.batch_size=$TEACHER_BATCH" --set "train.warmup_steps=$WARMUP" --device "${DEVICE:-cuda}" "$@")
printf '%s\n' "commit: ${SHA:-unknown}" "command: ${CMD[*]}" | tee "$OUTDIR/command.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

timeout "$(awk "BEGIN { print int($TEACHER_MINUTES * 60 + 300) }")" "${CMD[@]}" 2>&1 | tr '\r' '\n' | progress | tee "$OUTDIR/train.log"
rc=${PIPESTATUS[0]}

for f in teacher.json config.json run/recipe.json run/metrics.jsonl; do
  [ -f "$TEACHER/$f" ] && cp "$TEACHER/$f" "$OUTDIR/$(basename "$f")"
done
if [ ! -f "$TEACHER/teacher.json" ]; then
  echo "ERROR: no teacher written (rc=$rc): TEACHER_TOKENS=$TEACHER_TOKENS did not finish in $TEACHER_MINUTES min;" \
       "run this step again to continue from the checkpoint, or lower TEACHER_TOKENS with a new out folder"
  exit 1
fi
python3 - "$TEACHER/teacher.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
print(f"teacher: {r['steps']} steps, {r['tokens']:,} tokens, {r['seconds']:.0f} s, {r['tokens_per_s']:,.0f} tok/s, "
      f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}, peak {r['peak_memory_gib']} GiB")
PY
exit "$rc"
