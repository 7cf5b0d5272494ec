#!/usr/bin/env bash
# GPU measurements of hybridize, one named job at a time; each job writes its log and results under $OUT/JOB/.
#
#   bash benchmarks/gpu_run.sh prepare          # fla (and Triton >= 3.7.1 where staged) from .gpu/send, autotune caches
#   (.gpu/ is git-ignored: a device call must carry it, `carry: [".gpu/send"]`, or prepare finds no fla and the
#   linear mixers run their PyTorch forms)
#   bash benchmarks/gpu_run.sh list             # the jobs, one line each
#   bash benchmarks/gpu_run.sh JOB [ARGS...]    # run JOB; ARGS go to its main command (e.g. --set KEY=VALUE)
#
# Run from the repository root with the package importable (`pip install -e .`, or PYTHONPATH=src). Environment:
#   OUT       results root (default out/gpu); JOB writes OUT/JOB/command.txt (commit and commands) and OUT/JOB/JOB.log
#   DEVICE    torch device (default cuda)
#   WORK      run folders with weights and checkpoints (default /tmp/work); only json / jsonl / md / png / yaml files
#             are copied from them to OUT, never weights
#   TEACHER   the teacher the conversion jobs read (default $WORK/teacher-small, which the `teacher` job writes)
#   TRAIN_DATA the conversion's text beside the retrieval episodes (default "builtin:train stdlib-code:train": what the
#             `small` teacher trains on); evaluation is always on builtin:heldout, text neither saw
#   HYBRIDIZE_COMMIT  the commit every results file records (default: `git rev-parse --short HEAD` where .git exists)
#
# A machine without network access gets fla's wheels (and Triton 3.7.1, which fla's gated chunk kernels need for their
# backward pass on Hopper) staged into .gpu/send/ by ../shared/gpu/prepare.sh and stage.sh; `prepare` installs them.
# The jobs that train GatedDeltaNet or GLA need that Triton; Lightning runs on Triton 3.6. benchmarks/triton_slim.py
# packs the same Triton stripped of debug information and of what Hopper never loads, in fewer parts; prepare installs
# it once all its parts have arrived.
#
# Jobs (each one line in `list`; the results/ folder each produced is named in results/README.md):
#   gpu-tests          tests/gpu (fla kernels vs our references, graph decode, fused kernels) and our Triton kernels'
#                      CPU test files on CUDA; kernel errors into kernels.json
#   speed              `hybridize bench`: hybrid vs teacher-engine at 8K-256K, stock transformers, GatedDeltaNet,
#                      12.5% at 128K / 512K, batches 8 and 64, distillation MFU (Qwen3-1.7B shape, random weights)
#   decode-attention   the decode-attention kernel against masked / unmasked SDPA and the bandwidth bound
#   mixers             each mixer's kernel dispatch against the raw fla op and SDPA, forward and forward+backward
#   fused-projections  fused q|k|v|gate and gate|up matmuls: their GPU test, then bench with and without them
#   train-profile      one stage-2 distillation step under the profiler (MIXERS, default "lightning gated_deltanet"),
#                      then ACCUM (default 4) micro-batches per optimizer step
#   convert            benchmarks/convert_gpu.py: a 0.16B teacher made on the machine, converted; tokens/s and memory
#   teacher            `hybridize teacher --size $SIZE` (default small) into $TEACHER, then its recall at 1x and 2x
#   selectors          every selector (SELECTORS) at BUDGET (default 0.25) on $TEACHER with MIXER (default lightning),
#                      recipe gpu-small, one shared stage 1, the all-linear student evaluated beside them
#   mixer-rows         ROWS of mixer:budget (default "gated_deltanet:0.25 gla:0.25 lightning:0.125"), each with
#                      ROW_SELECTORS (default uniform,halo,flashmorph), a mixer's stage 1 shared by its rows; mixers.md
#   ppl-checks         perplexity of $TEACHER and the mixer-rows hybrids (before and after finetune) on four texts
#   quality            issue 26's grid (benchmarks/quality_grid.py): one fixed teacher (here, or trained with
#                      deterministic kernels), 25% (BUDGET), MIXERS (default lightning,gated_deltanet) x SELECTORS
#                      (default uniform,halo,flashmorph) x SEEDS (default 3) (FUSION=intra: KV-head groups;
#                      PUBLISHED=1: HALO and FlashMorph at their papers' selection sizes), each on the teacher's
#                      201 prompts per task and length and 16 perplexity windows, seed 0's after each stage too (the stage
#                      table); as far as CALL_SECONDS (default 530) go, resumed from STATE_FROM
#                      (default results/quality); state.json, summary.json and summary.md into OUT/quality (with
#                      FUSION=intra / VARIANT: OUT/quality-intra-NAME, as the results folder)
#   sweep-grid         issue 22's design-space grid trained from scratch at the `mini` size: every linear mixer x
#                      all-linear/12:1/6:1/3:1 + the Transformer, then inter- vs intra-layer at 6:1 (INTRA, default
#                      mamba2,gated_deltanet); LANES (default 9) cells side by side; stops by MINUTES (default 7.5)
#   decode-limit       issue 23 (docs/speed.md): the GEMV and bounded-prefill GPU tests, benchmarks/gemv.py, bench
#                      with kernels per step (-fused vs -gemv), 512K prefill memory, the largest batch at 8K and 32K
#                      (and 128K); PART=tests|gemv|gemv-sweep|speed|gdn|memory|largest-8k|largest-32k|largest-128k runs
#                      one part (each sized for under 10 min on an H100, by estimate), default all but largest-128k;
#                      GPU_MEMORY (GiB) caps the allocator
#                      (an H100's total as torch reports it, about 79: an H200 run as an H100); LARGEST_VARIANTS
#                      (default hybrid-steps,teacher-engine-steps: the decode the model runs by default) splits a
#                      largest-* part per variant; MEMORY_VARIANTS likewise for the 512K part; GDN_CONTEXTS (default
#                      8K,128K) the gdn part's contexts (written to speed-gdn-25-CONTEXTS when set)
#
# Every job is resumable where its command is (teacher, selectors, mixer-rows): run it again after an interruption and
# finished stages are skipped. Jobs that measure speed (speed, decode-attention, mixers, fused-projections,
# train-profile) must have the GPU to themselves.
#
# CPU check of the conversion jobs with the shipped tiny teacher (~3 min on 2 cores):
#   S=(); for kv in align.tokens=16384 align.seq_len=256 align.batch_size=8 align.micro_batch_size=8 \
#     align.warmup_steps=1 distill.tokens=16384 distill.seq_len=256 distill.batch_size=8 distill.micro_batch_size=8 \
#     distill.warmup_steps=1 finetune.tokens=8192 finetune.seq_len=512 finetune.batch_size=4 \
#     finetune.micro_batch_size=4 "select.halo_lengths=[224]" select.halo_examples=2 select.halo_lm_sequences=4 \
#     select.halo_lm_seq_len=256 select.flashmorph_tokens=8192 "select.flashmorph_lengths=[224]" \
#     select.flashmorph_micro_batch_tokens=1024 select.flashmorph_task=passkey "select.flashmorph_task_options={}"
#   do S+=(--set "$kv"); done
#   DEVICE=cpu OUT=/tmp/gpu-check TEACHER=src/hybridize/assets/teacher-tiny N_EPISODES=50 ROWS="lightning:0.5" \
#     ROW_SELECTORS=uniform,halo bash benchmarks/gpu_run.sh mixer-rows --lengths 256,512 --samples 2 "${S[@]}"
set -uo pipefail

