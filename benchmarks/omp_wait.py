"""Time of one training step (forward + backward) of the shipped tiny teacher on 16 x 256 tokens, on the CPU, per
thread count and OpenMP wait policy: torch's default (spinning) against OMP_WAIT_POLICY=PASSIVE, which `hybridize`
sets unless the variable is set. Each setting runs in a process of its own (the policy is read when OpenMP starts).

    python benchmarks/omp_wait.py --out results/cpu-demo/omp-wait.json

The load average at the start and end of each setting is recorded: the point is a machine other processes share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEP = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from hybridize.convert import load_teacher
from hybridize.demo import shipped_teacher
model = load_teacher(shipped_teacher()).model.train()
ids = torch.randint(0, model.config.vocab_size, (16, 256), generator=torch.Generator().manual_seed(0))
times = []
for i in range(int(sys.argv[2]) + 1):
    t0 = time.perf_counter()
    model(ids, use_cache=False).logits.float().mean().backward()
    times.append(time.perf_counter() - t0)
print(json.dumps(times[1:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hybridize.provenance import provenance

    rows = []
    for threads, policy in ((1, None), (2, None), (2, "PASSIVE"), (1, "PASSIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        load_before = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(args.steps)], env=env, check=True,
                             capture_output=True, text=True)
        times = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"threads": threads, "OMP_WAIT_POLICY": policy or "(unset: spin)", "step_s": times,
                     "median_s": statistics.median(times), "load_avg_1min": [load_before, os.getloadavg()[0]]})
        print(json.dumps(rows[-1]), flush=True)
    record = {"what": __doc__.splitlines()[0], "device": "cpu", "cpus": os.cpu_count(), "seed": 0, "rows": rows,
              **provenance()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
