#!/usr/bin/env bash
# Step 70 (one GPU; ~22 min: the teacher 491-535 s measured, step 20 ~13 min estimated): the `small` teacher from
# its recipe, its recall at 1024 / 2048, then step 20 (the five selectors at 25%, lightning, evaluated with the
# all-linear student on builtin:heldout) on it.
#
# On two GPUs (nvidia-h200-x2): NPROC=2 NEED_TRITON_371=1 THEN=60-grid-x2.sh trains the teacher data parallel
# (torchrun), waits for Triton 3.7.1 (the GatedDeltaNet / GLA rows), then runs step 60's two lanes.
#
# Why one step: a session holds one GPU for ~30 minutes and the teacher's weights (133 MB) do not outlive it, so
# the comparison must run on a teacher trained in the same session. The teacher needs no fla; step 20 needs fla,
# which this step installs from .gpu/send/wheels, and for lightning nothing newer than the image's Triton.
# Run from the repository root with PYTHONPATH=<repo>/src, $RES and $SHA (benchmarks/gpu-queue/daemon.sh does).
# CPU check (~2 min on 2 cores): SIZE=tiny DEVICE=cpu TEACHER_ARGS="--set train.tokens=300000" \
#   bash benchmarks/gpu-plan/70-teacher-then-selectors.sh <README.md's CPU --set values for step 20>
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
SIZE=${SIZE:-small}
TEACHER=${TEACHER:-/tmp/work/teacher-$SIZE}
OUTDIR=$RES/teacher-$SIZE
mkdir -p "$OUTDIR" /tmp/work

# 1. The teacher, with the recipe's defaults (step 10; skipped when it is already there)
if [ ! -f "$TEACHER/teacher.json" ]; then
  # shellcheck disable=SC2086
  SIZE=$SIZE TEACHER=$TEACHER DEVICE=$DEVICE bash benchmarks/gpu-plan/10-teacher-small.sh ${TEACHER_ARGS:-} || exit 1
fi

# 2. fla for the mixers' kernels. Its wheels ride along in .gpu/send/wheels (1.5 MB). Lightning's fixed-decay
# kernels are right under the image's Triton 3.6 (fla refuses only the backward of its gated kernels there), so the
# lightning comparison needs no Triton parts; NEED_TRITON_371=1 (GatedDeltaNet / GLA rows) waits for them.
if [ "$DEVICE" != cpu ]; then
  python3 -c "import fla" 2>/dev/null || python3 -m pip install -q --no-deps .gpu/send/wheels/*.whl 2>&1 | grep -v WARN
  python3 -c "import fla, triton; print('fla', fla.__version__, 'triton', triton.__version__)" || exit 1
  t=0
  until [ "${NEED_TRITON_371:-0}" != 1 ] || python3 -c \
      'import triton,sys; sys.exit(tuple(int(x) for x in triton.__version__.split(".")[:3]) < (3,7,1))' 2>/dev/null; do
    [ "$t" -ge "${TRITON_WAIT:-900}" ] && { echo "ERROR: no Triton >= 3.7.1 after ${t}s"; exit 1; }
    sleep 10; t=$((t + 10))
  done
fi

# 3. Does it retrieve? Exact match at 1x and 2x on held-out filler (a few seconds; step 20's evaluation repeats 1x)
trained=$(python3 -c "import json; print(json.load(open('$TEACHER/config.json'))['max_position_embeddings'])")
python3 benchmarks/gpu-plan/teacher_recall.py "$TEACHER" --lengths "$trained,$((2 * trained))" --device "$DEVICE" \
  --out "$OUTDIR/recall.json" 2>&1 | lines | progress | tail -n 12

# 4. The selectors on it (step 20, one GPU), or THEN=60-grid-x2.sh: the selectors and the mixer rows on two GPUs
TEACHER=$TEACHER DEVICE=$DEVICE bash "benchmarks/gpu-plan/${THEN:-20-selectors-small.sh}" "$@"
