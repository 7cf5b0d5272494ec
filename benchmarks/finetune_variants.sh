#!/usr/bin/env bash
# What the finetune stage does to recall, on the CPU: the demo's conversion (align, select, distill; `hybridize demo`)
# finetuned several ways from the same distilled model, each scored with `hybridize eval --stages` (the distilled and
# the finetuned student on the same prompts, McNemar's p between them).
#
#   bash benchmarks/finetune_variants.sh DEMO OUT NAME="--set KEY=VALUE ..." [NAME="..." ...]
#   e.g. bash benchmarks/finetune_variants.sh out/demo out/ft lr1e-4="--set finetune.lr=1e-4" \
#          lr2e-5="--set finetune.lr=2e-5"
#
# DEMO is a `hybridize demo --out DEMO` folder (its hybrid/ conversion and data/ episodes); each variant is a copy of
# DEMO/hybrid without a finetune stage, finetuned by `hybridize finetune --recipe demo` on the demo's data, then
# evaluated into OUT/NAME/eval (stages.json, stages.md). SAMPLES (default 40) prompts per task, length and depth;
# LENGTHS (default 256,512: 1x and 2x the tiny teacher's context); WINDOWS (default 32) held-out perplexity windows.
set -euo pipefail
demo=$1 out=$2
shift 2
PY=${PYTHON:-python}
teacher=$("$PY" -c 'from hybridize.demo import shipped_teacher; print(shipped_teacher())')
episodes=$(ls "$demo"/data/episodes-*.jsonl)
[ -f "$demo/hybrid/stages/distill/done.json" ] || { echo "$demo/hybrid: no distill stage (run hybridize demo)"; exit 2; }
for spec in "$@"; do
  name=${spec%%=*} sets=${spec#*=}
  [ "$name" != "$spec" ] || { echo "variant '$spec': expected NAME=\"--set KEY=VALUE ...\""; exit 2; }
  for word in $sets; do  # the copy's earlier stages are the demo's: only stage 3 may differ
    case $word in --set | finetune.*=*) ;; *) echo "variant $name: '$word' (allowed: --set finetune.KEY=VALUE)"; exit 2 ;; esac
  done
  dir=$out/$name
  if [ ! -f "$dir/stages/finetune/done.json" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r "$demo/hybrid/." "$dir/"
    # recipe.yaml goes too: the variant's recipe (the demo's but for finetune.*) is written in its place
    rm -rf "$dir/stages/finetune" "$dir/model.safetensors" "$dir/eval" "$dir/recipe.yaml"
    # shellcheck disable=SC2086
    "$PY" -m hybridize finetune --teacher "$teacher" --recipe demo --out "$dir" --data builtin:train "$episodes" \
      --device cpu $sets 2>&1 | tr '\r' '\n' | grep -v '^finetune: ' | tail -3
  fi
  "$PY" -m hybridize eval --stages "$dir" --suite passkey,niah_single_2,perplexity --lengths "${LENGTHS:-256,512}" \
    --samples "${SAMPLES:-40}" --windows "${WINDOWS:-32}" --data builtin:heldout --device cpu --no-progress \
    --out "$dir/eval" 2>&1 | tail -3
done
