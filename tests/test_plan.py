"""The memory plan (`hybridize convert --plan`): exact parameter counts, what sharding divides, the table, and a
conversion that cannot fit refused in one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridize.cli import main
from hybridize.demo import shipped_teacher
from hybridize.distributed import mesh_shape
from hybridize.pipeline import load_recipe
from hybridize.pipeline.plan import GiB, Counts, load_teacher_config, memory_plan
from conftest import load_script

# HALO's global batches (32 / 96 / 128) split over 8 GPUs (the README's command)
EIGHT = ["align.micro_batch_size=4", "distill.micro_batch_size=12"]


def test_parameter_counts_are_the_published_ones():
    """Built on the meta device: Qwen3-8B and -32B have 8,190,735,360 and 32,762,123,264 parameters (their model
    cards); Qwen3-1.7B 1,720,574,976 with its tied embedding counted once."""
    counts = {name: Counts.of(load_teacher_config(name)[1]).total for name in ("qwen3-1.7b", "qwen3-8b", "qwen3-32b")}
    assert counts == {"qwen3-1.7b": 1_720_574_976, "qwen3-8b": 8_190_735_360, "qwen3-32b": 32_762_123_264}


def test_sharding_divides_the_trained_state():
    _, config = load_teacher_config("qwen3-8b")
    recipe = load_recipe("halo-qwen3-1.7b", EIGHT)
    one = {s.stage: s for s in memory_plan(config, recipe, world=1, stages=["distill"]).stages}["distill"]
    eight = {s.stage: s for s in memory_plan(config, recipe, world=8, teacher_placement="sharded",
                                             stages=["distill"]).stages}["distill"]
    assert eight.optimizer == pytest.approx(one.optimizer / 8, rel=1e-6)  # AdamW's moments: 1/8 each
    assert one.peak > 150 * GiB and eight.peak < 60 * GiB
    assert one.teacher > 15 * GiB > eight.teacher  # 8B in bf16 whole, or 1/8 of its blocks and its ends whole
    # HSDP: sharded within groups of 8, replicated across 8 of them: a GPU holds what it holds with 8 GPUs
    wide = load_recipe("halo-qwen3-1.7b", ["distill.batch_size=768", "distill.micro_batch_size=12"])  # 12 per GPU again, no accumulation
    hsdp = memory_plan(config, wide, world=64, shard=8, teacher_placement="sharded", stages=["distill"]).stages[0]
    assert hsdp.peak == eight.peak
    full = memory_plan(config, wide, world=64, teacher_placement="sharded", stages=["distill"]).stages[0]
    assert full.peak < eight.peak


def test_auto_places_the_teacher_whole_where_that_fits():
    _, config = load_teacher_config("qwen3-1.7b")
    recipe = load_recipe("halo-qwen3-1.7b", EIGHT)
    assert memory_plan(config, recipe, world=8, device_memory=80 * GiB).teacher_placement == "replicated"
    assert memory_plan(config, recipe, world=8, device_memory=12 * GiB).teacher_placement == "sharded"
    assert memory_plan(config, recipe, world=8).teacher_placement == "sharded"  # memory unknown


def test_plan_command_prints_the_table_without_weights(capsys):
    """`--plan` takes a built-in shape for the teacher (no weights, no GPU) and prints one row per stage."""
    code = main(["convert", "--teacher", "qwen3-32b", "--recipe", "halo-qwen3-1.7b", "--plan", "--gpus", "8",
                 "--gpu-memory", "80", *(a for item in EIGHT for a in ("--set", item))])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert "qwen3-32b" in lines[0] and "8 GPU(s)" in lines[0] and "teacher sharded" in lines[0]
    assert lines[1].split() == ["stage", "tokens", "teacher", "student", "grads", "optimizer", "activations",
                                "logits", "peak"]
    assert [line.split()[0] for line in lines[2:5]] == ["align", "distill", "finetune"]
    assert "does NOT fit in 90% of 80 GiB" in lines[-1]


@pytest.mark.parametrize("args, message", [
    (["--teacher", "nowhere"], "--teacher 'nowhere' for a plan must be a built-in shape"),
    (["--teacher", "qwen3-8b", "--gpus", "8", "--shard-size", "3"], "GPUs per shard group \\(3\\) must divide the 8"),
    (["--teacher", "qwen3-8b", "--stages", "align,polish"], "unknown stage\\(s\\) \\['polish'\\]"),
    (["--teacher", "qwen3-8b", "--recipe", "halo-qwen3-1.7b", "--gpus", "8"],
     "align.batch_size=32 must be a multiple of micro_batch_size=16 x 8"),
])
def test_bad_plan_inputs_give_one_line(args, message, capsys):
    import re

    code = main(["convert", *args, "--plan"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and re.search(message, err), err
    assert len([line for line in err.splitlines() if line.startswith("hybridize: error")]) == 1


def test_a_conversion_that_cannot_fit_stops_before_any_work(tmp_path, capsys):
    """Given a GPU's memory (on CUDA: the device's own), a conversion whose plan does not fit says which stage needs
    how much, in one line, and writes nothing."""
    code = main(["convert", "--teacher", str(shipped_teacher()), "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--gpu-memory", "0.001"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "o").exists()
    errors = [line for line in err.splitlines() if line.startswith("hybridize: error")]
    assert len(errors) == 1 and "memory plan: stage" in errors[0] and "see --plan" in errors[0], err


def test_mesh_shape_is_replicate_by_shard():
    assert mesh_shape(64, 8) == (8, 8) and mesh_shape(4, 4) == (1, 4)
    with pytest.raises(ValueError, match="HYBRIDIZE_SHARD_SIZE=3 must divide the 8 processes"):
        mesh_shape(8, 3)


def test_plan_vs_measured_script_runs_on_the_cpu(tmp_path):
    """`benchmarks/plan_vs_measured.py` on the CPU with the tiny shape: the conversion runs and each stage has its
    planned peak (nothing is measured on the CPU; the GPU run is the check)."""
    data = tmp_path / "data.txt"
    data.write_text(Path(json.__file__).read_text() * 2)
    script = load_script("benchmarks/plan_vs_measured.py")
    record = script.main(["--shape", "tiny", "--recipe", "smoke", "--device", "cpu", "--steps", "1",
                          "--out", str(tmp_path / "pvm"), "--data", str(data)])
    assert [r["stage"] for r in record["stages"]] == ["align", "distill", "finetune"]
    assert all(r["planned_gib"] > 0 and r["measured_gib"] is None for r in record["stages"])
    assert {"command", "commit", "device"} <= set(record)
    assert json.loads((tmp_path / "pvm" / "plan_vs_measured.json").read_text()) == record


def test_plan_of_an_intra_layer_conversion_counts_both_branches():
    """fusion=intra: the student's every layer splits its heads (25% of the KV-head groups in each); the plan runs
    and its stage-2 activations lie between an all-attention and an all-linear student's."""
    from hybridize import HybridConfig
    from hybridize.models.shapes import shape_config
    from hybridize.pipeline import load_recipe
    from hybridize.pipeline.plan import _mixer_bytes
    from hybridize.convert import student_config

    teacher = HybridConfig(**shape_config("qwen3-1.7b"))
    plan = memory_plan(teacher, load_recipe("halo-qwen3-1.7b", ["fusion=intra"]), device_memory=80 * 10**9)
    assert [s.stage for s in plan.stages] == ["align", "distill", "finetune"] and plan.fits
    intra = student_config(teacher, [], "lightning", kv_groups=[[3, 7]] * 28)
    linear = student_config(teacher, [], "lightning")
    assert intra.layer_types == ["hybrid"] * 28
    attention = _mixer_bytes(teacher, 0, 2)
    assert min(attention, _mixer_bytes(linear, 0, 2)) < _mixer_bytes(intra, 0, 2) < \
        attention + _mixer_bytes(linear, 0, 2)


