"""Training a model from scratch: a BPE tokenizer and any model a `PretrainRecipe` names (a `HybridConfig` of any
mixers, ratio, placement, inter- or intra-layer; or the Qwen3 class of our teachers) on the corpus mixed with
synthetic retrieval episodes, with the shared training loop (checkpoints, resume, held-out evaluation, TensorBoard,
FSDP2 under torchrun). The result is an ordinary checkpoint: `AutoModelForCausalLM.from_pretrained(out)` loads it
(after `import hybridize` for a hybrid).

The loss is the mean next-token CE over the corpus rows plus the mean CE over the episodes' answer tokens: the
answers are a few tokens per row, and counted into one mean they would weigh almost nothing.

    pretrain(preset_recipe("small", mixer="gla", ratio="3:1"), "out/gla-3to1")   # run again to resume
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..data import corpus_info, iter_documents, tokenize_corpus
from ..data.sources import check_sources, spec_items
from ..data.synthetic import FillerTokens
from ..data.tokenizer import train_bpe_tokenizer
from ..distill.losses import chunked_ce
from ..distill.loop import TrainResult, last_eval, train, unsharded_copy
from ..distributed import barrier, is_main, rank0_first, rank_world, sharded
from ..provenance import device_name, provenance, weights_sha256
from .episodes import EpisodeMixer, MixedBatch
from .recipe import PretrainRecipe

EVAL_DEFAULT = "default"  # pretrain's eval_data: held-out text chosen from the training data


def mixed_loss(model, batch: MixedBatch, chunk: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Corpus CE + episode-answer CE of a causal LM whose logits are `lm_head(decoder(ids))`, in token chunks."""
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    head = model.get_output_embeddings()
    e = batch.episode_rows
    lm = chunked_ce(hidden[e:], head, batch.labels[e:], chunk)
    if e == 0:  # metrics stay on the device: the loop reads them once per step (no sync between forward and backward)
        return lm, {"lm_loss": lm.detach()}
    answers = chunked_ce(hidden[:e], head, batch.labels[:e], chunk)
    return lm + answers, {"lm_loss": lm.detach(), "answer_loss": answers.detach()}


