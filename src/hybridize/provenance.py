"""What produced a result: the command, the commit of the package, the versions. Every record we write (teacher.json,
each stage's done.json, selection.json, the eval report, the bench files) carries it."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def git_commit(short: bool = False) -> str | None:
    """The commit of the checkout the package runs from (None for an installed wheel or a copy without .git), as it
    was when this module was imported: a record written at the end of a long run (a teacher trains for minutes to
    hours) names the code the process loaded, not a commit made while it ran.
    `HYBRIDIZE_COMMIT` overrides it: a copy of a working tree sent to another machine may carry a stale .git (on the
    lent GPU machine, `git rev-parse` named the session's first commit, not the one sent)."""
    if env := os.environ.get("HYBRIDIZE_COMMIT"):
        return env[:7] if short else env
    commit = _checkout_commit()
    return commit[:7] if commit and short else commit


@functools.cache
def _checkout_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


_checkout_commit()  # resolved at import, with the code (see git_commit)


def device_name(device) -> str:
    """The GPU's name (e.g. "NVIDIA H100 80GB HBM3"), or "cpu"."""
    import torch

    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def command_line() -> str:
    """The command as the user typed it, with `hybridize` for the console script or `python -m hybridize.cli`."""
    argv = list(sys.argv)
    name = Path(argv[0]).name if argv else ""
    head = "hybridize" if name in ("hybridize", "cli.py", "__main__.py") else name
    return shlex.join([head, *argv[1:]])


def provenance() -> dict:
    import torch
    import transformers

    return {"command": command_line(), "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}


__all__ = ["command_line", "device_name", "git_commit", "provenance"]
