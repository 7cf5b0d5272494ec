"""The teacher's weights hash: what it keeps and what changes it, the check a run insists on, and a conversion
folder that records its teacher and refuses another."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridize.cli import main
from hybridize.pipeline import load_recipe
from hybridize.pipeline.stages import SOURCE_TEACHER, Conversion
from hybridize.provenance import check_weights, weights_sha256
from teachers import make_teacher


def _tensors(path):
    return load_file(path / "model.safetensors")


def test_weights_hash_names_the_tensors_not_the_files(tmp_path):
    torch.manual_seed(0)
    w = {"b.weight": torch.randn(3, 4), "a.bias": torch.randn(4), "c": torch.arange(6, dtype=torch.int64)}
    (tmp_path / "one").mkdir()
    save_file(w, tmp_path / "one" / "model.safetensors", metadata={"format": "pt"})
    ref = weights_sha256(tmp_path / "one")
    assert len(ref) == 64
    # another shard split and other file metadata: the same weights, the same hash
    (tmp_path / "split").mkdir()
    save_file({"c": w["c"]}, tmp_path / "split" / "model-00001-of-00002.safetensors")
    save_file({"a.bias": w["a.bias"], "b.weight": w["b.weight"]},
              tmp_path / "split" / "model-00002-of-00002.safetensors", metadata={"note": "re-saved"})
    assert weights_sha256(tmp_path / "split") == ref

    def changed(name, **edit):
        d = tmp_path / name
        d.mkdir()
        save_file({**w, **edit}, d / "model.safetensors")
        return weights_sha256(d)

    bit = w["b.weight"].clone()
    bit.view(torch.int32)[0, 0] ^= 1  # one bit of one float
    assert changed("bit", **{"b.weight": bit}) != ref
    assert changed("cast", **{"b.weight": w["b.weight"].double()}) != ref
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    save_file({"x.weight" if k == "b.weight" else k: v for k, v in w.items()}, renamed / "model.safetensors")
    assert weights_sha256(renamed) != ref
    assert weights_sha256(tmp_path / "missing") is None and weights_sha256("org/hub-id") is None
    # a file rewritten in place is hashed again, not served from the per-process memo
    save_file({**w, "c": w["c"] + 1}, tmp_path / "one" / "model.safetensors")
    assert weights_sha256(tmp_path / "one") != ref


def test_check_weights_takes_a_prefix_and_names_both_hashes(tmp_path):
    teacher = make_teacher("qwen3", tmp_path / "teacher")
    sha = weights_sha256(teacher)
    assert check_weights(teacher, None) == sha == check_weights(teacher, sha[:8].upper())
    with pytest.raises(ValueError, match=f"has weights sha256 {sha}, not the expected 00000000"):
        check_weights(teacher, "00000000")
    for bad in ("abc", "not-hex-at-all"):
        with pytest.raises(ValueError, match="teacher_sha256 must be at least 8 hex digits"):
            check_weights(teacher, bad)
    with pytest.raises(ValueError, match="is not a folder holding \\*.safetensors"):
        check_weights("org/hub-id", sha)


def test_a_conversion_records_its_teacher_and_refuses_another(tmp_path):
    a = make_teacher("qwen3", tmp_path / "a", seed=0)
    b = make_teacher("qwen3", tmp_path / "b", seed=1)
    recipe, out = load_recipe("smoke"), tmp_path / "conv"
    conv = Conversion(a, out, recipe, device="cpu")
    assert not out.exists()  # validation writes nothing
    conv.claim()  # as the first stage does
    assert json.loads((out / SOURCE_TEACHER).read_text()) == {"path": str(a), "weights_sha256": weights_sha256(a)}
    record = conv.mark_done("align", {"result": {}})
    assert record["teacher_sha256"] == weights_sha256(a)
    assert json.loads((out / "stages" / "align" / "done.json").read_text())["teacher_sha256"] == weights_sha256(a)
    Conversion(a, out, recipe, device="cpu", teacher_sha256=weights_sha256(a)[:12])  # the same teacher resumes
    with pytest.raises(ValueError, match="was converted from a teacher with weights sha256"):
        Conversion(b, out, recipe, device="cpu")
    with pytest.raises(ValueError, match="not the expected"):
        Conversion(b, tmp_path / "conv-b", recipe, device="cpu", teacher_sha256=weights_sha256(a))
    # a first run whose teacher was no local folder (a hub id) recorded no hash: the next run's stands
    hub = tmp_path / "conv-hub"
    hub.mkdir()
    (hub / SOURCE_TEACHER).write_text(json.dumps({"path": "org/model", "weights_sha256": None}))
    Conversion(b, hub, recipe, device="cpu").claim()
    assert json.loads((hub / SOURCE_TEACHER).read_text())["weights_sha256"] == weights_sha256(b)


def test_convert_refuses_a_teacher_of_another_hash_in_one_line(tmp_path, capsys):
    a = make_teacher("qwen3", tmp_path / "a")
    capsys.readouterr()
    code = main(["convert", "--teacher", str(a), "--out", str(tmp_path / "o"), "--teacher-sha256", "deadbeef",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the line saying which recipe runs
    assert code == 2 and last.startswith("hybridize: error: ") and "not the expected deadbeef" in last, err
    assert not (tmp_path / "o").exists()  # refused before anything was written
