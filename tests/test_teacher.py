"""`hybridize teacher`: the recipes meet the issue's sizes, episodes are what their labels say, and a tiny run is
deterministic, resumable and saved as an ordinary HF checkpoint."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from hybridize.cli import main
from hybridize.data.synthetic import IGNORE_INDEX, FillerTokens
from hybridize.data.tokenizer import train_bpe_tokenizer
from hybridize.provenance import weights_sha256
from hybridize.teacher import train_teacher
from hybridize.teacher.recipe import SIZES, teacher_recipe
from hybridize.teacher.train import EpisodeMixer, repeat_episode


def _corpus(tmp_path: Path) -> Path:
    """A few standard-library modules as text: present on every Python install, enough for a 2K BPE."""
    path = tmp_path / "corpus.txt"
    mods = [random, json, types, pytest]
    path.write_text("\n\n".join(Path(m.__file__).read_text() for m in mods))
    return path


# A tiny run: 3 optimizer steps of 4 rows (2 of them episodes) at 256 tokens
TINY_RUN = ["train.tokens=3072", "train.batch_size=4", "train.micro_batch_size=4", "episode_rows=2",
            "train.warmup_steps=1", "train.save_every=1"]


def _episode_sources(tmp_path: Path):
    """(recipe, corpus sequences, tokenizer, filler) of a tiny run on `_corpus`."""
    from hybridize.data import tokenize_corpus

    corpus = _corpus(tmp_path)
    docs = corpus.read_text().split("\n\n")
    tok = train_bpe_tokenizer(docs, 2048)
    return teacher_recipe("tiny", TINY_RUN), tokenize_corpus(str(corpus), tok), tok, FillerTokens.build(tok, docs)


@pytest.mark.parametrize("size,min_layers,min_params", [("small", 12, 50e6), ("base", 24, 300e6)])
def test_gpu_sizes_meet_their_floors(size, min_layers, min_params):
    r = teacher_recipe(size)
    tok = types.SimpleNamespace(bos_token_id=0, eos_token_id=0, pad_token_id=1)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(r.model_config(tok))
    params = sum(p.numel() for p in model.parameters())
    assert r.num_hidden_layers >= min_layers and params >= min_params, (r.num_hidden_layers, params)
    assert model.config.tie_word_embeddings and r.num_key_value_heads < r.num_attention_heads  # GQA, tied
    assert r.max_position_embeddings == r.train.seq_len


def test_every_size_trains_on_text_that_leaves_builtin_heldout_unseen():
    """The held-out evaluation (and the comparison's haystacks) need text no teacher saw: every size's default data
    is train parts only, and `small` reads the stdlib's source too (its corpus alone was memorised)."""
    from hybridize.data.sources import spec_items
    from hybridize.teacher.train import default_eval_data

    for size in SIZES:
        assert default_eval_data(teacher_recipe(size).data) == "builtin:heldout", size
    assert "stdlib-code:train" in spec_items(teacher_recipe("small").data)
    assert teacher_recipe("small", ["data=builtin:train"]).data == "builtin:train"  # the earlier recipe, by --set


@pytest.mark.parametrize("override,field", [
    (["episode_rows=16"], "episode_rows"), (["episode_min_len=8"], "episode_min_len"),
    (["episode_min_len=250"], "episode_min_len"), (["nonsense=1"], "nonsense"), (["train.lr=-1"], "lr"),
    (["episode_rows"], "key=value"), (["episode_tasks=repeat,nope"], "episode_tasks")])
def test_bad_recipe_values_name_their_field(override, field):
    with pytest.raises(ValueError, match=field):
        teacher_recipe("tiny", override)
    with pytest.raises(ValueError, match="allowed"):
        teacher_recipe("huge")
    assert set(SIZES) == {"tiny", "small", "base"}


def test_episodes_label_only_their_answers_and_are_a_function_of_the_seed(tmp_path):
    recipe, seqs, tok, filler = _episode_sources(tmp_path)
    a = EpisodeMixer(recipe, seqs, tok, filler)
    lengths = set()
    for n in range(12):
        ids, labels = a.episode(n)
        ids2, labels2 = a.episode(n)
        assert torch.equal(ids, ids2) and torch.equal(labels, labels2)
        assert ids.shape == labels.shape == (recipe.train.seq_len,)
        answer = labels != IGNORE_INDEX
        short = recipe.episode_tasks[n % len(recipe.episode_tasks)] != "repeat"  # repeat labels half its row
        assert 0 < answer.sum() < (32 if short else recipe.train.seq_len // 2)
        assert torch.equal(labels[answer], ids[answer])  # labels are the answer tokens themselves, in place
        lengths.add(int((ids != tok.pad_token_id).sum()))
        text = tok.decode(ids[answer], skip_special_tokens=True)
        if short:  # the answer ends with a labelled EOS, so the teacher learns where answers stop
            assert labels[answer][-1] == tok.eos_token_id
        prompt = tok.decode(ids[: int(answer.nonzero()[0])])
        assert text.strip() and all(w in prompt for w in text.replace(",", " ").split())  # the answer was in the prompt
    assert len(lengths) > 3  # prompt lengths vary (short episodes are learned first)
    # the mixer resumes: batches after load_state_dict equal the uninterrupted ones
    first = iter(EpisodeMixer(recipe, seqs, tok, filler))
    next(first)
    state = first.state_dict()
    expected = next(first)
    again = EpisodeMixer(recipe, seqs, tok, filler)
    again.load_state_dict(json.loads(json.dumps(state)))
    got = next(again)
    assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.labels, expected.labels)
    assert got.episode_rows == 2 and got.input_ids.shape == (4, 256)


def test_episode_workers_give_the_same_batches_and_resume(tmp_path):
    """Episodes drawn ahead in worker processes: the same batches as drawn in-process, across a resume that moves
    the position under the prefetched ones, and on two ranks."""
    recipe, seqs, tok, filler = _episode_sources(tmp_path)
    for rank, world in ((0, 1), (1, 2)):
        plain = EpisodeMixer(recipe, seqs, tok, filler, rank, world)
        expected = [next(plain) for _ in range(6)]
        fast = EpisodeMixer(recipe, seqs, tok, filler, rank, world, workers=2, prefetch=3)
        try:
            got = [next(fast) for _ in range(2)]
            state = fast.state_dict()
            got += [next(fast) for _ in range(3)]  # prefetched past the saved position ...
            fast.load_state_dict(json.loads(json.dumps(state)))  # ... then moved back to it
            got += [next(fast) for _ in range(4)]
        finally:
            fast.close()
        order = [0, 1, 2, 3, 4, 2, 3, 4, 5]
        for i, (g, e) in enumerate(zip(got, (expected[j] for j in order))):
            assert torch.equal(g.input_ids, e.input_ids) and torch.equal(g.labels, e.labels), (rank, i)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        EpisodeMixer(recipe, seqs, tok, filler, workers=-1)


def test_ctrl_c_while_episodes_are_queued_leaves_a_pool_that_closes(tmp_path):
    """Ctrl-C arriving inside the submission of a prefetch task (here: from within the pool's task queue `put`)
    surfaces as KeyboardInterrupt once the task is queued; `close()` then ends. A KeyboardInterrupt between the pool
    registering the task and queueing it left a task no worker runs, and `close()` waited for it forever."""
    import signal as _signal
    import threading

    recipe, seqs, tok, filler = _episode_sources(tmp_path)
    fast = EpisodeMixer(recipe, seqs, tok, filler, workers=2, prefetch=2)
    next(fast)
    queue = fast._pool._taskqueue  # what apply_async puts into (the task thread holds the queue itself)

    class Interrupted:
        def put(self, item):
            fast._pool._taskqueue = queue
            os.kill(os.getpid(), _signal.SIGINT)
            queue.put(item)

    fast._pool._taskqueue = Interrupted()
    before = _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # as in a terminal, even under `pytest &`
    try:
        with pytest.raises(KeyboardInterrupt):
            next(fast)
    finally:
        _signal.signal(_signal.SIGINT, before)
    closer = threading.Thread(target=fast.close, daemon=True)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive(), "close() still waiting 30 s after an interrupted submission"


def test_repeat_episode_labels_the_second_copy_of_the_first(tmp_path):
    tok = train_bpe_tokenizer(_corpus(tmp_path).read_text().split("\n\n"), 2048)
    for length in (40, 100, 224):
        ids, labels = repeat_episode(tok, length, seed=length)
        assert ids == repeat_episode(tok, length, seed=length)[0] and len(ids) <= length
        answer = [t for t in labels if t != IGNORE_INDEX]
        n = len(answer)
        assert n >= 4 and ids[-n:] == answer and labels[:-n] == [IGNORE_INDEX] * (len(ids) - n)
        first = tok.decode(ids[: len(ids) - n])
        assert first.split("Repeat these words:")[1].split("\nAgain:")[0] == tok.decode(answer)
    assert repeat_episode(tok, 100, seed=1)[0] != repeat_episode(tok, 100, seed=2)[0]
    with pytest.raises(ValueError, match="length"):
        repeat_episode(tok, 12, seed=0)


def test_tiny_teacher_is_deterministic_resumable_and_a_plain_hf_checkpoint(tmp_path):
    corpus = str(_corpus(tmp_path))
    one = train_teacher("tiny", tmp_path / "one", TINY_RUN, data=[corpus], device="cpu")
    assert one.finished and one.steps == 3
    # interrupted after its first step (max_minutes=0 stops at the first step boundary), then continued
    part = train_teacher("tiny", tmp_path / "two", TINY_RUN, data=[corpus], device="cpu", max_minutes=0)
    assert not part.finished and not (tmp_path / "two" / "model.safetensors").exists()
    code = main(["teacher", "--size", "tiny", "--out", str(tmp_path / "two"), "--data", corpus,
                 *[a for s in TINY_RUN for a in ("--set", s)], "--device", "cpu"])
    assert code in (0, None)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    tok = AutoTokenizer.from_pretrained(tmp_path / "one")
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.max_position_embeddings == 256
    ids = tok("def main():", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)
    record = json.loads((tmp_path / "one" / "teacher.json").read_text())
    assert record["size"] == "tiny" and record["result"]["steps"] == 3 and record["device"] == "cpu"
    # train.deterministic (deterministic kernels, for CUDA): recorded in the recipe, the same weights on the CPU, and
    # the process's setting back as it was afterwards
    det = train_teacher("tiny", tmp_path / "det", TINY_RUN + ["train.deterministic=true"], data=[corpus], device="cpu")
    assert det.finished and json.loads((tmp_path / "det" / "teacher.json").read_text())["recipe"]["train"]["deterministic"]
    w3 = load_file(tmp_path / "det" / "model.safetensors")
    assert all(torch.equal(w1[k], w3[k]) for k in w1)
    assert not torch.are_deterministic_algorithms_enabled()
    assert record["recipe"]["train"]["tokens"] == 3072
    assert {"command", "commit", "torch", "transformers"} <= set(record)  # what produced it
    # the weights' hash, what later runs insist on: the same for the resumed and the deterministic run
    assert record["weights_sha256"] == weights_sha256(tmp_path / "one") == weights_sha256(tmp_path / "two")
    assert json.loads((tmp_path / "det" / "teacher.json").read_text())["weights_sha256"] == record["weights_sha256"]
    # a different recipe in the same folder is refused rather than mixed
    with pytest.raises(ValueError, match="another recipe"):
        train_teacher("tiny", tmp_path / "one", [*TINY_RUN, "train.lr=1e-3"], data=[corpus], device="cpu")


# 3 optimizer steps of 4 rows: one rank accumulating two micro-batches of 2, or two ranks with one each
DP_RUN = ["train.tokens=3072", "train.batch_size=4", "train.micro_batch_size=2", "episode_rows=1",
          "train.warmup_steps=1", "train.save_every=1"]


def test_torchrun_two_ranks_train_the_same_teacher_as_one(tmp_path):
    """`torchrun --nproc_per_node 2 -m hybridize teacher` (gloo on the CPU, FSDP2): the ranks' gradients are
    averaged by the reduce-scatter, so two ranks with micro-batch 2 give the weights of one rank accumulating two
    micro-batches of 2 (ranks that trained on their half of the data alone would not). Both ranks stop at the same
    step and resume from their sharded checkpoint to the uninterrupted run's weights."""
    import subprocess
    import sys

    corpus = str(_corpus(tmp_path))
    args = ["teacher", "--size", "tiny", "--data", corpus, *[a for s in DP_RUN for a in ("--set", s)],
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) in (0, None)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "hybridize", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max(((w1[k] - w2[k]).abs().max().item(), k) for k in w1)
    mean = sum((w1[k] - w2[k]).abs().sum().item() for k in w1) / sum(w.numel() for w in w1.values())
    print(f"two ranks vs one: largest difference {worst[0]:.3g} in {worst[1]}, mean {mean:.3g}")
    # fp32; only the summation order of the gradients differs (one sum of two halves against two accumulated halves).
    # AdamW divides each gradient by its running RMS, so where an element's gradient is near zero a rounding-level
    # difference moves its step by a visible fraction of the learning rate (1.2e-3): 2.1e-5 on one Xeon, < 1e-5 on
    # another. Ranks that did not average their gradients (each trained on half the data) differ by ~lr everywhere.
    assert worst[0] < 0.05 * 1.2e-3, f"largest difference {worst[0]:.3g} in {worst[1]}"
    assert mean < 1e-6, f"mean difference {mean:.3g}"
    rows = [json.loads(line) for line in (tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one writer: rank 0
    for a, b in zip(rows, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["tokens"] == b["tokens"]
    record = json.loads((tmp_path / "two" / "teacher.json").read_text())
    assert record["result"]["steps"] == 3
    # killed after its first step on both ranks (--max-minutes 0), then the same command: the same weights again
    for _ in range(2):
        part = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "hybridize", *args, "--out", str(tmp_path / "resumed"), "--max-minutes", "0"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert part.returncode == 0, part.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and not (tmp_path / "resumed" / "model.safetensors").exists()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "hybridize", *args, "--out", str(tmp_path / "resumed")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    w3 = load_file(tmp_path / "resumed" / "model.safetensors")
    for k in w2:
        assert torch.equal(w2[k], w3[k]), k  # the same two ranks, interrupted twice: bit-identical


# the tests that find a run's processes read /proc
PROC = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds a run's processes in /proc (Linux)")


@PROC
@pytest.mark.parametrize("to, sig, by", [("rank 1", signal.SIGTERM, "SIGTERM"), ("torchrun", signal.SIGINT, "Ctrl-C")])
def test_a_signal_under_torchrun_stops_both_ranks_after_the_same_step(tmp_path, to, sig, by):
    """Under torchrun a SIGTERM that reaches one rank only (rank 1), or a Ctrl-C (to torchrun, which passes it to
    every rank: they run in sessions of their own), stops both ranks after the same step, with one sharded checkpoint
    of it, and the same command resumes from there."""
    corpus = str(_corpus(tmp_path))
    out = tmp_path / "t"
    args = ["teacher", "--size", "tiny", "--data", corpus,
            *[a for s in [*DP_RUN, "train.tokens=307200", "train.save_every=1000"] for a in ("--set", s)],
            "--device", "cpu", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "hybridize"]
    proc = subprocess.Popen([*torchrun, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = out / "run" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.05)
    ranks = {int(dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_text().split("\0")
                      if "=" in line).get("RANK", -1)): pid for pid in _children(proc.pid)}
    assert proc.poll() is None and 1 in ranks, (proc.poll(), ranks)
    os.kill(ranks[1] if to == "rank 1" else proc.pid, sig)
    _, err = proc.communicate(timeout=180)
    steps = len(metrics.read_text().splitlines())
    assert err.count(f"teacher: stopped by {by} after step {steps} of 300") == 2, err[-3000:]
    assert (out / "run" / "checkpoints" / f"step_{steps:07d}" / "sharded").is_dir()
    resumed = subprocess.run([*torchrun, *args, "--max-minutes", "0"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(metrics.read_text().splitlines()) == steps + 1  # one more step, from the checkpoint


def test_commands_that_are_not_data_parallel_refuse_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["demo", "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "`hybridize demo` runs in one process" in err and "WORLD_SIZE=2" in err and "`hybridize convert`" in err


def test_heldout_evaluation_is_logged_and_leaves_the_weights_alone(tmp_path):
    """`--eval-data` scores held-out windows every `--eval-every` steps: the values land in the metrics and in
    teacher.json, and the weights are bit-identical to a run without evaluation."""
    corpus = str(_corpus(tmp_path))
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(Path(json.__file__).read_text())  # text the run does not train on
    args = ["teacher", "--size", "tiny", "--data", corpus, *[a for s in TINY_RUN for a in ("--set", s)],
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "plain"), "--eval-every", "0"]) in (0, None)
    assert main([*args, "--out", str(tmp_path / "eval"), "--eval-data", str(heldout), "--eval-every", "2"]) in (0, None)
    w1, w2 = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "eval" / "model.safetensors")
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    rows = [json.loads(x) for x in (tmp_path / "eval" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/heldout_loss" in r] == [2, 3]  # every 2 steps and the last
    plain = [json.loads(x) for x in (tmp_path / "plain" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any("eval/heldout_loss" in r for r in plain)
    record = json.loads((tmp_path / "eval" / "teacher.json").read_text())["heldout"]
    assert record["step"] == 3 and record["data"] == [str(heldout)]
    assert record["perplexity"] == pytest.approx(math.exp(rows[-1]["eval/heldout_loss"]))
    assert 0 < record["loss"] < math.log(2048) + 3  # a real cross-entropy over the 2K vocabulary
    assert json.loads((tmp_path / "plain" / "teacher.json").read_text())["heldout"] is None


def test_a_finished_run_draws_its_curves(tmp_path):
    corpus = str(_corpus(tmp_path))
    train_teacher("tiny", tmp_path / "t", TINY_RUN, data=[corpus], device="cpu", eval_data=[corpus], eval_every=1,
                  eval_windows=2)
    png = tmp_path / "t" / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_failing_figure_warns_and_keeps_the_run(tmp_path, monkeypatch, capsys):
    import hybridize.distill.curves as curves

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(curves, "plot_curves", broken)
    result = train_teacher("tiny", tmp_path / "t", TINY_RUN, data=[str(_corpus(tmp_path))], device="cpu")
    assert result.finished and (tmp_path / "t" / "model.safetensors").is_file()
    assert "could not draw" in capsys.readouterr().out


def test_torchrun_refuses_a_batch_the_ranks_cannot_split(tmp_path):
    """batch 4 of micro-batches 4 cannot go over 2 ranks: a clear error naming the field, not zero micro-batches."""
    import subprocess
    import sys

    corpus = str(_corpus(tmp_path))
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "hybridize", "teacher", "--size", "tiny", "--data", corpus, "--out", str(tmp_path / "t"),
                          *[a for s in TINY_RUN for a in ("--set", s)], "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode != 0
    assert "train.batch_size=4 must be a multiple of micro_batch_size=4 x 2 process(es)" in run.stderr


def test_deterministic_kernels_are_on_inside_and_restored_after_an_error():
    from hybridize.distill.loop import deterministic_kernels

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(False, torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(KeyError):
        with deterministic_kernels(True, torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
            raise KeyError("stage failed")
    assert not torch.are_deterministic_algorithms_enabled()


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone(pids: set[int], seconds: float = 15) -> bool:
    deadline = time.time() + seconds
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


@PROC
def test_sigterm_or_ctrl_c_stops_a_run_and_its_episode_workers(tmp_path):
    """`hybridize teacher --data-workers 2` stopped by SIGTERM ends its step with a checkpoint, exits 143 and closes
    its episode workers; Ctrl-C (SIGINT to the process group, workers included) does the same and exits 130 (a
    worker killed mid-task left the parent waiting on its result forever: 2 of 3 tries hung)."""
    corpus = str(_corpus(tmp_path))
    out = tmp_path / "t"
    sets = [a for s in [*TINY_RUN, "train.tokens=307200", "train.save_every=1000"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "hybridize.cli", "teacher", "--size", "tiny", "--out", str(out), "--data", corpus,
           *sets, "--device", "cpu", "--data-workers", "2"]
    metrics = out / "run" / "metrics.jsonl"

    def start() -> tuple[subprocess.Popen, set[int]]:
        rows = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        # SIGINT as a terminal gives it: a test run started in the background (`pytest &` in a script) hands its
        # children SIGINT ignored, and Python keeps it ignored
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (
                metrics.is_file() and len(metrics.read_text().splitlines()) > rows and len(_children(proc.pid)) >= 2):
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) == 2, (proc.poll(), workers)
        return proc, workers

    def stopped(proc: subprocess.Popen) -> str:
        try:
            return proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)  # the CLI prints every thread's stack (dump_stacks_on_sigusr1)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            err = proc.communicate()[1]
            raise AssertionError(f"the run did not end within 60 s of its signal; its stacks:\n{err[-8000:]}") from None

    proc, workers = start()
    proc.send_signal(signal.SIGTERM)
    err = stopped(proc)
    assert proc.returncode == 143, err
    steps = len(metrics.read_text().splitlines())
    assert f"teacher: stopped by SIGTERM after step {steps} of 300" in err, err
    assert (out / "run" / "checkpoints" / f"step_{steps:07d}").is_dir()
    assert _gone(workers), "episode workers outlived a SIGTERM-stopped run"
    for _ in range(3):  # each resumes where the last stopped
        proc, workers = start()
        os.killpg(proc.pid, signal.SIGINT)
        err = stopped(proc)
        assert proc.returncode == 130, err
        said = re.search(r"teacher: stopped by Ctrl-C after step (\d+) of 300 with a checkpoint", err)
        assert said and int(said.group(1)) > steps, err
        steps = int(said.group(1))
        assert (out / "run" / "checkpoints" / f"step_{steps:07d}").is_dir()
        assert _gone(workers), "episode workers outlived Ctrl-C"
