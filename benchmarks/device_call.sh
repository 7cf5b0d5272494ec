#!/usr/bin/env bash
# One call of the device tool that runs issue 26's quality grid and / or issue 22's longer sweep grid side by side,
# from the repository root on the GPU machine, carrying .gpu/send/commit and what this call brings of fla's wheels
# (.gpu/send/wheels), Triton 3.7.1's slim parts (.gpu/send/slim: benchmarks/triton_slim.py) and a staged teacher
# (.gpu/teacher: benchmarks/stage_teacher.sh); which call carries which: results/quality/README.md "Continue":
#
#   N=1 T=585 Q=1 S=0 bash benchmarks/device_call.sh
#
# N names the call's files; T the seconds it may use (the device tool stops a command at 600); Q=1 runs
# `MIXERS=${MIXERS:-gated_deltanet} gpu_run.sh quality` (PARTS teacher parts returned, default 3: a call returns at
# most 8 files and 64 MiB), S=1 the 3,072-step sweep grid (LANES lanes, default 4). What comes back, in the tool's OUT:
# prepare-N.log, quality-N.log, sweep-N.log, util-N.log (GPU use each minute), res-N.tgz (OUT/quality and
# OUT/sweep-grid, without teacher parts), and the teacher parts sent in this call. HYBRIDIZE_COMMIT (default: the
# commit written to .gpu/send/commit before the call) names the code in every record.
R=$OUT
export OUT=/root/res PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
export HYBRIDIZE_COMMIT=${HYBRIDIZE_COMMIT:-$(cat .gpu/send/commit 2>/dev/null || echo unknown)}
N=${N:-1} T=${T:-585}
rm -rf "$OUT"; mkdir -p "$OUT"
bash benchmarks/gpu_run.sh prepare > "$R/prepare-$N.log" 2>&1
left=$((T - SECONDS - 30)); echo "after prepare: ${SECONDS}s, job seconds $left" | tee -a "$R/prepare-$N.log"
pids=()
if [ "${Q:-1}" = 1 ]; then
  MIXERS=${MIXERS:-gated_deltanet} CALL_SECONDS=$left PARTS_PER_CALL=${PARTS:-3} \
    bash benchmarks/gpu_run.sh quality > "$R/quality-$N.log" 2>&1 & pids+=($!)
fi
if [ "${S:-0}" = 1 ]; then
  SWEEP_NAME=sweep-3072 MINUTES=$(python3 -c "print(round(($left - 20) / 60, 2))") LANES=${LANES:-4} \
    bash benchmarks/gpu_run.sh sweep-grid --set train.tokens=12582912 --samples 32 > "$R/sweep-$N.log" 2>&1 &
  pids+=($!)
fi
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime; done ) \
  > "$R/util-$N.log" 2>&1 & mon=$!
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"; kill $mon
cp "$OUT"/quality/teacher-part?? "$R/" 2>/dev/null
(cd "$OUT" && tar czf "$R/res-$N.tgz" --exclude='teacher-part??' *)
echo "call $N done at ${SECONDS}s"; ls -la "$R"
