"""The command line end to end, as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str):
    return subprocess.run([sys.executable, "-m", "hybridize.cli", *args], capture_output=True, text=True)


def test_demo_runs_end_to_end(tmp_path):
    out = _run("demo", "--out", str(tmp_path), "--new-tokens", "6", "--mixer", "gated_deltanet")
    assert out.returncode == 0, out.stderr
    assert "identical tokens: True" in out.stdout
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert "524288" in out.stdout


def test_user_errors_are_one_line_without_traceback():
    out = _run("demo", "--mixer", "mamba9")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr and "Traceback" not in out.stderr