def test_plan_of_a_finetune_with_the_teachers_kl_holds_the_teacher():
    """finetune.kl_weight > 0: stage 3 runs the teacher beside the student, so its plan holds the teacher's weights
    and the KL's logits, as distill's does; with the default 0 it holds no teacher."""
    from hybridize import HybridConfig
    from hybridize.models.shapes import shape_config
    from hybridize.pipeline import load_recipe

    teacher = HybridConfig(**shape_config("qwen3-1.7b"))
    ce, kl = (memory_plan(teacher, load_recipe("halo-qwen3-1.7b", [f"finetune.kl_weight={w}"]),
                          device_memory=80 * 10**9).stages[-1] for w in (0, 0.5))
    assert ce.stage == kl.stage == "finetune"
    assert ce.teacher == 0 < kl.teacher and kl.peak > ce.peak


def test_plan_table_script_writes_the_docs_table(tmp_path):
    load_script("benchmarks/plan_table.py").main(["--out", str(tmp_path)])
    record = json.loads((tmp_path / "plan.json").read_text())
    assert record["command"].startswith("python benchmarks/plan_table.py") and len(record["rows"]) == 9
    row = next(r for r in record["rows"] if r["teacher"] == "qwen3-8b" and r["gpus"] == 8)
    assert row["fits_80GB"] and row["teacher_placement"] == "replicated"
    assert (tmp_path / "plan.md").read_text().count("\n") == 11
