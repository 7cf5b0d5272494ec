#!/usr/bin/env bash
# Step 20: the five layer selectors on the small teacher at a 25% budget (3 of 12 layers), lightning mixers, recipe
# gpu-small (src/hybridize/recipes/gpu-small.yaml): one shared stage 1, then per selector selection + distill +
# finetune, then one evaluation (perplexity, passkey, niah_single_2, mqar at 1024 / 2048 / 4096). ~11 min on an H100.
# Run folders (weights, checkpoints) stay under /tmp/work; only json / jsonl / md / png / yaml files go to $RES.
# Resumable: run again after an interruption and finished stages are skipped.
set -uo pipefail
# tqdm redraws its bar at every step: keep a bar at every 20%, drop blank lines and weight loading/saving bars
progress() { awk 'NF == 0 || /^(Loading weights|Writing model shards)/ { next } /^[^ ].*: +[0-9]+%\|/ { k = substr($0, 1, index($0, "%|")); sub(/ *[0-9]+%$/, "", k); match($0, /[0-9]+%\|/); p = substr($0, RSTART, RLENGTH - 2) + 0; if (!(k in last) || p >= last[k] + 20 || p < last[k] || (p == 100 && last[k] != 100)) { print; fflush(); last[k] = p }; next } { print; fflush() }'; }
TEACHER=${TEACHER:-/tmp/work/teacher-small}
NAME=${NAME:-selectors-small-lightning-25}
WORK=${WORK:-/tmp/work/$NAME}
OUTDIR=$RES/$NAME
DEVICE=${DEVICE:-cuda}
EPISODES=${EPISODES:-/tmp/work/episodes-$(basename "$TEACHER").jsonl}
N_EPISODES=${N_EPISODES:-800}  # ~430K tokens at 1024, about as many as the built-in corpus (460K)
[ -f "$TEACHER/config.json" ] || { echo "ERROR: no teacher at $TEACHER (step 10 did not finish)"; exit 1; }
mkdir -p ~/.triton/cache && tar xzf benchmarks/triton-autotune/autotune-h100-triton3.7.1-fla0.6.0.tgz -C ~/.triton/cache
mkdir -p "$WORK" "$OUTDIR"

# The conversion's data is what the teacher trained on: the built-in corpus plus retrieval episodes (new draws,
# seed 1; hybridize demo does the same). On the corpus alone the student never sees a question and forgets how to
# answer one.
python3 - "$EPISODES" "$TEACHER" "$N_EPISODES" <<'PY' || exit 1
import json, sys
from pathlib import Path
from hybridize.demo import _episodes
path, teacher, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
trained = json.loads((teacher / "config.json").read_text())["max_position_embeddings"]
_episodes(path, teacher, min(trained, 2048), n)
print(f"episodes: {path} ({sum(1 for _ in path.open())} documents, up to {min(trained, 2048)} tokens)")
PY

CMD=(python3 benchmarks/compare_selectors.py --teacher "$TEACHER" --out "$WORK" --recipe gpu-small --budget 0.25
     --selectors uniform,random,halo,kl_guided,flashmorph --device "$DEVICE" --data builtin "$EPISODES" "$@")
printf '%s\n' "commit: ${SHA:-unknown}" "command: ${CMD[*]}" | tee "$OUTDIR/command.txt"
cp src/hybridize/recipes/gpu-small.yaml "$OUTDIR/"
[ -f "$TEACHER/teacher.json" ] && cp "$TEACHER/teacher.json" "$OUTDIR/teacher.json"

timeout "${SEL_TIMEOUT:-1500}" "${CMD[@]}" 2>&1 | tr '\r' '\n' | progress | tee "$OUTDIR/run.log"
rc=${PIPESTATUS[0]}

# Results only: no weights (*.safetensors), no checkpoints, no TensorBoard logs, no tokenizer copies.
(cd "$WORK" && find . \( -name checkpoints -o -name tb \) -prune -o -type f \
   \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.yaml' \) \
   ! -name 'tokenizer*.json' -print0 | xargs -0 -r cp --parents -t "$OUTDIR")
echo "copied to $OUTDIR: $(find "$OUTDIR" -type f | wc -l) files, $(du -sh "$OUTDIR" | cut -f1);" \
     "largest: $(find "$OUTDIR" -type f -printf '%s %P\n' | sort -n | tail -1)"
df -h /tmp | tail -1
# fla's autotune results for this model's shapes (JSON, tens of KB): unpacked into ~/.triton/cache before a later
# run, the kernels compile only the winning configuration instead of autotuning again
(cd ~/.triton/cache 2>/dev/null && find . -name '*.autotune.json' -print0 | tar czf "$OUTDIR/triton-autotune-cache.tgz" --null -T -) || true
if [ "$rc" -eq 0 ]; then  # done: the resume state is no longer needed; free the disk for step 30
  find "$WORK" -type d -name checkpoints -prune -exec rm -rf {} +
else
  echo "ERROR: compare_selectors exited with $rc; run this step again to resume"
fi
exit "$rc"