OUT=${OUT:-out/gpu}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/work}
TEACHER=${TEACHER:-$WORK/teacher-small}
TRAIN_DATA=${TRAIN_DATA:-builtin:train stdlib-code:train}
if [ -z "${HYBRIDIZE_COMMIT:-}" ]; then
  HYBRIDIZE_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
fi
export HYBRIDIZE_COMMIT
PY=${PYTHON:-python3}

# tqdm's carriage returns as line ends, a line at a time (plain `tr` block-buffers into a pipe)
lines() { if command -v stdbuf > /dev/null; then stdbuf -oL tr '\r' '\n'; else tr '\r' '\n'; fi; }

# tqdm redraws its bar at every step: keep a bar every 20%, drop blank lines and weight loading / saving bars
progress() {
  awk 'NF == 0 || /^(Loading weights|Writing model shards)/ { next }
       /^[^ ].*: +[0-9]+%\|/ { k = substr($0, 1, index($0, "%|")); sub(/ *[0-9]+%$/, "", k)
                              match($0, /[0-9]+%\|/); p = substr($0, RSTART, RLENGTH - 2) + 0
                              if (!(k in last) || p >= last[k] + 20 || p < last[k] || (p == 100 && last[k] != 100)) {
                                print; fflush(); last[k] = p }
                              next }
       { print; fflush() }'
}

# run LOG CMD...: record the command, run it with its output filtered into LOG and the terminal; returns its status
run() {
  local log=$1; shift
  echo "command: $*" >> "$DIR/command.txt"
  echo "+ $*"
  "$@" 2>&1 | lines | progress | tee -a "$log"
  return "${PIPESTATUS[0]}"
}

