#!/bin/bash
# GPU work queue: runs .gpu/queue/*.sh in name order, each once, each in its own copy of the tree (/tmp/gq/tree),
# logs to /tmp/gq/logs. Started by poll.sh under setsid so that it outlives the call; the working tree is re-sent on
# every call, so new steps can be queued.
REPO=$1
S=/tmp/gq
mkdir -p $S/logs $S/done $S/res
while true; do
  next=""
  for f in $(ls $REPO/.gpu/queue/*.sh 2>/dev/null | sort); do
    n=$(basename $f .sh); [ -e $S/done/$n ] || { next=$f; break; }
  done
  if [ -z "$next" ]; then echo "idle" > $S/state; sleep 2; continue; fi
  n=$(basename $next .sh)
  echo "running $n since $(date +%T)" > $S/state
  cp $next $S/logs/$n.sh   # bash reads scripts as it goes: run a copy the next sync cannot change
  # The step runs in a copy of the working tree taken now: every call re-sends the tree, and a process that imports
  # a module while that happens can miss it (2026-12-01: the teacher, started in one call, died with
  # "No module named hybridize.evaluation.recall" as the next call's sync went on). A fix sent later reaches the
  # steps after this one.
  tree=$S/tree/$n
  rm -rf $tree && mkdir -p $tree
  (cd $REPO && tar cf - --exclude=./.git --exclude=./results --exclude=./.venv --exclude=./.gpu/parts \
    --exclude=./.gpu/dl .) | tar xf - -C $tree
  t0=$(date +%s)
  ( cd $tree && export PYTHONPATH=$tree/src RES=$S/res SHA=$(cat $tree/.gpu/ctl/sha) HYBRIDIZE_COMMIT=$(cat $tree/.gpu/ctl/sha) && bash $S/logs/$n.sh ) > $S/logs/$n.log 2>&1
  rc=$?
  echo "$rc $(( $(date +%s) - t0 ))s" > $S/done/$n
done
