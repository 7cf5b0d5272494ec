#!/usr/bin/env bash
# Step 45 (issue 7, ~4 min estimated, not yet run): fused input projections (hybridize.mixers.fusion) on the GPU.
# Their GPU test (fp32 tokens equal through the CUDA-graph decode, bf16 logits within bf16), then the A/B measured
# side by side in one run: hybrid and teacher-engine with and without `fuse_projections()`, Qwen3-1.7B shape, 25%
# Lightning, batch 1 and 8. The claim to check: fewer, larger matrix-vector products per token (q|k|v|gate and
# gate|up) lower TPOT towards the bandwidth bound. Needs fla (Lightning runs on the image's Triton).
set -uo pipefail
mkdir -p "$RES/gpu" "$RES/bench"
timeout 300 python3 -m pytest -m gpu -p no:cacheprovider -q -rA -s tests/gpu/test_decode_gpu.py -k fused \
    > "$RES/gpu/fused-projections-tests.log" 2>&1; tail -1 "$RES/gpu/fused-projections-tests.log"
timeout 500 python3 -m hybridize bench --model qwen3-1.7b --budget 0.25 --mixer lightning --contexts 8K,32K,128K \
    --batches 1,8 --variants hybrid,hybrid-fused,teacher-engine,teacher-engine-fused --repeats 2 \
    --out "$RES/bench/qwen3-1.7b-lightning-25-fused"