# fla's autotune results (benchmarks/triton-autotune/, keyed by Triton version and GPU): kernels then compile only
# the winning configuration instead of autotuning
unpack_autotune() {
  mkdir -p ~/.triton/cache && for f in benchmarks/triton-autotune/*.tgz; do tar xzf "$f" -C ~/.triton/cache; done
}

# this machine's autotune results, for benchmarks/triton-autotune/ (tens of KB)
save_autotune() {
  (cd ~/.triton/cache 2>/dev/null && find . -name '*.autotune.json' -print0 \
     | tar czf "$1/triton-autotune-cache.tgz" --null -T -) || true
}

# copy_results RUN_FOLDER DEST: results only (json / jsonl / md / png / yaml); no weights, checkpoints, TensorBoard
# logs or tokenizer copies
copy_results() {
  mkdir -p "$2"
  (cd "$1" && find . \( -name checkpoints -o -name tb \) -prune -o -type f \
     \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.yaml' \) \
     ! -name 'tokenizer*.json' -print0 | xargs -0 -r cp --parents -t "$2")
}

need_teacher() {
  [ -f "$TEACHER/config.json" ] && return 0
  echo "ERROR: no teacher at $TEACHER (run the teacher job, or set TEACHER)"
  exit 1
}

# The conversion's retrieval episodes in the teacher's format (new draws, seed 1, as `hybridize demo` does): N
# (default 800, ~430K tokens at 1024) documents up to the teacher's trained length (at most 2048) on builtin:train
# filler. Kept where they exist.
episodes() {
  local path=$WORK/episodes-$(basename "$TEACHER").jsonl
  if [ ! -s "$path" ]; then
    "$PY" - "$path" "$TEACHER" "${N_EPISODES:-800}" <<'PY' >&2
import json, sys
from pathlib import Path
from hybridize.demo import _episodes
path, teacher, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
trained = json.loads((teacher / "config.json").read_text())["max_position_embeddings"]
_episodes(path, teacher, min(trained, 2048), n, data="builtin:train")
print(f"episodes: {path} ({n} documents, up to {min(trained, 2048)} tokens, builtin:train filler)")
PY
  fi
  echo "$path"
}

job_prepare() {
  # the wheels first: install.sh returns early, before its own wheel step, while Triton 3.7.1's parts are incomplete
  if ls .gpu/send/wheels/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps .gpu/send/wheels/*.whl
  fi
  # Triton 3.7.1 stripped, in two or three parts (benchmarks/triton_slim.py) instead of the wheel's five
  [ -d .gpu/send/slim ] && "$PY" benchmarks/triton_slim.py install
  [ -f .gpu/send/install.sh ] && bash .gpu/send/install.sh
  unpack_autotune
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  "$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
  "$PY" -c 'import fla; print("fla", fla.__version__)' 2>/dev/null || echo "fla not installed"
}

job_gpu_tests() {
  local status=0
  HYBRIDIZE_GPU_REPORT=$DIR/kernels.json run "$DIR/gpu-tests.log" \
    "$PY" -m pytest -m gpu -p no:cacheprovider -q -rA tests/gpu "$@" || status=1
  run "$DIR/triton-tests-cuda.log" "$PY" -m pytest -p no:cacheprovider -q -rA tests/test_triton_decode.py \
    tests/test_triton_fused.py tests/test_triton_gemv.py tests/test_triton_linear_decode.py \
    tests/test_triton_attention_prologue.py || status=1
  return "$status"
}

job_speed() {
  local m=(-m hybridize bench --model qwen3-1.7b --device "$DEVICE") status=0
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --contexts 8K,32K,128K \
    --variants hybrid,teacher-engine --repeats 2 --out "$DIR/qwen3-1.7b-lightning-25" "$@" || status=1
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --contexts 256K \
    --variants hybrid,teacher-engine --repeats 1 --out "$DIR/qwen3-1.7b-lightning-25-256k" "$@" || status=1
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --contexts 8K,32K \
    --variants teacher-engine,teacher-hf --repeats 2 --out "$DIR/qwen3-1.7b-teacher-hf" "$@" || status=1
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer gated_deltanet --contexts 8K,128K \
    --variants hybrid,teacher-engine --repeats 2 --out "$DIR/qwen3-1.7b-gdn-25" "$@" || status=1
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.125 --mixer lightning --contexts 128K,512K \
    --variants hybrid --repeats 1 --out "$DIR/qwen3-1.7b-lightning-12.5" "$@" || status=1
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --contexts 4K,32K --batches 8,64 \
    --variants hybrid,teacher-engine --repeats 1 --prefill-chunk 4096 --out "$DIR/qwen3-1.7b-lightning-25-batches" \
    "$@" || status=1
  run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --train --seq-len 4096 --train-batch 1 \
    --steps 5 --out "$DIR/train-lightning" || status=1
  return "$status"
}

job_decode_attention() {
  run "$DIR/decode-attention.log" "$PY" benchmarks/decode_attention.py --out "$DIR/decode-attention.json" "$@"
}

job_mixers() {
  run "$DIR/mixers.log" "$PY" benchmarks/mixers.py --commit "$HYBRIDIZE_COMMIT" --out "$DIR/mixers.json" "$@"
}

job_fused_projections() {
  run "$DIR/fused-projections-tests.log" \
    "$PY" -m pytest -m gpu -p no:cacheprovider -q -rA tests/gpu/test_decode_gpu.py -k fused
  run "$DIR/fused-projections.log" "$PY" -m hybridize bench --model qwen3-1.7b --budget 0.25 --mixer lightning \
    --contexts 8K,32K,128K --batches 1,8 --variants hybrid,hybrid-fused,teacher-engine,teacher-engine-fused \
    --repeats 2 --device "$DEVICE" --out "$DIR" "$@"
}

job_train_profile() {
  local status=0 mixer accum flags
  for mixer in ${MIXERS:-lightning gated_deltanet}; do
    for accum in 1 "${ACCUM:-4}"; do
      flags=(); [ "$accum" = 1 ] && flags=(--profile)
      run "$DIR/train-profile.log" "$PY" -m hybridize bench --model "${MODEL:-qwen3-1.7b}" --budget 0.25 \
        --mixer "$mixer" --train --device "$DEVICE" --seq-len "${SEQ_LEN:-4096}" --train-batch 1 \
        --train-accum "$accum" --steps 5 "${flags[@]}" --out "$DIR/train-profile-$mixer-accum$accum" "$@" || status=1
    done
  done
  return "$status"
}

job_convert() {
  run "$DIR/convert.log" "$PY" benchmarks/convert_gpu.py --out "$WORK/convert" --commit "$HYBRIDIZE_COMMIT" \
    --device "$DEVICE" "$@"
  local rc=$?
  copy_results "$WORK/convert" "$DIR"
  return "$rc"
}

job_teacher() {
  local trained
  mkdir -p "$WORK"
  run "$DIR/train.log" "$PY" -m hybridize teacher --size "${SIZE:-small}" --out "$TEACHER" --device "$DEVICE" "$@"
  for f in teacher.json config.json run/recipe.json run/metrics.jsonl run/curves.png; do
    [ -f "$TEACHER/$f" ] && cp "$TEACHER/$f" "$DIR/"
  done
  [ -f "$TEACHER/teacher.json" ] || { echo "ERROR: no teacher written; run the job again to continue"; return 1; }
  trained=$("$PY" -c "import json; print(json.load(open('$TEACHER/config.json'))['max_position_embeddings'])")
  run "$DIR/recall.log" "$PY" benchmarks/teacher_recall.py "$TEACHER" --lengths "$trained,$((2 * trained))" \
    --device "$DEVICE" --out "$DIR/recall.json"
}

job_selectors() {
  need_teacher
  local ep work=$WORK/selectors rc
  ep=$(episodes) || return 1
  [[ $DEVICE == cuda* ]] && unpack_autotune
  cp src/hybridize/recipes/gpu-small.yaml "$DIR/"
  run "$DIR/run.log" "$PY" benchmarks/compare_selectors.py --teacher "$TEACHER" --out "$work" --recipe gpu-small \
    --budget "${BUDGET:-0.25}" --selectors "${SELECTORS:-uniform,random,halo,kl_guided,flashmorph}" \
    --set "mixer=${MIXER:-lightning}" --device "$DEVICE" --data $TRAIN_DATA "$ep" --eval-data builtin:heldout \
    --all-linear "$@"
  rc=$?
  copy_results "$work" "$DIR"
  [ -f "$TEACHER/teacher.json" ] && cp "$TEACHER/teacher.json" "$DIR/teacher.json"
  [[ $DEVICE == cuda* ]] && save_autotune "$DIR"
  return "$rc"
}

job_mixer_rows() {
  need_teacher
  local ep row mixer budget name work src status=0
  ep=$(episodes) || return 1
  [[ $DEVICE == cuda* ]] && unpack_autotune
  cp src/hybridize/recipes/gpu-small.yaml "$DIR/"
  for row in ${ROWS:-gated_deltanet:0.25 gla:0.25 lightning:0.125}; do
    mixer=${row%%:*}; budget=${row##*:}
    name=$mixer-$("$PY" -c "print(f'{100 * float(\"$budget\"):g}'.replace('.', '_'))")
    work=$WORK/mixer-rows/$name
    # stage 1 depends on the mixer only: a row reuses the first finished one of its mixer (its done.json skips align)
    src=$(ls -d "$WORK/mixer-rows/$mixer"-*/stage1/stages/align/done.json 2>/dev/null | head -1)
    if [ -n "$src" ] && [ ! -e "$work/stage1/stages/align" ]; then
      mkdir -p "$work/stage1/stages" && cp -r "$(dirname "$src")" "$work/stage1/stages/align"
    fi
    echo "=== $name" | tee -a "$DIR/run.log"
    # at the deadline USR1 first (compare_selectors.py prints every thread's stack and goes on), the kill 30 s later
    run "$DIR/run.log" timeout -s USR1 -k 30 "${ROW_TIMEOUT:-900}" "$PY" benchmarks/compare_selectors.py \
      --teacher "$TEACHER" --out "$work" --recipe gpu-small --budget "$budget" \
      --selectors "${ROW_SELECTORS:-uniform,halo,flashmorph}" --set "mixer=$mixer" --device "$DEVICE" \
      --data $TRAIN_DATA "$ep" --eval-data builtin:heldout --all-linear "$@" || status=1
    copy_results "$work" "$DIR/$name"
  done
  [ -f "$TEACHER/teacher.json" ] && cp "$TEACHER/teacher.json" "$DIR/teacher.json"
  "$PY" benchmarks/mixers_table.py "$DIR"/*/selectors.json --out "$DIR/mixers.md"
  [[ $DEVICE == cuda* ]] && save_autotune "$DIR"
  return "$status"
}

job_ppl_checks() {
  need_teacher
  local links=$WORK/ppl-check-models models=() row sel name spec data dtype length status=0
  length=${LENGTH:-$("$PY" -c "import json; print(json.load(open('$TEACHER/config.json'))['max_position_embeddings'])")}
  # each model under a link named after its row, selector and stage: the report names it so
  rm -rf "$links"; mkdir -p "$links"
  for row in "$WORK"/mixer-rows/*/; do
    row=${row%/}
    for sel in $(echo "${SELECTORS:-uniform,halo,flashmorph}" | tr , ' '); do
      name=$(basename "$row")-$sel
      if [ -f "$row/$sel/config.json" ]; then ln -s "$row/$sel" "$links/$name"; models+=(--model "$links/$name"); fi
      if [ -f "$row/$sel/stages/distill/model/config.json" ]; then
        ln -s "$row/$sel/stages/distill/model" "$links/$name-distill"; models+=(--model "$links/$name-distill")
      fi
    done
  done
  if [ ${#models[@]} -eq 0 ]; then
    echo "ERROR: no hybrid under $WORK/mixer-rows (run mixer-rows on this machine first)"
    return 1
  fi
  for spec in builtin:heldout builtin:train stdlib-code:heldout builtin:heldout@float32; do
    data=${spec%@*}; dtype=bfloat16; [ "$spec" != "$data" ] && dtype=${spec#*@}
    name=$(echo "$data-$dtype" | tr ':' '-')
    run "$DIR/ppl-checks.log" "$PY" -m hybridize eval --teacher "$TEACHER" "${models[@]}" --suite perplexity \
      --lengths "$length" --samples 16 --data "$data" --dtype "$dtype" --device "$DEVICE" --out "$DIR/$name" \
      --no-progress "$@" || status=1
  done
  "$PY" - "$DIR" > "$DIR/summary.md" <<'PY'
# one table: a row per model, a column per text and dtype (the ratio to the teacher in brackets), then each model's
# loss minus the entropy of its predictions (nats/token; > 0: more confident than its errors warrant)
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {d.name: [r for r in json.loads((d / "report.json").read_text())["results"] if r["metric"] == "perplexity"]
        for d in sorted(out.iterdir()) if (d / "report.json").is_file()}
cols = {name: {r["model"]: (r["role"], r["value"]) for r in rs} for name, rs in rows.items()}
models = list(dict.fromkeys(m for c in cols.values() for m in c))
teacher = {name: next((v for role, v in c.values() if role == "teacher"), None) for name, c in cols.items()}
print("| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
for m in models:
    cells = ["-" if m not in c else f"{c[m][1]:.2f}" + (f" ({c[m][1] / teacher[name]:.3f})" if teacher[name] else "")
             for name, c in cols.items()]
    print(f"| {m} | " + " | ".join(cells) + " |")
gaps = {name: {r["model"]: r["nll"] - r["entropy"] for r in rs if "entropy" in r} for name, rs in rows.items()}
if any(gaps.values()):
    print("\nloss - predictive entropy (nats/token; > 0: overconfident)\n")
    print("| model | " + " | ".join(gaps) + " |\n|---|" + "---|" * len(gaps))
    for m in models:
        print(f"| {m} | " + " | ".join(f"{g[m]:+.3f}" if m in g else "-" for g in gaps.values()) + " |")
PY
  cat "$DIR/summary.md"
  return "$status"
}

# quality: one call of the device tool at a time (`bash benchmarks/gpu_run.sh prepare > /dev/null &&
# bash benchmarks/gpu_run.sh quality`, carry [".gpu/send"]). The next call right away keeps the machine, and with it
# the state, the teacher and each seed's stage 1 under $WORK. Copy OUT/quality/* into results/quality/ after each
# call (OUT/quality-intra-NAME/* into results/quality-intra-NAME/ for FUSION=intra and VARIANT=NAME): that folder is all a fresh machine needs to go on, with the same teacher only (state.json pins its weights
# hash). The grid's teacher is $TEACHER in bf16 (WORK/teacher-small-bf16). Made here, it comes back too, PARTS_PER_CALL
# (default 3) parts of PART_SIZE (default 15M) per call beside teacher-manifest (OUT/quality/; TEACHER_PARTS=0: not):
# `cat teacher-part?? | tar xzf - -C DIR` gives DIR/teacher-small-bf16, whose weights_sha256 must be state.json's; a
# later call on a fresh machine sends it back over several calls (receive_teacher, TEACHER_IN;
# benchmarks/stage_teacher.sh) instead of training it again. Exit 3: stopped at CALL_SECONDS, or teacher parts still
# missing; 143: a conversion longer than a call stopped at CALL_SECONDS with a checkpoint. Either: call again.
#
# Estimate, and how: the H200 times of results/ with compiled kernels, x 1.15 for an H100 (the small teacher trained
# at 210K tokens/s on an H200, 180K on an H100). Per conversion: distill ~70 s, finetune ~12 s, evaluation ~40 s (2
# tasks x 3 lengths x 201 prompts, 5.6x the 216 prompts that took 6-8 s a model on an H200). Selection: HALO ~30 s,
# FlashMorph ~45 s (plus ~80 s compiling once per mixer and machine). Stage 1 ~35 s per (mixer, seed) (plus ~100 s
# compiling once per mixer and machine). A (mixer, seed) of three selectors: ~35 + 3 x 122 + 30 + 45 = ~475 s; the
# six of the grid ~48 min; with the teacher's evaluation (~40 s) and, per fresh machine, ~5 min of compiling, episodes
# and installs: ~55 min of GPU time in ~7 calls of ~9 min with the teacher sent, one or two calls more when it is
# trained here (~9.5 min; deterministic kernels may slow it, not timed). A call stops before a conversion that would
# overrun it (quality_grid.estimate_seconds: each part the longest measured for the mixer), running its stage 1 alone
# where only that fits, so each leaves up to a few minutes unused; one longer than a whole call (PUBLISHED=1's
# selection) starts at a call's start and is stopped at its deadline by SIGTERM with a checkpoint of the stage in
# training, which the next call on the machine continues. Those times are of one conversion at a time: LANES
# (default 3) converts that many (mixer, seed) groups side by side (`quality_grid.py --jobs`), as the design-space
# grid's 9 lanes did at a similar size (results/sweep-mini/); the deadline check goes by the lanes' own measured
# conversions (GatedDeltaNet, 3 lanes on an H100: 457-518 s each with a fresh machine's stage 1, results/quality/).
# LANES=1: one at a time.
quality_back() {
  local live=$WORK/quality-state${QUALITY_SUFFIX} lane
  cp "$live"/state.json "$live"/summary.json "$live"/summary.md "$live"/stages.json "$DIR/" \
    2> /dev/null || true
  for lane in "$QUALITY_WORK"/$([ "${FUSION:-inter}" = intra ] && echo intra/)lanes/*/; do
    [ -f "$lane/lane.log" ] && mkdir -p "$DIR/lanes" && lines < "$lane/lane.log" | progress \
      > "$DIR/lanes/$(basename "$lane").log"
  done
  # the kernels' autotune results (tens of KB): for benchmarks/triton-autotune/, so that a fresh machine's first
  # conversion of a mixer does not tune them again
  [[ $DEVICE == cuda* ]] && save_autotune "$DIR"
  return 0
}

# A teacher brought back in parts (teacher-manifest: the weights' hash, then each part's sha256) goes to a fresh machine
# over several calls, as many parts a call as fit beside the tree: TEACHER_IN (default .gpu/teacher, carried) holds
# the manifest and this call's parts; they collect in $WORK/teacher-in until every part is there, then make $TEACHER,
# whose weights hash must be the manifest's. Returns 1 while parts are missing (the job stops: call again with the
# next parts), also in a call that sends none once an earlier one sent some (a call that carries other things);
# 0 when no manifest was ever sent (the job trains the teacher) or the teacher was made.
receive_teacher() {
  local in=${TEACHER_IN:-.gpu/teacher} got=$WORK/teacher-in want have
  [ -f "$in/teacher-manifest" ] || [ -f "$got/teacher-manifest" ] || return 0
  mkdir -p "$got"
  if [ -f "$in/teacher-manifest" ]; then
    cp "$in/teacher-manifest" "$got/"
    find "$in" -maxdepth 1 -name 'teacher-part??' -exec cp -t "$got" {} +
  fi
  want=$(grep -c ' teacher-part' "$got/teacher-manifest")
  # parts whose sha256 is the manifest's (a corrupt one is named by sha256sum and removed, to be sent again)
  have=$(cd "$got" && grep ' teacher-part' teacher-manifest | sha256sum --check --ignore-missing 2> /dev/null \
    | awk '/: OK$/ { n++; next } { sub(/:.*/, ""); print "corrupt: " $0 > "/dev/stderr"; system("rm -f " $0) }
           END { print n + 0 }')
  if [ "$have" -lt "$want" ]; then
    echo "teacher: $have of $want parts on this machine; send the rest (${TEACHER_IN:-.gpu/teacher}) and call again"
    return 1
  fi
  mkdir -p "$(dirname "$TEACHER")" && cat "$got"/teacher-part?? | tar xzf - -C "$(dirname "$TEACHER")"
  want=$(awk '/^weights_sha256/ { print $2 }' "$got/teacher-manifest")
  have=$("$PY" -c "from hybridize.provenance import weights_sha256 as w; print(w('$TEACHER'))")
  [ "$have" = "$want" ] || { echo "teacher from parts: weights $have, manifest $want"; rm -rf "$TEACHER"; return 1; }
  echo "teacher: made at $TEACHER from $(grep -c " teacher-part" "$got/teacher-manifest") parts (weights $have)"
}

# the quality grid's variant (VARIANT, or `published` for PUBLISHED=1) and the suffix of its state, results folder and
# OUT folder: -intra for FUSION=intra, then -VARIANT (OUT/quality-intra-ppl <-> results/quality-intra-ppl), so two
# grids can run side by side in one call (`FUSION=intra bash gpu_run.sh quality & bash gpu_run.sh quality; wait`)
quality_variant() { if [ "${PUBLISHED:-0}" = 1 ]; then echo published; else echo "${VARIANT:-}"; fi; }
quality_suffix() {
  local variant
  variant=$(quality_variant)
  echo "$([ "${FUSION:-inter}" = intra ] && echo -intra)${variant:+-$variant}"
}

job_quality() {
  # FUSION=intra: the same grid with the budget's share of every layer's KV-head groups (uniform, random, halo or
  # flashmorph: SELECTORS), a state of its own (results/quality-intra) on the same teacher and prompts
  # VARIANT=NAME: a grid of its own beside the recipe's (state results/quality[-intra]-NAME, conversions in
  # $WORK/quality-NAME), for other settings passed as ARGS (`VARIANT=gpl1 FUSION=intra bash benchmarks/gpu_run.sh
  # quality --set select.groups_per_layer=1`). PUBLISHED=1: the variant `published`, HALO and FlashMorph at their
  # papers' selection sizes (below); SEEDS=1 keeps it to ~15 min
  local variant
  variant=$(quality_variant)
  QUALITY_SUFFIX=$(quality_suffix)
  QUALITY_WORK=$WORK/quality${variant:+-$variant}
  local published=()
  if [ "${PUBLISHED:-0}" = 1 ]; then
    # FlashMorph: 20M tokens of gate training (the paper's, for any model size; the recipe's 1.2M). HALO: ~5M
    # tokens per evaluation pass (the paper's 234M over Qwen3-1.7B's 29 passes is ~8M; C's windows are bounded by
    # the ~3.6M tokens of the conversion data): 3 recall tasks x 1,024 prompts of 992 tokens and 2,048 windows of
    # 1,024 tokens for C (the recipe's 32 and 64)
    published=(--set select.flashmorph_tokens=20000000 --set select.halo_examples=1024
               --set select.halo_lm_sequences=2048)
  fi
  local t0=$SECONDS limit=${CALL_SECONDS:-530} live=$WORK/quality-state$QUALITY_SUFFIX parts=$WORK/teacher-parts
  local mixers=${MIXERS:-lightning,gated_deltanet} from=${STATE_FROM:-results/quality$QUALITY_SUFFIX} ep f sent=0 rc=3
  local minutes
  quality_left() { echo $(( limit - (SECONDS - t0) )); }
  mkdir -p "$live" "$parts"
  if [ ! -f "$live/state.json" ] && [ -f "$from/state.json" ]; then
    cp "$from/state.json" "$live/" && echo "state: from $from"
  fi
  [[ $DEVICE == cuda* ]] && unpack_autotune
  # the teacher the grid converts from: $TEACHER's weights in bf16 ($WORK/<name>-bf16), the dtype every conversion
  # and evaluation loads it in on CUDA, half the bytes to bring back and send. Here (an earlier call on this machine,
  # or sent), else made from $TEACHER, which is trained within this call when missing; the next call on this machine
  # continues the training from its checkpoint
  local trained=$TEACHER
  TEACHER=$WORK/$(basename "$trained")-bf16
  # one grid at a time makes the teacher from its parts (another, started beside it, waits here)
  mkdir -p "$WORK"
  { command -v flock > /dev/null && flock 9; [ -f "$TEACHER/teacher.json" ] || receive_teacher; } 9> "$WORK/teacher.lock" \
    || return 3
  if [ ! -f "$TEACHER/teacher.json" ]; then
    if [ ! -f "$trained/teacher.json" ]; then
      minutes=$(awk "BEGIN { m = ($(quality_left) - 45) / 60; print (m < 1 ? 1 : m) }")
      run "$DIR/quality.log" "$PY" -m hybridize teacher --size "${SIZE:-small}" --out "$trained" --device "$DEVICE" \
        --set train.deterministic=true --max-minutes "$minutes"
      [ -f "$trained/teacher.json" ] || { echo "teacher not finished: run the job again"; quality_back; return 3; }
    fi
    "$PY" - "$trained" "$TEACHER" <<'PY' | tee -a "$DIR/quality.log"
import json, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from hybridize.provenance import weights_sha256
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():  # config, tokenizer, records; not run/ (checkpoints, TensorBoard) nor the weights
    if f.is_file() and f.suffix != ".safetensors":
        shutil.copy2(f, dst / f.name)
for f in sorted(src.glob("*.safetensors")):
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(f).items()},
              dst / f.name, metadata={"format": "pt"})
