"""`hybridize sweep`: the tiny grid (2 mixers x 2 ratios) trains and scores on the CPU into sweep.json and a README
with figures; it resumes cell by cell (a cell stopped mid-run continues from its checkpoint to the weights of an
uninterrupted run, and a finished grid trains nothing); bad input stops in one line before anything is written."""

from __future__ import annotations

import json
import random
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hybridize  # noqa: F401  (registers the model type)
from hybridize.cli import main
from hybridize.pretrain import pretrain, preset_recipe
from hybridize.sweep import SweepConfig, grid_cells
from hybridize.sweep.grid import base_recipe, cell_recipe

# the tiny size cut to 2 optimizer steps per cell, 2 prompts per task and length
GRID = ["--size", "tiny", "--mixers", "retnet,mamba2", "--ratios", "all-linear,3:1", "--samples", "2",
        "--eval-windows", "2", "--device", "cpu", "--set", "train.tokens=3072"]
# sweep.json's order: by mixer, then by attention share
CELLS = ["mamba2-all-linear-seed0", "mamba2-3to1-inter-uniform-seed0", "retnet-all-linear-seed0",
         "retnet-3to1-inter-uniform-seed0"]
FIRST = "retnet-all-linear-seed0"  # the grid trains the mixers in the order given, least attention first


