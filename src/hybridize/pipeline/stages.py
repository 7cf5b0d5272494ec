"""The conversion pipeline (HALO, METHODS.md) as plain functions over one `Conversion`:

    conv = Conversion(teacher="path/to/Qwen3-1.7B", out="out/qwen3-hybrid", recipe=load_recipe("halo-qwen3-1.7b"))
    align(conv); select(conv); distill(conv); finetune(conv); export(conv)     # == convert(conv)

Every stage works in `out/stages/<stage>/` (resolved recipe, metrics.jsonl, TensorBoard logs, checkpoints, its
output model) and is resumable: run again, it continues from its last checkpoint, or returns at once when done.
`export` writes the final standalone checkpoint (config, safetensors, tokenizer, model card, the model's code) to
`out/`. A `Conversion` checks everything it can when it is made (data, teacher, layers or budget against the
teacher's depth, the student's config, the selection's prompts, a recipe already in `out/`) and writes nothing until
a stage starts, so a bad option costs seconds and leaves no folder behind.

Under torchrun every training stage (and the selectors that train: KL-guided, FlashMorph) runs on every rank with
the student wrapped by FSDP2 (`distill.loop.train`): one all-gather group per decoder block, the embeddings, final
norm and output head in the root's group. The whole teacher stays in host memory on each rank (weight transfer and
rank-0 work read it); the stages run `Conversion.frozen_teacher()`, a copy on the GPU that is either whole on every
rank or sharded per block (`teacher_placement`). Each stage's model is gathered to rank 0 and saved there.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..convert import Teacher, build_student, load_teacher, student_config
from ..data import PackedSequences, SequenceLoader, corpus_info, tokenize_corpus
from ..data.sources import check_sources
from ..distill.losses import chunked_ce, chunked_kl, chunked_kl_ce, layer_alignment_loss
from ..distill.loop import TrainResult, last_eval, train, unsharded_copy
from ..distill.recipe import STAGES, Recipe, StageRecipe, save_recipe
from ..distributed import barrier, is_main, rank0_first, rank_world, shard_frozen, sharded, single_process
from ..metrics.perplexity import heldout_lm, heldout_windows
from ..models import HybridForCausalLM
from ..provenance import check_weights, device_name, provenance
from ..selection import (GROUP_SELECTORS, TRAINING_SELECTORS, SelectionContext, check_groups_per_layer,
                         check_synthetic_data, resolve_budget, run_selection, uniform_groups, uniform_layers,
                         write_selection)
from .recipe import recipe_from_dict

TRAINING_STAGES = ("align", "distill", "finetune")
TEACHER_PLACEMENTS = ("auto", "replicated", "sharded")
SOURCE_TEACHER = "source-teacher.json"  # in `out`: the teacher a conversion folder belongs to (path, weights hash)


@dataclass
class Conversion:
    teacher: str | Path
    out: str | Path
    recipe: Recipe
    data: str | list[str] | None = None  # data spec (None: the recipe's, else the built-in corpus)
    device: str | torch.device | None = None  # None: CUDA when available
    # Held-out text scored during stages 1-3 (alignment MSE, KL to the teacher, CE) every `eval_every` steps (None:
    # a tenth of the stage) on up to `eval_windows` windows of the stage's length; None: no evaluation. It does not
    # change the weights, so it is not part of the recipe.
    eval_data: str | list[str] | None = None
    eval_every: int | None = None
    eval_windows: int = 8
    # Under torchrun, the frozen teacher on each GPU: "replicated" (whole on every rank: no all-gathers, the faster
    # one), "sharded" (per block over the ranks, as the student), or "auto": replicated when the memory plan says
    # it fits the GPU (`pipeline.plan.choose_teacher_placement`), else sharded. Ignored in one process. It does not
    # change the weights beyond summation order, so it is not part of the recipe.
    teacher_placement: str = "auto"
    # The teacher's weights hash (`provenance.weights_sha256`, or a prefix of >= 8 hex digits) this conversion must
    # use: another teacher is refused before any work. None: no check. Either way `out/source-teacher.json` records
    # the hash, every stage's done.json carries it, and a folder resumed with another teacher is refused.
    teacher_sha256: str | None = None
    teacher_hash: str | None = field(default=None, init=False)
    _teacher: Teacher | None = field(default=None, repr=False)
    _frozen: object = field(default=None, repr=False)
    _corpus: object = field(default=None, repr=False)
    _claimed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.teacher_placement not in TEACHER_PLACEMENTS:
            raise ValueError(f"teacher_placement={self.teacher_placement!r}; allowed: {list(TEACHER_PLACEMENTS)}")
        if self.data is None:
            self.data = self.recipe.data
        self.validate()

    def validate(self) -> None:
        """Everything that can be checked before a stage runs (a missing file or a layer the teacher does not have
        fails now, not after an hour of stage 1); writes nothing."""
        check_sources(self.data)
        if self.eval_data is not None:
            check_sources(self.eval_data)
        self._check_teacher()  # cheap, so first: the weights hash asked for, and the one of this folder
        self._check_recipe()
        teacher = self.load_teacher()  # the folder, its family, weights and tokenizer
        r = self.recipe
        L = teacher.model.config.num_hidden_layers
        groups = None
        if r.keep_layers is not None:
            layers = explicit_layers(r.keep_layers, L)
        elif r.fusion == "intra":  # the budget counts KV-head groups; the selector must choose groups
            if r.selector not in GROUP_SELECTORS:
                raise ValueError(f"selector {r.selector!r} chooses whole layers; with fusion=intra (KV-head groups) "
                                 f"use one of {sorted(GROUP_SELECTORS)}")
            G = teacher.model.config.num_key_value_heads
            k = resolve_budget(r.budget, L * G, unit="KV-head group")
            check_groups_per_layer(r.select.groups_per_layer, L, G, k)
            groups = uniform_groups(L, G, k)
            layers = [i for i, kept in enumerate(groups) if len(kept) == G]
        else:
            layers = uniform_layers(L, resolve_budget(r.budget, L))  # a budget the teacher's depth allows
        self.student_config(layers, groups)  # the student's config checks mixer, HyPE and sizes against the teacher's
        check_synthetic_data(r, teacher.tokenizer, self.data)  # the selection's prompts fit their lengths

    def _check_recipe(self) -> None:
        """An output folder belongs to one recipe: resuming with different numbers would mix two runs. The message
        names the fields that differ."""
        path = self.out / "recipe.yaml"
        if not path.is_file():
            return
        import yaml

        old = _flat(recipe_from_dict(yaml.safe_load(path.read_text())).to_dict())
        new = _flat(self.recipe.to_dict())
        diff = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        if diff:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
            more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
            raise ValueError(f"{self.out} was made with a different recipe ({detail}{more}); use a new --out, or the "
                             "same options to resume")

    def claim(self) -> None:
        """Write recipe.yaml and source-teacher.json into `out/` when the first stage starts (rank 0 under torchrun;
        the others then check theirs against it)."""
        if not self._claimed:
            rank0_first(self._write_recipe)
            self._claimed = True

    def _write_recipe(self) -> None:
        self._check_recipe()
        path = self.out / "recipe.yaml"
        if not path.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            save_recipe(self.recipe, path)
        # the teacher's hash, unless one is recorded: a folder whose teacher was no local folder (a hub id, a mistyped
        # path) has none, and takes the hash of the teacher it is resumed with
        if self._recorded_teacher().get("weights_sha256") is None:
            (self.out / SOURCE_TEACHER).write_text(
                json.dumps({"path": str(self.teacher), "weights_sha256": self.teacher_hash}, indent=1) + "\n")

    def _check_teacher(self) -> None:
        """An output folder belongs to one teacher: the hash of its weights (and `teacher_sha256`, when given) must
        match the one source-teacher.json recorded; `claim` records it. Writes nothing."""
        local = Path(self.teacher).is_dir()
        sha = check_weights(self.teacher, self.teacher_sha256) if local or self.teacher_sha256 else None
        recorded = self._recorded_teacher().get("weights_sha256")
        if recorded is not None and recorded != sha:
            raise ValueError(f"{self.out} was converted from a teacher with weights sha256 {recorded} "
                             f"({self._recorded_teacher().get('path')}); {self.teacher} has {sha}: use a new --out, or "
                             "that teacher")
        self.teacher_hash = sha

    def _recorded_teacher(self) -> dict:
        path = self.out / SOURCE_TEACHER
        return json.loads(path.read_text()) if path.is_file() else {}

    def stage_dir(self, stage: str) -> Path:
        return self.out / "stages" / stage

    def load_teacher(self) -> Teacher:
        """The whole teacher (frozen): on the device in one process; in host memory under torchrun, where the GPUs
        hold `frozen_teacher()` instead and this one feeds the weight transfer and rank 0's own work."""
        if self._teacher is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self._teacher = load_teacher(self.teacher, dtype=dtype, device="cpu" if sharded() else self.device)
            for p in self._teacher.model.parameters():
                p.requires_grad_(False)
        return self._teacher

    def frozen_teacher(self) -> HybridForCausalLM:
        """The teacher the training stages run forward: `load_teacher().model` in one process; under torchrun a copy
        on this rank's device, whole or sharded per block (`teacher_placement`), made once. Sharded, its decoder
        (`.model`) is the FSDP root: call it, or the whole model, never a block alone; the embeddings, final norm and
        output head are whole on every rank (the output head runs again in the loss's backward, outside any hook)."""
        if not sharded():
            return self.load_teacher().model
        if self._frozen is None:
            model = copy.deepcopy(self.load_teacher().model)
            if self.resolved_teacher_placement() == "replicated":
                model.to(self.device)
            else:
                decoder = model.model
                whole = [decoder.embed_tokens, decoder.norm, model.lm_head]
                if decoder.rotary_emb is not None:
                    whole.append(decoder.rotary_emb)
                shard_frozen(decoder, decoder.layers, whole, self.device)
            self._frozen = model.eval().requires_grad_(False)
        return self._frozen

    def resolved_teacher_placement(self) -> str:
        """"replicated" or "sharded" (what `teacher_placement="auto"` chose, see there)."""
        if self.teacher_placement != "auto":
            return self.teacher_placement
        from .plan import choose_teacher_placement

        return choose_teacher_placement(self)

    @contextlib.contextmanager
    def teacher_on_device(self):
        """`load_teacher()` on the device for the block: work rank 0 does alone under torchrun (a selection), where
        the whole teacher otherwise waits in host memory. In one process it is there already."""
        teacher = self.load_teacher()
        if next(teacher.model.parameters()).device.type == self.device.type:
            yield teacher
            return
        teacher.model.to(self.device)
        try:
            yield teacher
        finally:
            teacher.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def to_device(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model about to be trained, on the device; under torchrun it stays in host memory and FSDP moves each
        rank's shards (the whole model on one GPU is what sharding avoids)."""
        return model if sharded() else model.to(self.device)

    def loader(self, stage: str, stage_recipe: StageRecipe) -> SequenceLoader:
        if self._corpus is None:
            self._corpus = tokenize_corpus(self.data, self.load_teacher().tokenizer)
        rank, world = rank_world()
        sequences = PackedSequences(self._corpus, stage_recipe.seq_len)
        # global_batch: the position resumes on another number of ranks (`train` checks the batch splits over them)
        global_batch = stage_recipe.batch_size if stage_recipe.batch_size % (stage_recipe.micro_batch_size * world) == 0 \
            else None
        return SequenceLoader(sequences, stage_recipe.micro_batch_size, seed=self.recipe.seed + STAGES.index(stage),
                              rank=rank, world_size=world, document_masking=self.recipe.document_masking,
                              global_batch=global_batch)

    def seed(self, stage: str) -> None:
        """Seed the fresh parts a stage creates (gates, decays, output norms) so a rerun builds the same model."""
        torch.manual_seed(self.recipe.seed + STAGES.index(stage))

    def student_config(self, attention_layers: list[int], kv_groups: list[list[int]] | None = None):
        """The student's config: attention in `attention_layers`, or (fusion=intra) in each layer's `kv_groups`."""
        r = self.recipe
        return student_config(self.load_teacher().model.config, attention_layers, r.mixer, hype=r.hype,
                              hype_a=r.hype_a, conv_size=r.conv_size, kv_groups=kv_groups,
                              intra_fusion=r.intra_fusion, intra_branch_norm=r.intra_branch_norm)

    def done(self, stage: str) -> dict | None:
        path = self.stage_dir(stage) / "done.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def skip(self, stage: str) -> dict | None:
        """`done(stage)`, saying on the console that the stage is skipped when it finished in an earlier run."""
        done = self.done(stage)
        if done is not None:
            detail = f"; {self.kept(done)}" if stage == "select" else ""
            _say(f"{stage}: finished in an earlier run ({self.stage_dir(stage) / 'done.json'}), skipped{detail}")
        return done

    def kept(self, selection: dict) -> str:
        """Which layers keep attention, in words, from a selection record."""
        config = self.load_teacher().model.config
        L, layers = config.num_hidden_layers, selection["layers"]
        if selection.get("groups") is not None:  # intra-layer: KV-head groups, per layer
            G, groups = config.num_key_value_heads, selection["groups"]
            return (f"{sum(map(len, groups))} of {L * G} KV-head groups keep attention ({selection['selector']}, "
                    f"budget {selection['budget']}), per layer {' '.join(str(len(g)) for g in groups)} of {G}; the "
                    f"other heads become {self.recipe.mixer} heads")
        return (f"{'layers' if len(layers) > 1 else 'layer'} {', '.join(map(str, layers))} of 0-{L - 1} "
                f"{'keep' if len(layers) > 1 else 'keeps'} attention "
                f"({selection['selector']}, budget {selection['budget']}); the other {L - len(layers)} become "
                f"{self.recipe.mixer} mixers")

    def mark_done(self, stage: str, record: dict) -> dict:
        """Write the stage's done.json (rank 0 under torchrun; every rank returns once it is there)."""
        record = {"stage": stage, "device": device_name(self.device), "teacher_sha256": self.teacher_hash, **record,
                  **provenance()}
        if is_main():
            path = self.stage_dir(stage) / "done.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)
        barrier()
        return record


def _say(message: str) -> None:
    if is_main():
        print(f"hybridize: {message}", flush=True)


def _flat(d: dict, prefix: str = "") -> dict:
    """{"align": {"lr": 1}} -> {"align.lr": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def explicit_layers(keep_layers: list[int], num_layers: int) -> list[int]:
    """`keep_layers` sorted, checked against the teacher's depth."""
    layers = sorted(set(keep_layers))
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"keep_layers {keep_layers} must be distinct layer indices in 0..{num_layers - 1}")
    return layers


