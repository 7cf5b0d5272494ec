#!/usr/bin/env bash
# Step 50 (two GPUs): two `small` teachers at once, one per GPU, that differ only where the last one failed, then
# the one that retrieves better is linked as /tmp/work/teacher-small for the steps after (60-grid-x2.sh).
#
# Why: the small teacher of 2026-11-23 (batch 128 x 1024, 8 episode rows of 32, lr 1.5e-3, 495 steps) memorised
# the corpus and learned no retrieval (README.md here). Both teachers here take 4x the optimizer steps in the same
# tokens (batch 32) and half of each micro-batch in retrieval episodes; B also has 20 episode rows and a 2.5x lower
# learning rate, since A's episode loss only began to fall once its LR had decayed. Both train on builtin:train, so
# builtin:heldout is text neither saw (perplexity and haystacks of the evaluation).
#
# The pick: exact match on passkey / niah_single_2 / mqar at the training length (8 prompts x 3 depths each, on
# held-out filler), mean over the tasks; a tie goes to A. Both scores are in $RES/teacher-choice.json.
# Run from the repository root with PYTHONPATH=<repo>/src, $RES and $SHA (benchmarks/gpu-queue/daemon.sh does).
# CPU check (~2 min): SIZE=tiny TEACHER_TOKENS=200000 DEVICE_A=cpu DEVICE_B=cpu PICK_LENGTH=256 bash <this>
set -uo pipefail
export TEACHER_TOKENS=${TEACHER_TOKENS:-60000000} TEACHER_BATCH=${TEACHER_BATCH:-32} TEACHER_MINUTES=${TEACHER_MINUTES:-9.5}
export SIZE=${SIZE:-small}
DEVICE_A=${DEVICE_A:-cuda:0}
DEVICE_B=${DEVICE_B:-cuda:1}
DATA=${TEACHER_DATA:-builtin:train}
mkdir -p /tmp/work "$RES"
LOGS=${LOGS:-$RES}

run_teacher() {  # name device overrides...
  local name=$1 device=$2; shift 2
  NAME=$name TEACHER=/tmp/work/$name DEVICE=$device bash benchmarks/gpu-plan/10-teacher-small.sh --data "$DATA" \
    --set "train.micro_batch_size=${TEACHER_MICRO:-32}" "$@" \
    > "$LOGS/$name.log" 2>&1
}
run_teacher teacher-small-a "$DEVICE_A" --set episode_rows=16 &
pa=$!
run_teacher teacher-small-b "$DEVICE_B" --set episode_rows=20 --set train.lr=6e-4 --set train.min_lr=6e-5 &
pb=$!
wait $pa; ra=$?
wait $pb; rb=$?
tail -n 3 "$LOGS/teacher-small-a.log" "$LOGS/teacher-small-b.log"
[ "$ra" -ne 0 ] && [ "$rb" -ne 0 ] && { echo "ERROR: neither teacher finished"; exit 1; }

pick() {  # name device -> $RES/<name>/recall.json
  local name=$1 device=$2
  [ -f /tmp/work/$name/config.json ] || return 0
  python3 benchmarks/gpu-plan/teacher_recall.py "/tmp/work/$name" --lengths "${PICK_LENGTH:-1024}" --device "$device" \
    --out "$RES/$name/recall.json"
}
pick teacher-small-a "$DEVICE_A" &
pick teacher-small-b "$DEVICE_B" &
wait
python3 - "$RES" <<'PY'
import json, sys
from pathlib import Path
res = Path(sys.argv[1])
scores = {}
for n in ("teacher-small-a", "teacher-small-b"):
    if (res / n / "recall.json").is_file():  # exact match per task at the one pick length
        em = json.loads((res / n / "recall.json").read_text())["exact_match"][n]
        scores[n] = {"exact_match": {t: v[0] for t, v in em.items()}, "mean": sum(v[0] for v in em.values()) / len(em)}
best = max(scores, key=lambda n: (scores[n]["mean"], n == "teacher-small-a"))
link = Path("/tmp/work/teacher-small")
if link.is_symlink() or link.exists():
    link.unlink()
link.symlink_to(f"/tmp/work/{best}")
(res / "teacher-choice.json").write_text(json.dumps({"chosen": best, "scores": scores}, indent=1))
print(f"chosen: {best} (mean exact match at 1x: " + ", ".join(f"{n} {s['mean']:.2f}" for n, s in scores.items()) + ")")
PY