def _texts(folder: Path) -> tuple[str, str]:
    """Training text and held-out text (other modules): small, so that the BPE trains in a second."""
    import argparse
    import string
    import textwrap

    train, heldout = folder / "corpus.txt", folder / "heldout.txt"
    train.write_text("\n\n".join(Path(m.__file__).read_text() for m in (random, json, types)))
    heldout.write_text("\n\n".join(Path(m.__file__).read_text() for m in (string, textwrap, argparse)))
    return str(train), str(heldout)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The tiny grid run three times into one folder, as a user continues one: stopped after its first step
    (--max-minutes 0), finished in two lanes side by side (--jobs 2), then once more with nothing left to do.
    Returns (folder, the three runs' outputs, the cells' files' modification times after the second run)."""
    import os

    tmp = tmp_path_factory.mktemp("sweep")
    train, heldout = _texts(tmp)
    out = tmp / "grid"
    args = ["sweep", *GRID, "--data", train, "--eval-data", heldout, "--out", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on two shared cores small ops with two threads wait on each other
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the lanes' too
    try:
        runs = []
        for extra in (["--max-minutes", "0"], ["--jobs", "2"], ["--jobs", "2"]):
            assert main([*args, *extra]) == 0
            runs.append(sorted(p.name for p in (out / "cells").iterdir()))
            if len(runs) == 2:
                stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    finally:
        torch.set_num_threads(threads)
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return out, runs, stamps, (train, heldout)


def test_the_grid_resumes_cell_by_cell(grid):
    out, runs, stamps, (train, heldout) = grid
    first = out / "cells" / FIRST
    # the first run stopped inside its first cell, with a checkpoint and no result; the second finished every cell
    assert runs[0] == [FIRST] and (first / "run" / "checkpoints").is_dir()
    assert set(runs[1]) == set(CELLS) and all((out / "cells" / c / "result.json").is_file() for c in CELLS)
    record = json.loads((first / "pretrain.json").read_text())
    assert record["result"]["resumed_from"] == 1 and record["result"]["steps"] == 2
    assert {p.name for p in (out / "logs").iterdir()} == {"lane-0.log", "lane-1.log"}
    # the third run trained and scored nothing: every file of every cell is as the second run left it
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()} == stamps
    # the resumed cell has the weights of the same cell trained without a stop
    cfg = SweepConfig(out=str(out), size="tiny", mixers=["retnet"], ratios=["all-linear"], data=train,
                      overrides=["train.tokens=3072"])
    torch.set_num_threads(1)
    recipe = cell_recipe(base_recipe(cfg), grid_cells(cfg, 0, 4)[0], cfg.overrides)
    pretrain(recipe, out.parent / "once", tokenizer=out / "tokenizer", device="cpu", eval_data=None)
    w1, w2 = load_file(first / "model.safetensors"), load_file(out.parent / "once" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_sweep_json_rows_and_readme(grid):
    out, *_ = grid
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["cell"] for r in rows] == CELLS
    keys = ["1x", "2x", "4x"]
    for r in rows:
        assert r["mixer"] in ("retnet", "mamba2") and r["ratio"] in ("all-linear", "3:1") and r["fusion"] == "inter"
        assert r["seed"] == 0 and r["n"] == 2 and r["tokens"] == 2 * 8 * 192 and r["steps"] == 2
        assert isinstance(r["params"], int) and 0.3e6 < r["params"] < 0.4e6
        assert r["heldout_ppl"] > 1 and list(r["heldout_ppl_by_length"]) == keys
        lo, hi = r["heldout_ppl_ci"]  # 95% over the windows, each cell on the same ones
        assert lo <= r["heldout_ppl"] <= hi and list(r["heldout_ppl_by_length_ci"]) == keys
        assert all(len(v) == r["heldout_windows"] for v in r["heldout_window_nll"].values())
        assert set(r["recall"]) == {"passkey", "niah_single_2", "mqar"}
        for task, by_length in r["recall"].items():
            assert list(by_length) == keys
            for k, rate in by_length.items():
                lo, hi = r["recall_ci"][task][k]
                assert 0 <= lo <= rate <= hi <= 1 and rate == r["recall_correct"][task][k] / r["n"]
        assert list(r["recall_mean"]) == keys and len(r["recall_mean_ci"]["1x"]) == 2
        assert r["state_bytes"]["1x"] < r["state_bytes"]["4x"] or r["ratio"] == "all-linear"
        assert {"command", "commit", "device", "date"} <= set(r) and r["device"] == "cpu"
        assert r["command"].startswith("hybridize sweep --size tiny")
    by_cell = {r["cell"]: r for r in rows}
    # an all-linear model's state does not grow with the context; attention's does
    linear = by_cell["mamba2-all-linear-seed0"]["state_bytes"]
    assert linear["1x"] == linear["4x"]
    assert by_cell["mamba2-3to1-inter-uniform-seed0"]["attention_layers"] == [3]
    readme = (out / "README.md").read_text()
    first = rows[0]
    lo, hi = first["heldout_ppl_by_length_ci"]["1x"]
    assert f"{first['heldout_ppl_by_length']['1x']:.2f} [{lo:.2f}, {hi:.2f}]" in readme  # the table's perplexity
    assert "| retnet-all-linear-seed0 | retnet | all-linear (all-linear) |" in readme
    assert "## Beside the two studies" in readme and "| 3:1 | 0.397 |" in readme
    for png in ("recall_vs_ratio.png", "loss_vs_ratio.png", "recall_vs_state.png"):
        assert f"]({png})" in readme and (out / png).read_bytes()[:4] == b"\x89PNG"


def test_a_cell_loads_with_from_pretrained_and_generates(grid):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = grid[0] / "cells" / "retnet-3to1-inter-uniform-seed0"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.linear_mixers == ["retnet", "retnet", "retnet", None]
    ids = tok("def main():", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)


def test_another_grid_setting_in_the_same_folder_is_refused(grid, capsys):
    out, _, _, (train, heldout) = grid
    code = main(["sweep", *GRID, "--data", train, "--eval-data", heldout, "--out", str(out), "--samples", "3"])
    assert code == 2 and "holds a sweep with other samples" in capsys.readouterr().err


def test_the_grid_has_one_cell_per_distinct_model():
    cfg = SweepConfig(out="x", size="mini", mixers=["gla", "mamba2"], ratios=["transformer", "3:1", "all-linear", "6:1"],
                      fusions=["inter", "intra"], placements=["uniform", "middle"], seeds=2)
    cells = grid_cells(cfg, 0, 12)
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 2 * (2 * (1 + 2 * 3) + 1)
    assert names[:7] == ["gla-all-linear-seed0", "gla-6to1-inter-uniform-seed0", "gla-6to1-inter-middle-seed0",
                         "gla-6to1-intra-seed0", "gla-3to1-inter-uniform-seed0", "gla-3to1-inter-middle-seed0",
                         "gla-3to1-intra-seed0"]
    assert names[14] == "transformer-seed0" and names[-1] == "transformer-seed1"
    # at one ratio the intra-layer cell keeps the inter-layer cell's KV groups and (within 0.1%) its parameters
    base = base_recipe(cfg)
    for mixer in ("gla", "mamba2"):
        inter, intra = (cell_recipe(base, c, []) for c in cells if c.mixer == mixer and c.ratio == "6:1"
                        and c.placement == "uniform" and c.seed == 0)
        assert inter.model["layer_types"].count("full_attention") == 2
        assert intra.model["attention_kv_heads"] == [[5]] * 12
        assert abs(intra.parameters() / inter.parameters() - 1) < 1e-3
    assert preset_recipe("mini").model["num_key_value_heads"] == 6


@pytest.mark.parametrize("args,message", [
    (["--mixers", "gla,mamba9", "--ratios", "3:1"], "mixer 'mamba9'; allowed: lightning, gated_deltanet"),
    (["--mixers", "gla", "--ratios", "3:1,1:3"], "ratio '1:3': allowed: transformer, all-linear, or N:1"),
    (["--mixers", "gla", "--ratios", "3:1", "--fusion", "inter,parallel"], "fusion 'parallel'; allowed: inter, intra"),
    (["--mixers", "gla", "--ratios", "3:1", "--placement", "first"], "placement 'first'; allowed: uniform, middle"),
    (["--mixers", "gla", "--ratios", "3:1", "--size", "huge"], "size 'huge'; allowed: tiny, mini, small"),
    (["--mixers", "gla", "--ratios", "3:1", "--tasks", "passkey,recall"], "task 'recall'; allowed: "),
    (["--mixers", "gla", "--ratios", "3:1", "--set", "model.layer_types=[]"], "--set model.layer_types is what the grid"),
    (["--mixers", "gla", "--ratios", "3:1", "--set", "train.lrr=1"], "unknown pretrain recipe field 'train.lrr'"),
    (["--mixers", "gla", "--ratios", "3:1", "--samples", "0"], "argument --samples: must be a whole number >= 1"),
    (["--mixers", "gla", "--ratios", "3:1", "--data", "missing.txt"], "missing.txt"),
    (["--mixers", "gla", "--ratios", "3:1", "--data", "corpus.txt"], "eval_data: the sweep scores held-out"),
    (["--mixers", "gla", "--ratios", "3:1", "--set", "model.num_key_value_heads=3"],
     "num_attention_heads=4 must be a multiple of num_key_value_heads=3"),
    (["--mixers", "gla", "--ratios", "3:1", "--lengths", "1,2", "--data", "corpus.txt", "--eval-data", "corpus.txt",
      "--set", "train.seq_len=48", "--set", "episode_min_len=16"], "does not fit in train.seq_len=48"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    _texts(tmp_path)
    try:
        code = main(["sweep", "--size", "tiny", "--out", "out", "--device", "cpu", *args])
    except SystemExit as stop:  # argparse's own checks (a whole number, a required option)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "heldout.txt"]


def test_kill_stops_the_lanes_too(tmp_path):
    """`kill` (SIGTERM) of a sweep with lanes ends its lane processes as Ctrl-C does: none trains on unowned (where
    the same command run again would put two processes in one cell)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    train, heldout = _texts(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hybridize.cli", "sweep", *GRID[:-1], "train.tokens=3072000", "--jobs", "2",
           "--data", train, "--eval-data", heldout, "--out", str(tmp_path / "grid")]
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def lanes() -> list[int]:
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except FileNotFoundError:
            return False

    running: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and parent.poll() is None:
            logs = list((tmp_path / "grid" / "logs").glob("lane-*.log"))
            if len(lanes()) == 2 and len(logs) == 2 and all("pretrain" in p.read_text() for p in logs):
                break  # both lanes are training
            time.sleep(0.5)
        running = lanes()
        assert parent.poll() is None and len(running) == 2, "the lanes never started training"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) != 0
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(p) for p in running):
            time.sleep(0.2)
        assert not any(alive(p) for p in running), "a lane kept running after its sweep was killed"
    finally:  # nothing of this test outlives it, whatever failed
        for p in ([parent.pid] if parent.poll() is None else []) + [p for p in running if alive(p)]:
            os.kill(p, signal.SIGKILL)
