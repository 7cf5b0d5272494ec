#!/bin/bash
# Send a folder too large for one call (a trained teacher: 133 MB) to the GPU machine in parts, as the Triton wheel
# is sent: each call may carry 64 MiB with the working tree, and files come back 16 MiB at a time.
#   here:  bash benchmarks/gpu-queue/ship.sh prepare /work/artifacts/teacher-small-c1   # tar + 45 MiB parts
#          bash benchmarks/gpu-queue/ship.sh stage K      # K = 0, 1, ...: part K alone in .gpu/ship/
#   there: bash .gpu/ship/ship.sh receive                # with carry [".gpu/ship"]; after the last part it
#                                                        # checks the sha256 and unpacks into /tmp/work/
set -euo pipefail
case "${1:?prepare DIR | stage K | receive}" in
  prepare)
    src=$(cd "${2:?folder}" && pwd)
    cd "$(git rev-parse --show-toplevel)"
    rm -rf .gpu/shipparts && mkdir -p .gpu/shipparts
    tar cf - -C "$(dirname "$src")" "$(basename "$src")" | split -b 45M -d - .gpu/shipparts/part
    cat .gpu/shipparts/part?? | sha256sum | cut -c1-64 > .gpu/shipparts/sha
    ls .gpu/shipparts/part?? | wc -l > .gpu/shipparts/count
    echo "$(cat .gpu/shipparts/count) parts of $(basename "$src"); next: stage 0 .. $(( $(cat .gpu/shipparts/count) - 1 ))" ;;
  stage)
    cd "$(git rev-parse --show-toplevel)"
    rm -rf .gpu/ship && mkdir -p .gpu/ship
    cp ".gpu/shipparts/part$(printf %02d "${2:?part number}")" .gpu/shipparts/sha .gpu/shipparts/count .gpu/ship/
    cp benchmarks/gpu-queue/ship.sh .gpu/ship/
    du -sh .gpu/ship ;;
  receive)
    here=$(cd "$(dirname "$0")" && pwd)
    mkdir -p /root/shipparts /tmp/work
    cp "$here"/part?? /root/shipparts/ 2>/dev/null || true
    n=$(ls /root/shipparts/part?? | wc -l)
    if [ "$n" -lt "$(cat "$here/count")" ]; then echo "parts here: $n of $(cat "$here/count")"; exit 0; fi
    [ "$(cat /root/shipparts/part?? | sha256sum | cut -c1-64)" = "$(cat "$here/sha")" ] || { echo "ERROR: sha256 differs"; exit 1; }
    cat /root/shipparts/part?? | tar xf - -C /tmp/work && rm -rf /root/shipparts
    echo "unpacked into /tmp/work: $(ls /tmp/work)" ;;
esac
