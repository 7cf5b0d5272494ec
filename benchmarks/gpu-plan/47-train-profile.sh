#!/usr/bin/env bash
# Step 47 (issue 7, ~3 min estimated, not yet run): what bounds distillation MFU (25.0% measured on an H100 against the
# 35% target). The training benchmark of step 40 (Qwen3-1.7B shape, 25%, sequence 4096, batch 1) with --profile: one
# more step under torch.profiler, its kernels' time split by kind (matmul, attention, linear mixers, softmax / loss,
# optimizer, norms, copies, other) into train.json, and the share of the step the GPU is busy at all. Lightning, then
# GatedDeltaNet (needs Triton >= 3.7.1 on Hopper). Queue it after a step that waited for Triton 3.7.1: a run in
# flight while install.sh swaps Triton under it could break.
# Run from the repository root with PYTHONPATH=<repo>/src and $RES (benchmarks/gpu-queue/daemon.sh sets both).
# CPU check (~20 s): DEVICE=cpu MODEL=tiny SEQ_LEN=64 MIXERS=lightning RES=/tmp/p47 bash benchmarks/gpu-plan/47-train-profile.sh
set -uo pipefail
# fla from the wheels sent along (as step 70 does), when an earlier step has not installed it
if [ "${DEVICE:-cuda}" != cpu ]; then
  python3 -c "import fla" 2>/dev/null || python3 -m pip install -q --no-deps .gpu/send/wheels/*.whl 2>&1 | grep -v WARN
fi
status=0
for mixer in ${MIXERS:-lightning gated_deltanet}; do
  out=$RES/bench/train-profile-$mixer
  mkdir -p "$out"
  timeout "${TRAIN_TIMEOUT:-300}" python3 -m hybridize bench --model "${MODEL:-qwen3-1.7b}" --budget 0.25 --mixer "$mixer" \
      --train --device "${DEVICE:-cuda}" \
      --seq-len "${SEQ_LEN:-4096}" --train-batch 1 --steps 5 --profile --out "$out" 2>&1 | tr '\r' '\n' | grep -v '^train bench' \
      | tee "$out/run.log" || status=1
done
exit "$status"