config = json.loads((dst / "config.json").read_text())
config.pop("torch_dtype", None)
(dst / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}, indent=2))
print(f"teacher {src} (weights {weights_sha256(src)}) in bf16: {dst} (weights {weights_sha256(dst)})")
PY
    [ -f "$TEACHER/teacher.json" ] || return 1
    touch "$parts/trained-here"
  fi
  "$PY" -c "from hybridize.provenance import weights_sha256; print('teacher $TEACHER', weights_sha256('$TEACHER'))"
  if [ "${TEACHER_PARTS:-1}" = 1 ] && [ -f "$parts/trained-here" ]; then
    # the weights, config, tokenizer and records; not run/ (checkpoints with optimizer state, TensorBoard); gzip -1
    # takes bf16 weights to ~80% (the exponent bytes), 7 parts instead of 9 for the small teacher
    if [ ! -f "$parts/teacher-part00" ]; then
      tar cf - --exclude="$(basename "$TEACHER")/run" -C "$(dirname "$TEACHER")" "$(basename "$TEACHER")" \
        | gzip -1 | split -b "${PART_SIZE:-15M}" -d - "$parts/teacher-part"
      f=$("$PY" -c "from hybridize.provenance import weights_sha256 as w; print(w('$TEACHER'))")
      (cd "$parts" && { echo "weights_sha256 $f"; sha256sum teacher-part??; } > teacher-manifest)
    fi
    cp "$parts/teacher-manifest" "$DIR/"
    for f in "$parts"/teacher-part??; do
      [ -e "$f.sent" ] || [ "$sent" -ge "${PARTS_PER_CALL:-3}" ] || { cp "$f" "$DIR/" && touch "$f.sent" && sent=$((sent + 1)); }
    done
    echo "teacher parts: $sent in this call;" \
      "$(ls "$parts"/*.sent | wc -l) of $(ls "$parts"/teacher-part?? | wc -l) sent"
  fi
  # GatedDeltaNet's training on Hopper with Triton < 3.7.1 runs the PyTorch chunked form of the gated delta rule
  # (hybridize.mixers.kernels: fla refuses that backward there); said in the log, so a grid's records can be read
  if [[ $DEVICE == cuda* ]] && [[ ",$mixers," == *,gated_deltanet,* ]] && ! "$PY" -c \
      'import triton, sys; sys.exit(tuple(int(x) for x in triton.__version__.split(".")[:3]) < (3, 7, 1))'; then
    echo "Triton < 3.7.1: gated_deltanet trains through hybridize's PyTorch chunked gated delta rule" \
      | tee -a "$DIR/quality.log"
  fi
  [ -n "$mixers" ] || { quality_back; return 3; }
  ep=$(episodes) || return 1
  if [ "$(quality_left)" -gt 60 ]; then
    # quality_grid.py stops before a conversion that would not fit; the timeout (USR1 first: every thread's stack)
    # only catches an estimate gone wrong, whose conversion the next call on this machine continues
    run "$DIR/quality.log" timeout -s USR1 -k 20 "$(( $(quality_left) + 30 ))" "$PY" benchmarks/quality_grid.py \
      --teacher "$TEACHER" --state "$live" --work "$QUALITY_WORK" --mixers "$mixers" \
      --selectors "${SELECTORS:-uniform,halo,flashmorph}" \
      --seeds "${SEEDS:-3}" --budget "${BUDGET:-0.25}" --fusion "${FUSION:-inter}" --jobs "${LANES:-3}" \
      --recipe gpu-small --data $TRAIN_DATA "$ep" --eval-data builtin:heldout --device "$DEVICE" \
      --deadline "$(quality_left)" "${published[@]}" "$@"
    rc=$?
  fi
  quality_back
  return "$rc"
}

