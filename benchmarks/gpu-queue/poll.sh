#!/bin/bash
# Ensure the queue daemon runs, wait up to $1 s (returns early when a step fails or the queue is empty), then
# report the state and copy logs and results to $OUT.
REPO=$(pwd)
S=/tmp/gq
mkdir -p $S/logs $S/done $S/res
if ! { [ -f $S/pid ] && kill -0 "$(cat $S/pid)" 2>/dev/null; }; then
  setsid nohup bash $REPO/benchmarks/gpu-queue/daemon.sh $REPO > $S/daemon.log 2>&1 < /dev/null &
  echo $! > $S/pid
  echo "daemon started"
fi
start=$(date +%s)
before=$(ls $S/done | wc -l)
while [ $(( $(date +%s) - start )) -lt ${1:-60} ]; do
  sleep 3
  failed=$(grep -L "^0 " $S/done/* 2>/dev/null | wc -l)
  [ "$(cat $S/state 2>/dev/null)" = idle ] && break
  [ "$failed" -gt "${FAILED_BEFORE:-$(cat $S/failed_seen 2>/dev/null || echo 0)}" ] && { echo $failed > $S/failed_seen; break; }
done
echo "== state: $(cat $S/state)   held $(( $(date +%s) - start ))s this call"
for f in $(ls $S/done); do echo "done $f: $(cat $S/done/$f)"; done
cur=$(sed -n 's/running \([^ ]*\) .*/\1/p' $S/state)
[ -n "$cur" ] && { echo "== tail of $cur"; tail -c 1500 $S/logs/$cur.log; }
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
(cd $S/logs && tar czf $OUT/logs.tgz *.log 2>/dev/null)
(cd $S/res && tar czf $OUT/res.tgz . 2>/dev/null)
# the run folders' small files as they stand (a step copies its results to $S/res only when it ends): what a lost
# machine or a spent budget would otherwise take with it
[ -d /tmp/work ] && (cd /tmp/work && find . \( -name checkpoints -o -name tb \) -prune -o -type f \( -name '*.json' \
  -o -name '*.md' -o -name '*.png' -o -name '*.yaml' -o -name '*.log' \) ! -name 'tokenizer*.json' -size -2M -print0 \
  | tar czf $OUT/work.tgz --null -T - 2>/dev/null)
true
