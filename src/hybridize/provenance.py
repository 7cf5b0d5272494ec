"""What produced a result: the command, the commit of the package, the versions. Every record we write (teacher.json,
each stage's done.json, selection.json, the eval report, the bench files) carries it. Which teacher: the sha256 of
its tensors (`weights_sha256`); teacher.json, a conversion's source-teacher.json and done.json files and every
evaluation report record it, and a run can insist on one (`check_weights`)."""

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


def weights_sha256(model_dir: str | Path) -> str | None:
    """sha256 of a checkpoint's tensors: every tensor of every `*.safetensors` file in `model_dir`, in name order,
    as name, dtype, shape and raw bytes. It names the weights themselves: a re-save, another shard split or other
    file metadata keep it; one changed bit, a dtype cast or a renamed tensor change it. None when the folder holds no
    safetensors (e.g. a hub id that is not a local folder).

    Read straight from the files (8-byte header length, JSON header, data), a few GB/s: no tensor is built. A
    folder is hashed once per process while its files keep their sizes and modification times."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(stamp)


@functools.lru_cache(maxsize=64)
def _hash_files(stamp: tuple[tuple[str, int, int], ...]) -> str:
    import hashlib
    import json
    import struct

    index = {}  # name -> (file, dtype, shape, start, end)
    for f, _, _ in stamp:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            if name in index:
                raise ValueError(f"tensor {name!r} is in two files: {index[name][0]}, {f}")
            a, b = t["data_offsets"]
            index[name] = (f, t["dtype"], t["shape"], 8 + size + a, 8 + size + b)
    h = hashlib.sha256()
    handles = {}
    try:
        for name in sorted(index):
            f, dtype, shape, start, end = index[name]
            fh = handles.get(f) or handles.setdefault(f, open(f, "rb"))
            h.update(json.dumps([name, dtype, shape]).encode())
            fh.seek(start)
            left = end - start
            while left:
                chunk = fh.read(min(left, 1 << 24))
                if not chunk:
                    raise ValueError(f"{f} ends inside tensor {name!r}: a truncated file")
                h.update(chunk)
                left -= len(chunk)
    finally:
        for fh in handles.values():
            fh.close()
    return h.hexdigest()


def check_weights(model_dir: str | Path, expected: str | None, what: str = "teacher") -> str | None:
    """`weights_sha256(model_dir)`, after checking it against `expected` (a full hex digest, or a prefix of at least
    8 hex digits; None: no check): a ValueError names both when they differ."""
    if expected is not None:
        expected = expected.strip().lower()
        if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
            raise ValueError(f"{what}_sha256 must be at least 8 hex digits (a prefix of the weights hash), got "
                             f"{expected!r}")
    actual = weights_sha256(model_dir)
    if expected is None:
        return actual
    if actual is None:
        raise ValueError(f"{what} {model_dir} is not a folder holding *.safetensors: its weights hash cannot be "
                         f"checked against {expected} (give a local checkpoint folder)")
    if not actual.startswith(expected):
        raise ValueError(f"{what} {model_dir} has weights sha256 {actual}, not the expected {expected}: another "
                         f"{what} than the one asked for")
    return actual


__all__ = ["check_weights", "command_line", "device_name", "git_commit", "provenance", "weights_sha256"]
