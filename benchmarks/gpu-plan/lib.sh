# Shared by the gpu-plan steps (`source benchmarks/gpu-plan/lib.sh`, from the repository root).

# Where the steps of one machine meet, named once: the device, the `small` teacher (steps 10 / 70 write it, the later
# steps read it) and step 30's row folders (one per mixer and budget; step 35 reads them)
DEVICE=${DEVICE:-cuda}
SMALL_TEACHER=/tmp/work/teacher-small
MIXER_ROWS=/tmp/work/mixers-small

# The conversion's text beside the retrieval episodes (space-separated data spec items): what the teacher trained on,
# the `small` recipe's builtin:train + stdlib-code:train since 2026-12-01 (TRAIN_DATA=builtin:train for a teacher
# trained with TEACHER_DATA=builtin:train, the recipe before)
TRAIN_DATA=${TRAIN_DATA:-builtin:train stdlib-code:train}

# tqdm's carriage returns as line ends, a line at a time: plain `tr` block-buffers into a pipe, so a log read while its
# step runs (or packed when the budget ends) missed everything since the last 4 KB (the tenth session's cut GLA row
# left an empty run.log)
lines() { if command -v stdbuf > /dev/null; then stdbuf -oL tr '\r' '\n'; else tr '\r' '\n'; fi; }

# tqdm redraws its bar at every step: keep a bar at every 20%, drop blank lines and weight loading/saving bars
progress() { awk 'NF == 0 || /^(Loading weights|Writing model shards)/ { next } /^[^ ].*: +[0-9]+%\|/ { k = substr($0, 1, index($0, "%|")); sub(/ *[0-9]+%$/, "", k); match($0, /[0-9]+%\|/); p = substr($0, RSTART, RLENGTH - 2) + 0; if (!(k in last) || p >= last[k] + 20 || p < last[k] || (p == 100 && last[k] != 100)) { print; fflush(); last[k] = p }; next } { print; fflush() }'; }

# fla's autotune results from an earlier run, so that its kernels compile only the winning configuration
unpack_autotune() {
  # (each archive is keyed by Triton's own cache hashes, which name the Triton version and GPU: unpack them all)
  mkdir -p ~/.triton/cache && for f in benchmarks/triton-autotune/*.tgz; do tar xzf "$f" -C ~/.triton/cache; done
}

# ... and this run's (JSON, tens of KB), for the next one: save_autotune DEST_FOLDER
save_autotune() {
  (cd ~/.triton/cache 2>/dev/null && find . -name '*.autotune.json' -print0 | tar czf "$1/triton-autotune-cache.tgz" --null -T -) || true
}

# copy_results RUN_FOLDER DEST_FOLDER: results only (json / jsonl / md / png / yaml); no weights, no checkpoints, no
# TensorBoard logs, no tokenizer copies
copy_results() {
  (cd "$1" && find . \( -name checkpoints -o -name tb \) -prune -o -type f \
     \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.yaml' \) \
     ! -name 'tokenizer*.json' -print0 | xargs -0 -r cp --parents -t "$2")
}

# episodes_path TEACHER: where steps 20, 30 and 31 keep (and look for) the conversion's retrieval episodes of a teacher
episodes_path() { echo "/tmp/work/episodes-$(basename "$1").jsonl"; }

# write_mixers_table OUTROOT SELECTORS: one table of the mixer rows under OUTROOT (steps 30, 31, 60) and step 20's
# lightning 25% row where it exists: the selectors given plus the all-linear students
write_mixers_table() {
  python3 benchmarks/gpu-plan/mixers_table.py "$RES/selectors-small-lightning-25/selectors.json" \
    "$1"/*/selectors.json --selectors "$2,all-linear" --out "$1/mixers.md"
}

# make_episodes PATH TEACHER [N]: the conversion's retrieval episodes in the teacher's format (new draws, seed 1, as
# `hybridize demo` does), N (default 800, ~430K tokens at 1024, about as many as the built-in corpus) documents up to
# the teacher's trained length (at most 2048), on builtin:train filler. Kept when PATH already exists.
make_episodes() {
  [ -s "$1" ] && return 0
  python3 - "$1" "$2" "${3:-800}" <<'PY'
import json, sys
from pathlib import Path
from hybridize.demo import _episodes
path, teacher, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
trained = json.loads((teacher / "config.json").read_text())["max_position_embeddings"]
_episodes(path, teacher, min(trained, 2048), n, data="builtin:train")
print(f"episodes: {path} ({sum(1 for _ in path.open())} documents, up to {min(trained, 2048)} tokens, builtin:train filler)")
PY
}

# reuse_stage1 SRC WORK NAME: copy a finished stage 1 (SRC = a run's stage1/stages/align) into the run folder WORK,
# when WORK has none yet; stage 1 does not depend on the budget or selector, and its done.json makes align() skip
reuse_stage1() {
  if [ -n "$1" ] && [ -f "$1/done.json" ] && [ ! -e "$2/stage1/stages/align" ]; then
    mkdir -p "$2/stage1/stages" && cp -r "$1" "$2/stage1/stages/align" && echo "$3: stage 1 reused from $1"
  fi
}
