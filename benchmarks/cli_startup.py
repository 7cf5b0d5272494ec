"""Wall time of `hybridize --help` (the parser and everything importing it pulls in), per installed environment.

    python benchmarks/cli_startup.py --out results/cli-startup.json /work/main/.venv .venv

Each environment's `bin/hybridize --help` runs `--repeats` times, one after another; the commit is that of the
checkout each environment's hybridize is installed from (an editable install), and the load average is recorded
beside each run, since the point of the measurement is a busy machine as much as an idle one.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venvs", nargs="+", help="virtual environments with hybridize installed")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for venv in args.venvs:
        python = Path(venv) / "bin" / "python"
        where = subprocess.run([str(python), "-c", "import hybridize, pathlib; print(pathlib.Path(hybridize.__file__)"
                                ".resolve().parents[2])"], capture_output=True, text=True, check=True).stdout.strip()
        commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
        times, loads = [], []
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            subprocess.run([str(Path(venv) / "bin" / "hybridize"), "--help"], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        rows.append({"venv": str(venv), "checkout": where, "commit": commit, "dirty": dirty, "seconds": times,
                     "median_s": statistics.median(times), "load_avg_1min": loads})
        print(json.dumps(rows[-1]), flush=True)
    record = {"what": __doc__.splitlines()[0], "command": "python " + " ".join(sys.argv), "device": "cpu",
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
