"""Where recall is lost: `hybridize eval --stages` on a smoke conversion of a tiny teacher scores the student after
each stage beside the teacher on the same prompts, in one table; the rebuilt "selected" hybrid is the model distill
starts from (a distill at learning rate 0 saves it unchanged)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hybridize.cli import main
from hybridize.evaluation.stages import build_selected, stage_markdown, stage_table
from hybridize.pipeline import load_recipe
from hybridize.pipeline.stages import Conversion, convert
from hybridize.provenance import weights_sha256
from teachers import TEXTS, make_teacher

STAGE_NAMES = ["aligned", "selected", "distilled", "finetuned"]


@pytest.fixture(scope="module")
def conversion(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    mp = pytest.MonkeyPatch()
    mp.setenv("HYBRIDIZE_CACHE", str(root / "cache"))
    data = root / "data"
    data.mkdir()
    for i in range(6):
        (data / f"doc{i}.txt").write_text(" ".join(TEXTS[i % len(TEXTS)] for _ in range(12)))
    teacher = make_teacher("qwen3", root / "teacher")
    convert(Conversion(teacher, root / "conv", load_recipe("smoke"), data=[str(data)], device="cpu"))
    yield root, teacher, data
    mp.undo()


def test_stage_table_scores_every_stage_beside_the_teacher(conversion, tmp_path, capsys):
    root, teacher, data = conversion
    out = tmp_path / "eval"
    code = main(["eval", "--stages", str(root / "conv"), "--suite", "passkey", "--lengths", "256", "--depths", "0.5",
                 "--samples", "3", "--data", str(data), "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    table = json.loads((out / "stages.json").read_text())
    assert [m["name"] for m in table["models"]] == ["teacher", *STAGE_NAMES]
    assert table["models"][0]["weights_sha256"] == weights_sha256(teacher)  # the teacher the conversion recorded
    assert weights_sha256(teacher) in (root / "conv" / "README.md").read_text()  # and its model card names
    assert [m["attention_layers"] for m in table["models"]] == [4, 0, 1, 1, 1]
    rows = {r["model"]: r for r in table["rows"]}
    assert list(rows) == ["teacher", *STAGE_NAMES] and all(r["n"] == 3 for r in rows.values())
    assert "p_vs_previous" not in rows["aligned"] and all("p_vs_previous" in rows[n] for n in STAGE_NAMES[1:])
    assert all(0 < rows[n]["p_vs_teacher"] <= 1 for n in STAGE_NAMES)
    md = (out / "stages.md").read_text()
    assert "| model | passkey @ 256 (1x) |" in md and md.count("n=3") == 5 and "p teacher" in md
    # the selected hybrid was built once, under OUT/models, and is reused by a second call
    assert (out / "models" / "selected" / "config.json").is_file()
    # the same table again from report.json alone
    report = json.loads((out / "report.json").read_text())
    assert stage_table(report, root / "conv")["rows"] == table["rows"]
    assert stage_markdown(table) == md


def test_the_selected_hybrid_is_what_distill_starts_from(conversion, tmp_path):
    root, teacher, data = conversion
    frozen = load_recipe("smoke", ["distill.lr=0", "distill.lr_pretrained=0", "distill.min_lr=0"])
    conv = Conversion(teacher, tmp_path / "lr0", frozen, data=[str(data)], device="cpu")
    shutil.copytree(root / "conv" / "stages" / "align", conv.stage_dir("align"))  # stage 1 as it was
    convert(conv, ["select", "distill"])
    selected = build_selected(tmp_path / "lr0", teacher, tmp_path / "selected", device="cpu")
    a = load_file(selected / "model.safetensors")
    b = load_file(tmp_path / "lr0" / "stages" / "distill" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_stage_eval_errors_are_one_line(conversion, tmp_path, capsys):
    root, teacher, data = conversion
    base = ["eval", "--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu"]
    cases = [
        (base, "models / stages: give at least one model directory"),
        (base + ["--stages", str(root / "conv"), "--model", str(teacher)], "not both"),
        (base + ["--stages", str(tmp_path)], "is not a `hybridize convert` output folder"),
        (base + ["--stages", str(root / "conv"), "--teacher-sha256", "00000000"], "not the expected 00000000"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hybridize: error: ") and message in err and err.count("\n") == 1, err