def _train_record(result: TrainResult, recipe: StageRecipe, data, run_dir: Path | None = None,
                  eval_data=None) -> dict:
    record = {"result": result.as_dict(), "recipe": recipe.__dict__ | {"betas": list(recipe.betas)},
              "data": data if data is not None else corpus_info()}
    if eval_data is not None and run_dir is not None and (row := last_eval(run_dir / "metrics.jsonl")) is not None:
        record["heldout"] = {"data": eval_data, "step": row["step"],
                             **{k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}}
    return record


def _evaluation(conv: Conversion, r: StageRecipe, fn) -> dict:
    """train()'s evaluate / eval_every arguments for a stage: `fn(ids) -> {name: value}` on the held-out windows
    (B, seq_len + 1), on the conversion's device; none without eval_data."""
    if conv.eval_data is None:
        return {}
    ids = heldout_windows(conv.load_teacher().tokenizer, conv.eval_data, r.seq_len, conv.eval_windows).to(conv.device)
    every = conv.eval_every if conv.eval_every is not None else max(1, r.steps // 10)
    return {"evaluate": lambda: fn(ids), "eval_every": every}


def _releases_memory(stage):
    """A training stage's student, optimizer and saved tensors hold reference cycles, so they outlive the stage until
    the garbage collector runs; in one process (`convert` runs every stage) the next stage would start with them still
    on the GPU (a Qwen3-1.7B finetune peaked at 71 GiB instead of its planned 38: results/plan/). Collected on return."""
    @functools.wraps(stage)
    def run(conv: Conversion) -> dict:
        try:
            return stage(conv)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return run


@_releases_memory
def align(conv: Conversion) -> dict:
    """Stage 1: every layer's linear mixer learns its teacher attention's output (MSE), teacher-forced. The result
    is an all-linear model (`stages/align/model`) whose layer i holds the aligned mixer of layer i."""
    conv.claim()
    if (done := conv.skip("align")) is not None:
        return done
    teacher = conv.load_teacher()
    run_dir = conv.stage_dir("align")
    conv.seed("align")
    model = conv.to_device(build_student(teacher.model, conv.student_config([])).float())
    model.requires_grad_(False)
    mixers = torch.nn.ModuleList(layer.mixer for layer in model.model.layers)
    mixers.requires_grad_(True)
    frozen = conv.frozen_teacher()

    r = conv.recipe.align

    def loss_fn(batch):
        loss, per_layer = layer_alignment_loss(frozen, mixers, batch.input_ids, batch.cu_seqlens, r.checkpointing)
        return loss, {f"mse/layer{i}": v for i, v in enumerate(per_layer)}

    def heldout(ids):
        return {"heldout_mse": float(layer_alignment_loss(frozen, mixers, ids[:, :-1], None)[0])}

    # under torchrun: each mixer its own FSDP group (they run one by one, outside their blocks); the frozen rest of
    # each block and the embeddings and head (never run here) stay sharded
    decoder = model.model
    units = [*mixers, *decoder.layers, [decoder.embed_tokens, decoder.norm, model.lm_head]]
    result = train(name="align", run_dir=run_dir, model=model,
                   param_groups=[{"name": "mixers", "params": list(mixers.parameters()), "lr": r.lr}],
                   loss_fn=loss_fn, loader=conv.loader("align", r), recipe=r, device=conv.device, units=units,
                   **_evaluation(conv, r, heldout))
    _save_stage_model(model, run_dir / "model")
    return conv.mark_done("align", _train_record(result, r, conv.data, run_dir, conv.eval_data))


@_releases_memory
def select(conv: Conversion) -> dict:
    """Stage between 1 and 2: which layers keep attention. Explicit `keep_layers`, or the recipe's selector
    (hybridize.selection.SELECTORS: uniform, random, halo, kl_guided, flashmorph) under its budget. Writes
    selection.json and scores.png into stages/select/."""
    conv.claim()
    if (done := conv.skip("select")) is not None:
        return done
    r = conv.recipe
    if sharded() and r.keep_layers is None and r.selector in TRAINING_SELECTORS:  # they train under FSDP, every rank
        return _select(conv)
    if not is_main():  # under torchrun rank 0 selects alone (these selectors are not data parallel); wait for it
        barrier()
        return conv.done("select")
    with single_process(), conv.teacher_on_device():
        record = _select(conv)
    _say(conv.kept(record))
    barrier()
    return record


def _select(conv: Conversion) -> dict:
    teacher = conv.load_teacher()
    L = teacher.model.config.num_hidden_layers
    r = conv.recipe
    run_dir = conv.stage_dir("select")
    if r.keep_layers is not None:
        layers = explicit_layers(r.keep_layers, L)
        record = {"selector": "explicit", "budget": len(layers), "layers": layers,
                  "scores": [1.0 if i in layers else 0.0 for i in range(L)], "tokens": 0, "seconds": 0.0,
                  "device": device_name(conv.device), "details": {}}
        if is_main():
            write_selection(run_dir, record)
    else:
        aligned = conv.stage_dir("align") / "model" if conv.done("align") else None
        ctx = SelectionContext(teacher=teacher.model, tokenizer=teacher.tokenizer, recipe=r, run_dir=run_dir,
                               device=conv.device, data=conv.data, aligned_dir=aligned,
                               frozen_teacher=conv.frozen_teacher() if sharded() else None)
        conv.seed("select")
        record = run_selection(r.selector, ctx, r.budget)
    return conv.mark_done("select", {k: v for k, v in record.items() if k != "details"})


def _selection(conv: Conversion) -> dict:
    return conv.done("select") or select(conv)


def _attention_layers(conv: Conversion) -> list[int]:
    return _selection(conv)["layers"]


def assemble(conv: Conversion) -> HybridForCausalLM:
    """The hybrid before stage 2: teacher weights, attention in the selected layers (or KV-head groups), the aligned
    mixers elsewhere (or, without stage 1, mixers transferred from the teacher's attention)."""
    aligned_dir = conv.stage_dir("align") / "model"
    aligned = HybridForCausalLM.from_pretrained(aligned_dir) if aligned_dir.is_dir() else None
    record = _selection(conv)
    return build_student(conv.load_teacher().model, conv.student_config(record["layers"], record.get("groups")),
                         aligned)


def _new_parameter(name: str, config) -> bool:
    """Parts that did not exist in the teacher: linear mixers (whole layers, or an intra-layer block's linear
    branch), the attention output gates, and an intra-layer block's branch norm and fusion gate."""
    parts = name.split(".")
    if "mixer" not in parts:
        return False
    layer = int(parts[parts.index("layers") + 1])
    return (config.layer_types[layer] == "linear_attention" or "linear" in parts
            or parts[-2] in ("g_proj", "branch_norm", "z_proj"))


@_releases_memory
def distill(conv: Conversion) -> dict:
    """Stage 2: the whole hybrid learns KL(teacher || student) over the full vocabulary (no CE term), with one peak
    LR for the new parts and one for what came from the teacher."""
    conv.claim()
    if (done := conv.skip("distill")) is not None:
        return done
    teacher = conv.frozen_teacher()
    run_dir = conv.stage_dir("distill")
    _attention_layers(conv)  # a selection still to run seeds itself: before this stage's seed, not between it and
    conv.seed("distill")     # the fresh parts it seeds (under torchrun rank 0 selects alone: the ranks would differ)
    student = conv.to_device(assemble(conv).float())
    r = conv.recipe.distill
    _prepare(student, r)
    new = [p for n, p in student.named_parameters() if _new_parameter(n, student.config)]
    old = [p for n, p in student.named_parameters() if not _new_parameter(n, student.config)]
    groups = [{"name": "new", "params": new, "lr": r.lr},
              {"name": "pretrained", "params": old, "lr": r.lr_pretrained if r.lr_pretrained is not None else r.lr}]

    def loss_fn(batch):
        with torch.no_grad():
            t_hidden = teacher.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
        s_hidden = student.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
        return chunked_kl(s_hidden, t_hidden, student.lm_head, teacher.lm_head, r.kl_chunk_tokens), {}

    def heldout(ids):
        x = ids[:, :-1]
        t_hidden = teacher.model(x, use_cache=False).last_hidden_state
        s_hidden = student.model(x, use_cache=False).last_hidden_state
        kl = chunked_kl(s_hidden, t_hidden, student.lm_head, teacher.lm_head, r.kl_chunk_tokens)
        return {"heldout_kl": float(kl)}

    result = train(name="distill", run_dir=run_dir, model=student, param_groups=groups, loss_fn=loss_fn,
                   loader=conv.loader("distill", r), recipe=r, device=conv.device, units=list(student.model.layers),
                   **_evaluation(conv, r, heldout))
    _save_stage_model(student, run_dir / "model")
    return conv.mark_done("distill", _train_record(result, r, conv.data, run_dir, conv.eval_data))


@_releases_memory
def finetune(conv: Conversion) -> dict:
    """Stage 3: next-token CE at long sequence length, no teacher (`finetune.kl_weight` > 0: mixed with
    KL(teacher || student), the teacher then runs as in distill)."""
    conv.claim()
    if (done := conv.skip("finetune")) is not None:
        return done
    run_dir = conv.stage_dir("finetune")
    previous = conv.stage_dir("distill") / "model"
    if not previous.is_dir():
        _attention_layers(conv)  # as in distill: any selection before the seed
    conv.seed("finetune")
    student = HybridForCausalLM.from_pretrained(previous) if previous.is_dir() else assemble(conv)
    student = conv.to_device(student.float())
    r = conv.recipe.finetune
    _prepare(student, r)
    w = float(r.kl_weight)
    teacher = conv.frozen_teacher() if w > 0 else None

    def loss_fn(batch):
        hidden = student.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
        if teacher is None:
            return chunked_ce(hidden, student.lm_head, batch.labels, r.kl_chunk_tokens), {}
        with torch.no_grad():
            t_hidden = teacher.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
        if w == 1:
            return chunked_kl(hidden, t_hidden, student.lm_head, teacher.lm_head, r.kl_chunk_tokens), {}
        kl, ce = chunked_kl_ce(hidden, t_hidden, student.lm_head, teacher.lm_head, batch.labels, r.kl_chunk_tokens)
        return (1 - w) * ce + w * kl, {"ce": ce.detach(), "kl": kl.detach()}

    result = train(name="finetune", run_dir=run_dir, model=student,
                   param_groups=[{"name": "all", "params": list(student.parameters()), "lr": r.lr}],
                   loss_fn=loss_fn, loader=conv.loader("finetune", r), recipe=r, device=conv.device,
                   units=list(student.model.layers), **_evaluation(conv, r, lambda ids: heldout_lm(student, ids)))
    _save_stage_model(student, run_dir / "model")
    return conv.mark_done("finetune", _train_record(result, r, conv.data, run_dir, conv.eval_data))


def _prepare(student: HybridForCausalLM, r: StageRecipe) -> None:
    student.requires_grad_(True)
    if r.checkpointing:
        getattr(student, "activation_checkpointing_enable", student.gradient_checkpointing_enable)()
    if r.compile:
        for layer in student.model.layers:
            layer.compile()


def _save_stage_model(model: HybridForCausalLM, path: Path) -> None:
    """A stage's trained model to `path` (rank 0 writes it; under torchrun every rank gathers its shards first)."""
    whole = unsharded_copy(model)
    if is_main():
        _save(whole, path)
    barrier()


def _save(model: HybridForCausalLM, path: Path) -> None:
    on = (model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing")  # transformers >= 5.x
          else getattr(model, "is_gradient_checkpointing", False))
    if on:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    model.save_pretrained(path)


RUNNERS = {"align": align, "select": select, "distill": distill, "finetune": finetune}


def convert(conv: Conversion, stages: list[str] | None = None) -> Path:
    """Run the listed stages in order (all by default; [] = weight transfer alone) and export the result."""
    stages = list(STAGES) if stages is None else stages
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; allowed: {list(STAGES)} or none")
    for stage in STAGES:
        if stage in stages:
            RUNNERS[stage](conv)
    return export(conv, stages)


def export(conv: Conversion, stages: list[str] | None = None) -> Path:
    """Write the newest model of the pipeline to `out/` as a standalone HF checkpoint with tokenizer and model card
    (rank 0 under torchrun; every rank returns once it is written). `stages`: the stages asked for (default all):
    the model is the newest of those that finished, so `convert --stages align,select,distill` exports the distilled
    model even where an earlier run of the folder finetuned it; none of distill / finetune: the assembled model."""
    conv.claim()
    asked = STAGES if stages is None else stages
    newest = next((stage for stage in ("finetune", "distill")
                   if stage in asked and (conv.stage_dir(stage) / "model").is_dir() and conv.done(stage)), None)
    if newest is None:  # the model is assembled: the selection first, on every rank (under torchrun it waits for one)
        _attention_layers(conv)
    if is_main():
        if newest is not None:
            model = HybridForCausalLM.from_pretrained(conv.stage_dir(newest) / "model")
        else:
            model = assemble(conv)
        model.to(conv.load_teacher().saved_dtype).save_pretrained(conv.out)
        conv.load_teacher().tokenizer.save_pretrained(conv.out)
        from ..distill.card import write_model_card

        write_model_card(conv, model, through=newest or "select")
    barrier()
    return conv.out
