#!/usr/bin/env bash
# Step 10: train a built-in teacher (default `small`: 67M parameters, Qwen3 architecture, 12 layers, trained at 1024
# tokens; src/hybridize/teacher/recipe.py) on the GPU, into $TEACHER (default /tmp/work/teacher-small), and copy its
# records to $RES/$NAME. Run from the repository root with PYTHONPATH=<repo>/src, $RES = results folder, $SHA =
# commit measured. Extra arguments go to `hybridize teacher`.
#
# The recipe's own numbers unless these are set: TEACHER_TOKENS (train.tokens; warmup then 10% of the steps, at
# least 50), TEACHER_BATCH (train.batch_size, sequences per optimizer step), TEACHER_MINUTES (--max-minutes: a run
# stopped there leaves a checkpoint and no teacher; running this script again continues it), TEACHER_DATA (below),
# NPROC (GPUs, below).
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
SIZE=${SIZE:-small}
TEACHER=${TEACHER:-/tmp/work/teacher-$SIZE}
OUTDIR=$RES/${NAME:-teacher-$SIZE}
mkdir -p /tmp/work "$OUTDIR"

OVERRIDES=()
if [ -n "${TEACHER_TOKENS:-}" ]; then
  BATCH=${TEACHER_BATCH:-32}
  WARMUP=$(( TEACHER_TOKENS / (BATCH * 1024) / 10 )); [ "$WARMUP" -lt 50 ] && WARMUP=50
  OVERRIDES+=(--set "train.tokens=$TEACHER_TOKENS" --set "train.batch_size=$BATCH" --set "train.warmup_steps=$WARMUP")
fi
[ -n "${TEACHER_MINUTES:-}" ] && OVERRIDES+=(--max-minutes "$TEACHER_MINUTES")
# TEACHER_DATA: the teacher's text instead of the recipe's [builtin:train,stdlib-code:train], e.g. builtin:train (the
# recipe before 2026-12-01, which memorised it; set TRAIN_DATA=builtin:train for the later steps then)
[ -n "${TEACHER_DATA:-}" ] && OVERRIDES+=(--set "data=$TEACHER_DATA")
# NPROC=N: data parallel over N GPUs (torchrun). The recipe's micro-batch (small: 32 rows, 20 of them episodes) is
# split so that the N ranks together hold the same global batch: micro_batch_size / N rows, episode_rows / N of them
LAUNCH=(python3 -m hybridize)
if [ "${NPROC:-1}" -gt 1 ]; then
  read -r MICRO ROWS < <(python3 -c "from hybridize.teacher.recipe import teacher_recipe as t; r = t('$SIZE'); \
print(r.train.micro_batch_size, r.episode_rows)")
  LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC" -m hybridize)
  OVERRIDES+=(--set "train.micro_batch_size=$((MICRO / NPROC))" --set "episode_rows=$((ROWS / NPROC))")
fi
CMD=("${LAUNCH[@]}" teacher --size "$SIZE" --out "$TEACHER" --device "${DEVICE:-cuda}" "${OVERRIDES[@]}" "$@")
printf '%s\n' "commit: ${SHA:-unknown}" "command: ${CMD[*]}" | tee "$OUTDIR/command.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

LIMIT=${TEACHER_TIMEOUT:-$(awk "BEGIN { print int(${TEACHER_MINUTES:-15} * 60 + 300) }")}
timeout "$LIMIT" "${CMD[@]}" 2>&1 | lines | progress > "$OUTDIR/train.log"
rc=${PIPESTATUS[0]}
tail -n 3 "$OUTDIR/train.log"

for f in teacher.json config.json run/recipe.json run/metrics.jsonl; do
  [ -f "$TEACHER/$f" ] && cp "$TEACHER/$f" "$OUTDIR/$(basename "$f")"
done
if [ ! -f "$TEACHER/teacher.json" ]; then
  echo "ERROR: no teacher written (rc=$rc): not finished within the time limit, or failed (see $OUTDIR/train.log);" \
       "run this step again to continue from the checkpoint"
  exit 1
fi
python3 - "$TEACHER/teacher.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1])); r = t["result"]
print(f"teacher: {r['steps']} steps, {r['tokens']:,} tokens, {r['seconds']:.0f} s, {r['tokens_per_s']:,.0f} tok/s, "
      f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}, peak {r['peak_memory_gib']} GiB, "
      f"{t.get('data_workers')} episode workers")
PY
exit "$rc"
