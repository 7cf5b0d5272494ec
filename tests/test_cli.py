"""The command line end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from hybridize.demo import shipped_teacher


def _run(*args: str, **kw):
    return subprocess.run([sys.executable, "-m", "hybridize.cli", *args], capture_output=True, text=True, **kw)


def test_demo_runs_end_to_end_on_the_shipped_teacher(tmp_path):
    """The README's main command, shortened: convert the shipped teacher, evaluate, print the table."""
    assert shipped_teacher() is not None, "the package must ship the tiny teacher"
    out = _run("demo", "--out", str(tmp_path), "--samples", "1", "--set", "align.tokens=8192",
               "--set", "distill.tokens=8192")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "passkey recall" in out.stdout and "perplexity" in out.stdout and "524288" in out.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    models = {e["model"] for e in report["results"]}
    assert models == {"teacher-tiny", "hybrid", "all-linear-stage1"}, models
    assert (tmp_path / "report" / "recall_vs_length.png").is_file()
    assert {e["task"] for e in report["results"]} == {"perplexity", "passkey", "niah_single_2"}  # no MQAR
    assert "exceeded the model's predefined maximum length" not in out.stderr
    assert (tmp_path / "hybrid" / "model.safetensors").is_file()
    # decode speed and cache size of teacher vs hybrid, measured on this machine at long contexts
    decode = json.loads((tmp_path / "report" / "decode.json").read_text())
    rows = {(r["model"], r["context"]): r for r in decode["rows"]}
    assert rows[("hybrid", 131072)]["cache_bytes"] < rows[("teacher", 131072)]["cache_bytes"]
    assert "decode on this machine" in out.stdout and decode["commit"]
    # run again: the conversion is reused and says so, each stage says it is skipped
    again = _run("demo", "--out", str(tmp_path), "--samples", "1", "--set", "align.tokens=8192",
                 "--set", "distill.tokens=8192")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing the finished conversion" in again.stdout and "align: finished in an earlier run" in again.stdout
    assert not (tmp_path / "hybrid" / "stages" / "finetune").exists()  # the demo's conversion has no stage 3
    # each stage scored builtin:heldout as it trained and drew its curves; the demo points at them
    for stage, key in (("align", "heldout_mse"), ("distill", "heldout_kl")):
        done = json.loads((tmp_path / "hybrid" / "stages" / stage / "done.json").read_text())
        assert done["heldout"]["data"] == "builtin:heldout" and done["heldout"][key] > 0, stage
        assert str(tmp_path / "hybrid" / "stages" / stage / "curves.png") in out.stdout


def test_user_errors_are_one_line_without_traceback():
    out = _run("demo", "--mixer", "mamba9")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_python_dash_m_hybridize_exits_non_zero_on_a_user_error(tmp_path):
    """`python -m hybridize` (what machines without the console script run) must fail the way `hybridize` does:
    it once printed the error and exited 0, so a shell script went on as if the teacher had trained."""
    out = subprocess.run([sys.executable, "-m", "hybridize", "teacher", "--size", "tiny", "--out", str(tmp_path),
                          "--set", "episode_rows=99"], capture_output=True, text=True)
    assert out.returncode == 2, (out.returncode, out.stderr[-500:])
    assert "episode_rows" in out.stderr and "Traceback" not in out.stderr


def test_sigusr1_prints_the_stacks_and_the_run_goes_on(capsys):
    """A run gone quiet, its log saying nothing (a GPU row past its deadline), can be asked where it is:
    `kill -USR1 PID` prints every thread's stack to stderr and the process keeps running; benchmarks/gpu_run.sh
    sends it at a row's deadline, before the kill."""
    import signal
    import sys
    import time

    code = ("from hybridize.cli import dump_stacks_on_sigusr1\n"
            "assert dump_stacks_on_sigusr1()\n"
            "import time\n"
            "def waiting_for_the_gpu():\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "waiting_for_the_gpu()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None, "the signal ended the run"
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "most recent call first" in err and "waiting_for_the_gpu" in err, err
    # in-process under captured output (stderr without a file descriptor) it stands aside instead of failing `main`
    from hybridize.cli import dump_stacks_on_sigusr1

    assert dump_stacks_on_sigusr1() is False


def test_help_imports_neither_torch_nor_transformers_and_every_option_has_help():
    """`hybridize --help` (and the parser of every command) starts in well under a second: it imports no torch and no
    transformers (~2.5 s together on 2 CPU cores); each command imports what it needs when it runs."""
    code = ("import argparse, sys\n"
            "from hybridize.cli import build_parser\n"
            "parser = build_parser()\n"
            "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'yaml') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))\n"
            "bare = [(name, a.option_strings) for name, p in sub.choices.items() for a in p._actions\n"
            "        if a.option_strings and a.help is None]\n"
            "assert not bare, bare\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _run("--help").returncode == 0


def test_import_hybridize_registers_the_model_type_once_transformers_loads():
    """`import hybridize` imports no transformers; the Auto classes know the model type as soon as they are imported,
    in either order."""
    for code in ("import sys, hybridize\n"
                 "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
                 "from transformers import AutoConfig\n",
                 "from transformers import AutoConfig\n"
                 "import hybridize\n"):
        code += ("config = AutoConfig.for_model('hybridize', num_hidden_layers=2)\n"
                 "assert type(config).__module__ == 'hybridize.models.configuration', type(config)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
