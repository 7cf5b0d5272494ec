#!/usr/bin/env bash
# Stage a teacher brought back by `gpu_run.sh quality` (its teacher-manifest and teacher-part?? files, in SRC) for a
# fresh GPU machine, one part per device call, as ../shared/gpu/stage.sh does for Triton:
#
#   bash benchmarks/stage_teacher.sh SRC N     # part N (0, 1, ...) alone, with the manifest, into .gpu/teacher/
#   bash benchmarks/stage_teacher.sh SRC done  # empty .gpu/teacher/
#
# The parts a call brings back are at most 16 MiB (the device tool's limit on a returned file); a call can send more
# beside the working tree (64 MiB in all), so SRC's parts are joined and split again into SIZE (default 34M: one part,
# the ~24 MiB of tracked files and .gpu/send's 1.5 MiB of wheels stay under the 64 MiB; delete SRC/send to re-split) parts in
# SRC/send/, with a manifest of their own (the same weights hash). Send `.gpu/teacher` with each call (carry) running
# `gpu_run.sh quality`: receive_teacher collects the parts on the machine and makes the teacher from the last one.
set -euo pipefail
src=$1 what=$2 dest=.gpu/teacher
rm -rf "$dest"
[ "$what" = done ] && exit 0
if [ ! -f "$src/send/teacher-manifest" ]; then
  (cd "$src" && grep ' teacher-part' teacher-manifest | sha256sum --check --quiet)
  mkdir -p "$src/send"
  cat "$src"/teacher-part?? | split -b "${SIZE:-34M}" -d - "$src/send/teacher-part"
  (cd "$src/send" && { grep '^weights_sha256' ../teacher-manifest; sha256sum teacher-part??; } > teacher-manifest)
fi
part=$(printf '%s/send/teacher-part%02d' "$src" "$what")
[ -f "$part" ] || { echo "no part $what: $(ls "$src"/send/teacher-part?? | wc -l) parts (0..)"; exit 1; }
mkdir -p "$dest" && cp "$src/send/teacher-manifest" "$part" "$dest/"
echo "staged $(basename "$part") of $(ls "$src"/send/teacher-part?? | wc -l) in $dest ($(du -sh "$dest" | cut -f1))"
