#!/usr/bin/env bash
# Step 47 (issue 7, ~4 min): what bounds distillation MFU (25.0% on an H100, 28.4% / 24.2% on an H200, against the
# 35% target). The training benchmark of step 40 (Qwen3-1.7B shape, 25%, sequence 4096) with --profile: one more
# step under torch.profiler, its kernels' time split by kind (matmul, attention, linear mixers, softmax / loss,
# optimizer, norms, copies, other) into train.json, and the share of the step the GPU is busy at all; then the same
# step with ACCUM (default 4) micro-batches per optimizer step, as a recipe's batch_size / micro_batch_size does (the
# optimizer's time does not grow with tokens). Lightning, then GatedDeltaNet (needs Triton >= 3.7.1 on Hopper). Queue it
# after a step that waited for Triton 3.7.1: a run in flight while install.sh swaps Triton under it could break. Never
# beside another GPU step (it measures speed).
# Run from the repository root with PYTHONPATH=<repo>/src and $RES (benchmarks/gpu-queue/daemon.sh sets both).
# CPU check (~30 s): DEVICE=cpu MODEL=tiny SEQ_LEN=64 MIXERS=lightning RES=/tmp/p47 bash benchmarks/gpu-plan/47-train-profile.sh
set -uo pipefail
source benchmarks/gpu-plan/lib.sh
# fla from the wheels sent along (as step 70 does), when an earlier step has not installed it
if [ "$DEVICE" != cpu ]; then
  python3 -c "import fla" 2>/dev/null || python3 -m pip install -q --no-deps .gpu/send/wheels/*.whl 2>&1 | grep -v WARN
fi
status=0
for mixer in ${MIXERS:-lightning gated_deltanet}; do
  for accum in 1 "${ACCUM:-4}"; do
    out=$RES/bench/train-profile-$mixer-accum$accum
    flags=(); [ "$accum" = 1 ] && flags=(--profile)
    mkdir -p "$out"
    timeout "${TRAIN_TIMEOUT:-300}" python3 -m hybridize bench --model "${MODEL:-qwen3-1.7b}" --budget 0.25 \
        --mixer "$mixer" --train --device "$DEVICE" --seq-len "${SEQ_LEN:-4096}" --train-batch 1 \
        --train-accum "$accum" --steps 5 "${flags[@]}" --out "$out" 2>&1 | lines | grep --line-buffered -v '^train bench' \
        | tee "$out/run.log" || status=1
  done
done
exit "$status"