# Issue 22's grid (`hybridize sweep`, docs/training.md) at the `mini` size (12 layers of 384, 256-token rows, 256 steps
# of 16 rows; src/hybridize/pretrain/presets.py), in $WORK/sweep-grid:
#   1. every linear mixer (MIXERS) x {all-linear, 12:1, 6:1, 3:1} plus the Transformer: 33 cells, LANES side by side
#      (one lane per mixer, the Transformer alone);
#   2. inter- against intra-layer at 6:1 for INTRA: the intra-layer cells (one of 6 KV groups kept in each of the 12
#      layers, 5:1 in every layer), whose inter-layer twins (2 of 12 layers, 5:1; parameters within 0.1%) are in grid 1.
# Every cell: the same BPE, tokens, data order and seed 0, scored on builtin:heldout (perplexity by context bucket) and
# on passkey / NIAH-single-2 / MQAR at 256 / 512 / 1024 tokens, 16 prompts each, with Wilson 95% intervals. $OUT/
# sweep-grid/ gets sweep.json, README.md (table, figures, the studies' numbers beside ours), each cell's result.json,
# pretrain.json, config.json, metrics and curves, the lanes' logs, the tokenizer and the autotune results; never
# weights. Both grids stop by MINUTES after the start, a cell in training at a step boundary with a checkpoint. Run the
# job again to continue: on the same machine from $WORK, on a fresh one with RESUME_FROM=<an earlier $OUT/sweep-grid>,
# whose scored cells are not trained again. SWEEP_SIZE=tiny DEVICE=cpu LANES=2 MIXERS=retnet,mamba2 INTRA=mamba2 is a
# CPU check of the job (~1 min on 2 cores; add --samples 2 --eval-windows 2).
#
# Time on one H100, measured at f411199 (results/sweep-mini/): ~11.5 min of job time for the 35 cells over two calls. With
# 9 lanes a cell's 256 steps take 19-36 s; a lane's first cell 33-222 s, mostly compiling and autotuning fla's kernels
# (benchmarks/triton-autotune/autotune-h100-triton3.7.1-fla0.6.0.tgz holds these shapes).
#
# At 256 steps no cell learns to retrieve (the Transformer neither): recall needs ~2,000-3,000 optimizer steps at these
# sizes (src/hybridize/pretrain/teachers.py). The longer grid runs in a folder of its own (SWEEP_NAME) with more steps:
#   SWEEP_NAME=sweep-3072 bash benchmarks/gpu_run.sh sweep-grid --set train.tokens=12582912 --samples 32
# 12x the steps: ~4-7 min a cell with 9 lanes, ~25 min for the grid on one H100 (by the measured rate, not yet run),
# so over several calls (MINUTES each; a cell in training resumes from its checkpoint on the same machine; on a fresh
# one only scored cells carry over with RESUME_FROM). MIXERS=lightning,deltanet,hgrn,retnet (and the Transformer)
# train with fla's kernels on Triton 3.6; GatedDeltaNet and Mamba-2 there train through the PyTorch chunked forms (fla
# refuses their backward: hybridize.mixers.kernels); GLA and HGRN-2 (fla's chunk_gla, which fla does not refuse) were
# checked against the references with Triton 3.7.1 only (results/mixers-design-space).
job_sweep_grid() {
  local work=$WORK/${SWEEP_NAME:-sweep-grid} start status=0 lanes
  local minutes=${MINUTES:-7.5} intra=${INTRA:-mamba2,gated_deltanet}
  local common=(-m hybridize sweep --size "${SWEEP_SIZE:-mini}" --out "$work" --device "$DEVICE")
  start=$(date +%s)
  left() { "$PY" -c "print(round(max(0.0, $minutes - ($(date +%s) - $start) / 60), 2))"; }
  mkdir -p "$work"
  if [ -n "${RESUME_FROM:-}" ] && [ ! -f "$work/sweep-config.json" ]; then
    # an earlier run's scored cells: their result.json is all a sweep reads of them
    (cd "$RESUME_FROM" && find . \( -name result.json -o -name pretrain.json -o -name sweep-config.json \
       -o -path './tokenizer/*' \) -print0 | xargs -0 -r cp --parents -t "$work")
    echo "resumed from $RESUME_FROM: $(find "$work/cells" -name result.json | wc -l) scored cells"
  fi
  [[ $DEVICE == cuda* ]] && unpack_autotune
  run "$DIR/run.log" "$PY" "${common[@]}" --mixers "${MIXERS:-lightning,gated_deltanet,gla,deltanet,hgrn,hgrn2,retnet,mamba2}" \
    --ratios all-linear,12:1,6:1,3:1,transformer --jobs "${LANES:-9}" \
    --max-minutes "$("$PY" -c "print(max(0.5, $(left) - 1.5))")" "$@" || status=1
  if [ "$("$PY" -c "print(int($(left) > 0.5))")" = 1 ]; then
    lanes=$(echo "$intra" | tr ',' '\n' | wc -l)
    run "$DIR/run.log" "$PY" "${common[@]}" --mixers "$intra" --ratios 6:1 --fusion inter,intra --jobs "$lanes" \
      --max-minutes "$(left)" "$@" || status=1
  else
    echo "grid 2 not started: out of time (run the job again)" | tee -a "$DIR/run.log"
  fi
  copy_results "$work" "$DIR"
  mkdir -p "$DIR/tokenizer" "$DIR/logs"
  cp "$work"/tokenizer/* "$DIR/tokenizer/" 2>/dev/null
  cp "$work"/logs/*.log "$DIR/logs/" 2>/dev/null
  [[ $DEVICE == cuda* ]] && save_autotune "$DIR"
  echo "sweep-grid: $(find "$work/cells" -name result.json 2>/dev/null | wc -l) cells scored in $(( $(date +%s) - start )) s" \
    | tee -a "$DIR/run.log"
  return "$status"
}

# decode-limit: each PART one command of a few minutes; `PART=speed bash benchmarks/gpu_run.sh decode-limit`
job_decode_limit() {
  local m=(-m hybridize bench --model qwen3-1.7b --device "$DEVICE") part status=0 cap=()
  [ -n "${GPU_MEMORY:-}" ] && cap=(--gpu-memory "$GPU_MEMORY")
  for part in ${PART:-tests gemv gemv-sweep speed gdn memory largest-8k largest-32k}; do
    echo "=== $part" | tee -a "$DIR/decode-limit.log"
    case $part in
      tests)
        run "$DIR/tests.log" "$PY" -m pytest -m gpu -p no:cacheprovider -q -rA -s tests/gpu/test_gemv_gpu.py \
          tests/gpu/test_linear_decode_gpu.py || status=1
        # graph decode through the one-kernel linear steps (Lightning / RetNet / GatedDeltaNet) against eager, dynamic
        run "$DIR/tests.log" "$PY" -m pytest -m gpu -p no:cacheprovider -q -rA tests/gpu/test_decode_gpu.py \
          -k "graph_decode_equals_eager and (lightning or retnet or gla or deltanet or mixed)" || status=1
        run "$DIR/tests.log" "$PY" -m pytest -p no:cacheprovider -q -rA tests/test_triton_gemv.py tests/test_triton_fused.py \
          tests/test_triton_linear_decode.py tests/test_triton_attention_prologue.py || status=1 ;;
      gemv)
        run "$DIR/gemv.log" "$PY" benchmarks/gemv.py --model qwen3-1.7b --batches 1,8 --out "$DIR/gemv.json" \
          || status=1 ;;
      gemv-sweep)
        run "$DIR/gemv.log" "$PY" benchmarks/gemv.py --model qwen3-1.7b --batches 1 --variants hybrid --sweep \
          --out "$DIR/gemv-sweep.json" || status=1 ;;
      speed)  # TPOT against its bound and kernels per step, cuBLAS vs our GEMV, one run
        run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --contexts 8K,32K,128K \
          --variants hybrid-fused,hybrid-gemv,hybrid-steps,teacher-engine-fused,teacher-engine-steps --repeats 1 --new-tokens 16 \
          "${cap[@]}" --out "$DIR/speed-lightning-25" "$@" || status=1 ;;
      gdn)
        run "$DIR/speed.log" "$PY" "${m[@]}" --budget 0.25 --mixer gated_deltanet --contexts "${GDN_CONTEXTS:-8K,128K}" \
          --variants hybrid-fused,hybrid-steps,teacher-engine-steps --repeats 1 --new-tokens 16 "${cap[@]}" \
          --out "$DIR/speed-gdn-25${GDN_CONTEXTS:+-$GDN_CONTEXTS}" "$@" || status=1 ;;
      memory)  # 512K: the teacher-engine (one cache per prefill now) beside the 12.5% hybrid, same GPU
        run "$DIR/memory.log" "$PY" "${m[@]}" --budget 0.125 --mixer lightning --contexts 512K \
          --variants "${MEMORY_VARIANTS:-hybrid-steps,teacher-engine-steps}" --repeats 1 --new-tokens 8 "${cap[@]}" \
          --out "$DIR/memory-512k" "$@" || status=1 ;;
      largest-8k | largest-32k | largest-128k)  # the largest batch that fits and the throughput table; small chunks
        run "$DIR/largest.log" "$PY" "${m[@]}" --budget 0.25 --mixer lightning --contexts "${part#largest-}" \
          --batches 1,8,64 --largest-batch --variants "${LARGEST_VARIANTS:-hybrid-steps,teacher-engine-steps}" \
          --repeats 1 --new-tokens 8 \
          --prefill-chunk 1024 "${cap[@]}" --out "$DIR/$part" "$@" || status=1 ;;
      *) echo "unknown PART '$part' (tests gemv gemv-sweep speed gdn memory largest-8k largest-32k largest-128k)"
         return 2 ;;
    esac
  done
  return "$status"
}

JOBS=(gpu-tests speed decode-attention mixers fused-projections train-profile convert teacher selectors mixer-rows
      ppl-checks quality sweep-grid decode-limit)

case "${1:-}" in
  "" | -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  list) sed -n '/^# Jobs/,/^# Every job/p' "$0" | sed '1d; $d; s/^# \{0,1\}//'; exit 0 ;;
  prepare) job_prepare; exit $? ;;
esac
job=$1; shift
if [[ " ${JOBS[*]} " != *" $job "* ]]; then
  echo "unknown job '$job'. Available: prepare, list, ${JOBS[*]}" >&2
  exit 2
fi
DIR=$OUT/$job$([ "$job" = quality ] && quality_suffix)
mkdir -p "$DIR"
{ echo "commit: $HYBRIDIZE_COMMIT"; echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  "$PY" -c 'import torch; print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' \
    2>/dev/null; } > "$DIR/command.txt"
"job_${job//-/_}" "$@"
rc=$?
echo "$job: exit $rc; results in $DIR"
exit "$rc"
