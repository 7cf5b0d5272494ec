"""`benchmarks/gpu_run.sh quality` keeps one teacher across GPU machines: it converts from the teacher's weights in
bf16, brings them back in parts with a manifest of hashes, and on a fresh machine makes the same teacher from parts
sent over several calls (refusing a corrupt part). Run here on the CPU with the shipped tiny teacher; the grid itself
is skipped (CALL_SECONDS=0 leaves it no time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from hybridize.provenance import weights_sha256

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "src/hybridize/assets/teacher-tiny"


def _quality(tmp: Path, work: str, *args: str, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "DEVICE": "cpu", "WORK": str(tmp / work), "OUT": str(tmp / "out" / work),
         "TEACHER": str(tmp / "teacher-tiny"), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src"),
         "HYBRIDIZE_COMMIT": "test", "CALL_SECONDS": "0", "N_EPISODES": "2", "MIXERS": "lightning",
         "STATE_FROM": str(tmp / "no-state"), "TEACHER_IN": str(tmp / "no-parts"), "PART_SIZE": "512K", "PARTS_PER_CALL": "2", **env}
    out = subprocess.run(["bash", "benchmarks/gpu_run.sh", "quality", *args], cwd=ROOT, env=e, capture_output=True,
                         text=True, timeout=600)
    return out


def test_teacher_goes_back_in_parts_and_comes_back_the_same(tmp_path):
    shutil.copytree(TINY, tmp_path / "teacher-tiny")
    (tmp_path / "teacher-tiny/run/checkpoints").mkdir(parents=True)
    (tmp_path / "teacher-tiny/run/checkpoints/optimizer.pt").write_bytes(b"\0" * 4096)

    # machine 1: the teacher cast to bf16, its parts (not run/) brought back two per call
    out = _quality(tmp_path, "m1")
    log = out.stdout + out.stderr
    assert out.returncode == 3, log
    bf16 = tmp_path / "m1/teacher-tiny-bf16"
    weights = load_file(bf16 / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    fp32 = load_file(TINY / "model.safetensors")
    assert all(torch.equal(weights[k], v.to(torch.bfloat16)) for k, v in fp32.items())
    want = weights_sha256(bf16)
    back = tmp_path / "out/m1/quality"
    manifest = (back / "teacher-manifest").read_text()
    assert manifest.splitlines()[0] == f"weights_sha256 {want}", manifest
    parts = sorted(p.name for p in (tmp_path / "m1/teacher-parts").glob("teacher-part??"))
    assert len(parts) >= 3 and sorted(p.name for p in back.glob("teacher-part??")) == parts[:2], log
    shutil.rmtree(back)  # each device call starts with an empty OUT
    assert _quality(tmp_path, "m1").returncode == 3  # the next call brings the next parts
    assert sorted(p.name for p in back.glob("teacher-part??")) == parts[2:4]
    for p in parts:  # what the calls brought back, collected here
        shutil.copy(tmp_path / "m1/teacher-parts" / p, tmp_path / p)
    shutil.copy(back / "teacher-manifest", tmp_path / "teacher-manifest")

    # machine 2 (fresh): the parts sent over calls, as benchmarks/stage_teacher.sh stages them
    send = tmp_path / "send"
    env = {"TEACHER_IN": str(send), "TEACHER": str(tmp_path / "nowhere/teacher-tiny")}

    def stage(names: list[str], corrupt: str | None = None) -> None:
        shutil.rmtree(send, ignore_errors=True)
        send.mkdir()
        shutil.copy(tmp_path / "teacher-manifest", send)
        for name in names:
            shutil.copy(tmp_path / name, send)
        if corrupt:
            (send / corrupt).write_bytes(b"not the part")

    stage(parts[:1], corrupt=parts[1])
    out = _quality(tmp_path, "m2", **env)
    assert out.returncode == 3 and f"1 of {len(parts)} parts" in out.stdout, out.stdout + out.stderr
    assert f"corrupt: {parts[1]}" in out.stderr
    assert not (tmp_path / "m2/teacher-tiny-bf16").exists()
    # a call that carries none of the teacher (Triton's parts, say) waits for the rest instead of training one
    shutil.rmtree(send)
    out = _quality(tmp_path, "m2", **env)
    assert out.returncode == 3 and f"1 of {len(parts)} parts" in out.stdout, out.stdout + out.stderr
    assert "hybridize teacher" not in out.stdout + out.stderr and not (tmp_path / "nowhere").exists()
    stage(parts[1:])
    out = _quality(tmp_path, "m2", **env)
    assert f"made at {tmp_path}/m2/teacher-tiny-bf16" in out.stdout, out.stdout + out.stderr
    assert weights_sha256(tmp_path / "m2/teacher-tiny-bf16") == want
    # not trained here: nothing to bring back
    assert not list((tmp_path / "out/m2/quality").glob("teacher-part??"))


def test_published_and_variant_grids_run_in_states_of_their_own(tmp_path):
    """PUBLISHED=1: the grid's command carries HALO's and FlashMorph's published selection sizes, resumes from
    results/quality-published and converts under its own work folder (not the recipe grid's conversions). The grid
    itself is replaced by a stand-in that records its arguments."""
    shutil.copytree(TINY, tmp_path / "teacher-tiny")
    record = tmp_path / "argv.txt"
    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/usr/bin/env bash
if [ "$1" = benchmarks/quality_grid.py ]; then echo "$@" > {record}; exit 0; fi
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    out = _quality(tmp_path, "m1", PYTHON=str(wrapper), CALL_SECONDS="600", PUBLISHED="1", SEEDS="1",
                   STATE_FROM=str(tmp_path / "no-state"))
    assert out.returncode == 0, out.stdout + out.stderr
    argv = record.read_text().split()
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == ["select.flashmorph_tokens=20000000", "select.halo_examples=1024", "select.halo_lm_sequences=2048"]
    at = {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--") and i + 1 < len(argv)}
    assert at["--state"] == f"{tmp_path}/m1/quality-state-published"
    assert at["--work"] == f"{tmp_path}/m1/quality-published" and at["--seeds"] == "1"
    assert at["--selectors"] == "uniform,halo,flashmorph"

    # VARIANT: any other settings (ARGS) in a grid of their own, here the intra-layer one
    out = _quality(tmp_path, "m1", "--set", "select.groups_per_layer=1", PYTHON=str(wrapper), CALL_SECONDS="600",
                   VARIANT="gpl1", FUSION="intra", SEEDS="1", STATE_FROM=str(tmp_path / "no-state"))
    assert out.returncode == 0, out.stdout + out.stderr
    argv = record.read_text().split()
    at = {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--") and i + 1 < len(argv)}
    assert at["--state"] == f"{tmp_path}/m1/quality-state-intra-gpl1" and at["--work"] == f"{tmp_path}/m1/quality-gpl1"
    assert at["--fusion"] == "intra" and at["--selectors"] == "uniform,halo,flashmorph"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] == ["select.groups_per_layer=1"]
    # each grid's log and files in an OUT folder named as its results folder, so two can run side by side
    assert (tmp_path / "out/m1/quality-intra-gpl1/quality.log").is_file()
    assert (tmp_path / "out/m1/quality-published/command.txt").is_file()
    assert not (tmp_path / "out/m1/quality").exists()