def weight_decay_groups(model, lr: float) -> list[dict]:
    """Decay matrices only; norms, 1-d gates and decays (and the tied embedding, counted once) are the exceptions."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    return [{"name": "decay", "params": decay, "lr": lr}, {"name": "no_decay", "params": rest, "lr": lr,
                                                            "weight_decay": 0.0}]


def heldout_evaluator(model, tokenizer, data, seq_len: int, windows: int = 16) -> Callable[[], dict[str, float]]:
    """`() -> {"heldout_loss", "heldout_ppl"}`: the model's mean next-token loss on `windows` consecutive windows of
    `seq_len` tokens of `data` (text the model does not train on). Beside the training loss it shows memorisation:
    a model that repeats its corpus (the built-in one is small) drives the one down while the other climbs."""
    from ..metrics.perplexity import heldout_lm, heldout_windows

    ids = heldout_windows(tokenizer, data, seq_len, windows)
    return lambda: heldout_lm(model, ids)


def default_eval_data(data) -> str | None:
    """`builtin:heldout` when the model reads only the train parts of the built-in text (`builtin:train`,
    `stdlib-code:train`, which leaves out the held-out modules' sources too), so that it never saw that text; else
    None (no held-out text is known)."""
    items = set(spec_items(data)) if data is not None else set()
    return "builtin:heldout" if items and items <= {"builtin:train", "stdlib-code:train"} else None


def pretrain(recipe: PretrainRecipe, out: str | Path, *, tokenizer: str | Path | None = None,
             device: str | None = None, max_minutes: float | None = None, data_workers: int | None = None,
             eval_data=EVAL_DEFAULT, eval_every: int | None = None, eval_windows: int = 16,
             record_name: str = "pretrain.json", record_extra: dict | None = None,
             recipe_record: dict | None = None) -> TrainResult:
    """Train (or resume) `recipe`'s model; writes the checkpoint and `record_name` to `out` once the recipe's tokens
    are done (`out/run/`: metrics, TensorBoard, checkpoints, curves).

    `tokenizer`: a tokenizer folder to use (copied into the run; a sweep shares one between its cells); None: a BPE
    of `model.vocab_size` entries trained on the recipe's data (deterministic; kept so that a resumed run tokenizes the
    same way). `data_workers`: processes that draw the retrieval episodes ahead of the GPU (None: up to 8 on CUDA,
    where the GPU would otherwise wait for them, none on the CPU, where they would take cores from the training
    itself); the batches, and so the result, do not depend on it. `eval_data`: held-out text scored every
    `eval_every` steps (default: `builtin:heldout` when training on `builtin:train` and / or `stdlib-code:train`,
    else none; None: no evaluation), recorded in the metrics and the record; it does not change the weights.
    `eval_every` defaults to a twentieth of the run. `recipe_record` is what `out/run/recipe.json` holds and a resume
    must match (default: the recipe itself; `hybridize teacher` keeps its own recipe's layout)."""
    recipe.validate()
    if eval_data is EVAL_DEFAULT:
        eval_data = default_eval_data(recipe.data)
    check_sources(recipe.data)  # a missing file fails now, before anything is written
    if eval_data is not None:
        check_sources(eval_data)
    if tokenizer is not None and not (Path(tokenizer) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {tokenizer}")
    recipe_record = recipe.to_dict() if recipe_record is None else recipe_record
    out = Path(out)
    run_dir = out / "run"
    tok_dir = run_dir / "tokenizer"
    fresh = None  # a new run's tokenizer, checked against the recipe before anything is written
    if is_main() and not (tok_dir / "tokenizer.json").is_file():
        fresh = (AutoTokenizer.from_pretrained(tokenizer) if tokenizer is not None
                 else train_bpe_tokenizer(iter_documents(recipe.data), recipe.model["vocab_size"]))
        check_tokenizer(recipe, fresh)
    run_dir.mkdir(parents=True, exist_ok=True)

    def prepare() -> None:  # under torchrun rank 0 writes these; the others find them and check the recipe
        check_same_recipe(run_dir / "recipe.json", recipe_record)
        if not (tok_dir / "tokenizer.json").is_file():
            if tokenizer is not None:
                shutil.copytree(tokenizer, tok_dir, dirs_exist_ok=True)
            else:
                fresh.save_pretrained(tok_dir)

    rank0_first(prepare)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(recipe.seed)
    model = recipe.model_class()(recipe.model_config(tok))
    if not sharded():  # under torchrun FSDP moves each rank's shards to the device
        model.to(device)
    if recipe.train.checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    corpus = tokenize_corpus(recipe.data, tok)
    filler = FillerTokens.build(tok, iter_documents(recipe.data))
    rank, world = rank_world()
    if data_workers is None:
        data_workers = min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0
    loader = EpisodeMixer(recipe, corpus, tok, filler, rank, world, workers=data_workers)
    # under torchrun: FSDP2 with one all-gather group per decoder layer (the embedding, tied to the output head, and
    # the final norm are the root's)
    units = list(model.get_decoder().layers)
    evaluate = (None if eval_data is None
                else heldout_evaluator(model, tok, eval_data, model.config.max_position_embeddings, eval_windows))
    if eval_every is None:
        eval_every = max(1, recipe.train.steps // 20)
    t0 = time.perf_counter()
    name = record_name.removesuffix(".json")
    try:
        result = train(name=name, run_dir=run_dir, model=model,
                       param_groups=weight_decay_groups(model, recipe.train.lr),
                       loss_fn=lambda b: mixed_loss(model, b, recipe.train.kl_chunk_tokens), loader=loader,
                       recipe=recipe.train, device=device,
                       max_seconds=None if max_minutes is None else 60 * max_minutes, lr_option="train.lr",
                       evaluate=evaluate, eval_every=eval_every, units=units)
    finally:
        loader.close()
    if result.finished:
        model = unsharded_copy(model)  # under torchrun: gathered onto rank 0 (every rank takes part)
    if result.finished and is_main():
        if recipe.train.checkpointing and not sharded():
            getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
        model.save_pretrained(out)
        tok.save_pretrained(out)
        record = {**(record_extra or {}), "parameters": sum(p.numel() for p in model.parameters()),
                  "result": result.as_dict(), "recipe": recipe_record, "device": device_name(device),
                  "python": sys.version.split()[0], "torch": torch.__version__,
                  "data": recipe.data if recipe.data is not None else corpus_info(), "data_workers": data_workers,
                  "heldout": _last_eval(run_dir / "metrics.jsonl", eval_data),
                  "wall_seconds_last_run": time.perf_counter() - t0, **provenance()}
        record["weights_sha256"] = weights_sha256(out)  # what later runs check a teacher (or any model) against
        (out / record_name).write_text(json.dumps(record, indent=1))
    barrier()  # the other ranks return once the checkpoint is there
    return result


def check_tokenizer(recipe: PretrainRecipe, tok) -> None:
    """The tokenizer fits the model's vocabulary and every episode task's prompt fits the training length."""
    if len(tok) > recipe.model["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tok)} entries, more than model.vocab_size={recipe.model['vocab_size']}")
    EpisodeMixer(recipe, None, tok, FillerTokens.build(tok, iter_documents(recipe.data)))


def _last_eval(metrics: Path, eval_data) -> dict | None:
    """The last held-out evaluation of the run (its final step) with the training corpus loss of that step."""
    row = last_eval(metrics)
    if eval_data is None or row is None:
        return None
    return {"data": eval_data, "step": row["step"], "loss": row["eval/heldout_loss"],
            "perplexity": row["eval/heldout_ppl"], "train_corpus_loss_that_step": row.get("lm_loss")}


def differing_fields(path: Path, new: dict) -> list[str]:
    """The top-level fields in which the JSON file `path` (if there) differs from `new` as it would read back."""
    if not path.is_file():
        return []
    old, new = json.loads(path.read_text()), json.loads(json.dumps(new))  # as it reads back: tuples are lists
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_same_recipe(path: Path, new: dict) -> None:
    """Write `new` to `path`, or refuse when `path` holds another recipe (a resume must train what it started)."""
    if path.is_file():
        if diff := differing_fields(path, new):
            raise ValueError(f"{path.parent.parent} holds a model trained with another recipe (differs in {diff}); "
                             "use a new --out or the same options to resume")
    else:
        path.write_text(json.dumps(new, indent=1))


__all__ = ["EVAL_DEFAULT", "default_eval_data", "heldout_evaluator", "mixed_loss", "pretrain", "weight_decay_groups"]
