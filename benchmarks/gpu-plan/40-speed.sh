#!/usr/bin/env bash
# Step 40 (issue 7): the whole speed picture in one step, each part under its own timeout so that a cut step keeps
# what came before. Durations measured on an H100 on 2026-11-23 (third session) in brackets; ~11 min in all.
# Needs the GPU machine prepared as ../shared/gpu/README.md says (fla, Triton 3.7.1).
set -uo pipefail
M=(--model qwen3-1.7b --budget 0.25)
mkdir -p "$RES/gpu" "$RES/bench"
# our Triton kernels on CUDA (the CPU test files run on the GPU) [60 s], then graph decode + kernel at scale [110 s]
timeout 300 python3 -m pytest -p no:cacheprovider -q -rA -s tests/test_triton_decode.py tests/test_triton_fused.py \
    > "$RES/gpu/triton-tests-cuda.log" 2>&1; tail -1 "$RES/gpu/triton-tests-cuda.log"
timeout 500 python3 -m pytest -m gpu -p no:cacheprovider -q -rA -s tests/gpu/test_decode_gpu.py tests/gpu/test_fused_gpu.py \
    -k "not timing" > "$RES/gpu/decode-fused-gpu-tests.log" 2>&1; tail -1 "$RES/gpu/decode-fused-gpu-tests.log"
# the decode-attention kernel alone [40 s]
timeout 300 python3 benchmarks/decode_attention.py --batches 1 8 --out "$RES/gpu/decode-attention.json"
# hybrid vs teacher-engine, batch 1 [95 s]; stock transformers [90 s]; 256K [90 s]; GatedDeltaNet [105 s]
timeout 400 python3 -m hybridize bench "${M[@]}" --mixer lightning --contexts 8K,32K,128K --variants hybrid,teacher-engine \
    --repeats 2 --out "$RES/bench/qwen3-1.7b-lightning-25"
timeout 400 python3 -m hybridize bench "${M[@]}" --mixer lightning --contexts 8K,32K --variants teacher-engine,teacher-hf \
    --repeats 2 --out "$RES/bench/qwen3-1.7b-teacher-hf"
timeout 400 python3 -m hybridize bench "${M[@]}" --mixer lightning --contexts 256K --variants hybrid,teacher-engine \
    --repeats 1 --out "$RES/bench/qwen3-1.7b-lightning-25-256k"
timeout 400 python3 -m hybridize bench "${M[@]}" --mixer gated_deltanet --contexts 8K,128K --variants hybrid,teacher-engine \
    --repeats 2 --out "$RES/bench/qwen3-1.7b-gdn-25"
# 12.5% at 128K / 512K [60 s]; batches 8 and 64 [60 s]; distillation MFU at 1 x 4096 [30 s]
timeout 400 python3 -m hybridize bench --model qwen3-1.7b --budget 0.125 --mixer lightning --contexts 128K,512K \
    --variants hybrid --repeats 1 --out "$RES/bench/qwen3-1.7b-lightning-12.5"
timeout 400 python3 -m hybridize bench "${M[@]}" --mixer lightning --contexts 4K,32K --batches 8,64 \
    --variants hybrid,teacher-engine --repeats 1 --prefill-chunk 4096 --out "$RES/bench/qwen3-1.7b-lightning-25-batches"
timeout 300 python3 -m hybridize bench "${M[@]}" --train --seq-len 4096 --train-batch 1 --steps 5 --mixer lightning \
    --out "$RES/bench/train-lightning"
