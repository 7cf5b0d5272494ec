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
  python3 - "$name" "$device" "${PICK_LENGTH:-1024}" "$RES" <<'PY'
import json, sys
from hybridize.evaluation.report import mean_over_depths
from hybridize.evaluation.runner import EvalConfig, run_eval
name, device, length, res = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = f"/tmp/work/pick-{name}"
tasks = ["passkey", "niah_single_2", "mqar"]
run_eval(EvalConfig(models=[f"/tmp/work/{name}"], out=out, suites=tasks, lengths=[length], depths=[0.1, 0.5, 0.9],
                    samples=8, device=device, data="builtin:heldout", progress=False))
results = json.load(open(f"{out}/report.json"))["results"]
scores = {t: mean_over_depths(results, name, t, "exact_match", length) for t in tasks}
rec = {"teacher": name, "length": length, "exact_match": scores, "mean": sum(scores.values()) / len(scores)}
json.dump(rec, open(f"{res}/{name}/recall.json", "w"), indent=1)
print(json.dumps(rec))
PY
}
pick teacher-small-a "$DEVICE_A" &
pick teacher-small-b "$DEVICE_B" &
wait
python3 - "$RES" <<'PY'
import json, os, sys
from pathlib import Path
res = Path(sys.argv[1])
scores = {n: json.loads((res / n / "recall.json").read_text()) for n in ("teacher-small-a", "teacher-small-b")
          if (res / n / "recall.json").is_file()}
best = max(scores, key=lambda n: (scores[n]["mean"], n == "teacher-small-a"))
link = Path("/tmp/work/teacher-small")
if link.is_symlink() or link.exists():
    link.unlink()
link.symlink_to(f"/tmp/work/{best}")
(res / "teacher-choice.json").write_text(json.dumps({"chosen": best, "scores": scores}, indent=1))
print(f"chosen: {best} (mean exact match at 1x: " + ", ".join(f"{n} {s['mean']:.2f}" for n, s in scores.items()) + ")")
PY
