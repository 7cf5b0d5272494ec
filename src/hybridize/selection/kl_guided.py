"""KL-guided selection (KL-LS, arXiv 2512.20569, METHODS.md): restore attention in one layer, distill briefly, see how
far the KL falls.

Start from the all-linear student (every layer its stage-1 mixer). For each layer i, the stage-2 hybrid with attention
in layer i alone (teacher weights; HyPE as the recipe says, like the hybrid stage 2 will train) runs a short stage-2
distillation: KL(teacher || student) over the full vocabulary, every parameter trained at `select.kl_lr` (cosine to
`kl_min_lr`), `kl_tokens` tokens, the same data in the same order for every layer. Then its KL is measured on
`kl_eval_sequences` fixed sequences of `select.eval_data` (default: the conversion's data). The all-linear student
gets the same treatment, and layer i scores

    KL(all-linear) - KL(attention in layer i)       (how much restoring layer i lowers the KL; keep the k highest)

Each run works in `kl_guided/<all_linear|layer<i>>/` through the shared loop (checkpoints, resume, metrics.jsonl) and
leaves its result.json there, so a stopped selection resumes where it stopped. Under torchrun every rank runs it,
the student sharded by FSDP like stage 2's, and the KL is measured as the loop's final evaluation (every rank).
"""

from __future__ import annotations

import contextlib
import json

import torch
from tqdm.auto import tqdm

from ..convert import build_student
from ..data import PackedSequences, SequenceLoader, tokenize_corpus
from ..data.loader import Batch, collate
from ..distill.losses import chunked_kl
from ..distill.loop import train
from ..distill.recipe import StageRecipe
from ..distributed import barrier, is_main, rank_world, sharded
from .base import SelectionContext, SelectionResult, top_k


def eval_batches(ctx: SelectionContext) -> list[Batch]:
    """The first `kl_eval_sequences` windows of kl_seq_len tokens of the evaluation text, in micro-batches."""
    s = ctx.settings
    sequences = PackedSequences(tokenize_corpus(ctx.eval_data, ctx.tokenizer), s.kl_seq_len)
    if len(sequences) < s.kl_eval_sequences:
        raise ValueError(f"select.kl_eval_sequences={s.kl_eval_sequences}, but the evaluation text holds only "
                         f"{len(sequences)} sequences of select.kl_seq_len={s.kl_seq_len} tokens: give more "
                         "select.eval_data or ask for fewer")
    n, b = s.kl_eval_sequences, s.kl_micro_batch_size
    return [collate([sequences[i] for i in range(start, min(start + b, n))], ctx.recipe.document_masking)
            for start in range(0, n, b)]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def measure_kl(student, teacher, batches: list[Batch], device: torch.device, chunk_tokens: int) -> float:
    """Mean KL(teacher || student) per token over the batches."""
    student.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with _autocast(device):
            t = teacher.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
            h = student.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
            kl = chunked_kl(h, t, student.lm_head, teacher.lm_head, chunk_tokens)
        total += float(kl) * batch.num_tokens
        count += batch.num_tokens
    return total / count


def short_distill(ctx: SelectionContext, aligned, attention_layers: list[int], name: str, corpus,
                  batches: list[Batch]) -> dict:
    """Distill the hybrid with attention in `attention_layers` for select.kl_tokens tokens; its held-out KL."""
    s = ctx.settings
    run_dir = ctx.run_dir / "kl_guided" / name
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    torch.manual_seed(ctx.seed)  # the same fresh parts (attention output gate, ...) for every candidate
    student = build_student(ctx.teacher, ctx.student_config(attention_layers), aligned).float()
    if not sharded():  # under torchrun FSDP moves each rank's shards
        student = student.to(ctx.device)
    student.requires_grad_(True)
    recipe = StageRecipe(tokens=s.kl_tokens, seq_len=s.kl_seq_len, batch_size=s.kl_batch_size,
                         micro_batch_size=s.kl_micro_batch_size, lr=s.kl_lr, min_lr=s.kl_min_lr, schedule="cosine",
                         save_every=100, kl_chunk_tokens=ctx.recipe.distill.kl_chunk_tokens)
    rank, world = rank_world()
    if s.kl_batch_size % (s.kl_micro_batch_size * world):
        raise ValueError(f"select.kl_batch_size={s.kl_batch_size} must be a multiple of select.kl_micro_batch_size="
                         f"{s.kl_micro_batch_size} x {world} process(es)")
    loader = SequenceLoader(PackedSequences(corpus, s.kl_seq_len), s.kl_micro_batch_size, seed=ctx.seed,
                            rank=rank, world_size=world, document_masking=ctx.recipe.document_masking,
                            global_batch=s.kl_batch_size)
    teacher = ctx.running_teacher

    def loss_fn(batch):
        with torch.no_grad():
            t = teacher.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
        h = student.model(batch.input_ids, cu_seqlens=batch.cu_seqlens, use_cache=False).last_hidden_state
        return chunked_kl(h, t, student.lm_head, teacher.lm_head, recipe.kl_chunk_tokens), {}

    def evaluate():  # the loop runs it after the last step, on every rank (under FSDP inside the root's hooks)
        return {"kl": measure_kl(student, teacher, batches, ctx.device, recipe.kl_chunk_tokens)}

    try:
        result = train(name=f"kl_guided/{name}", run_dir=run_dir, model=student,
                       param_groups=[{"name": "all", "params": list(student.parameters()), "lr": s.kl_lr}],
                       loss_fn=loss_fn, loader=loader, recipe=recipe, device=ctx.device,
                       lr_option="select.kl_lr", evaluate=evaluate, eval_every=recipe.steps,
                       units=list(student.model.layers))
    finally:
        teacher.eval()
    row = {"attention_layers": attention_layers, "kl": result.final_eval["kl"],
           "train_loss_first": result.loss_first, "train_loss_last": result.loss_last, "train_tokens": result.tokens,
           "eval_tokens": sum(b.num_tokens for b in batches)}
    if is_main():
        done.write_text(json.dumps(row))
    barrier()
    del student
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def select(ctx: SelectionContext, k: int) -> SelectionResult:
    aligned = ctx.aligned("kl_guided")
    corpus = tokenize_corpus(ctx.data, ctx.tokenizer)
    batches = eval_batches(ctx)
    base = short_distill(ctx, aligned, [], "all_linear", corpus, batches)
    rows = [short_distill(ctx, aligned, [i], f"layer{i}", corpus, batches)
            for i in tqdm(range(ctx.num_layers), desc="kl_guided: restore one layer", unit="layer")]
    scores = [base["kl"] - r["kl"] for r in rows]
    tokens = sum(r["train_tokens"] + r["eval_tokens"] for r in [base, *rows])
    details = {"kl_all_linear": base["kl"], "kl": [r["kl"] for r in rows],
               "train_loss_last": [r["train_loss_last"] for r in rows]}
    return SelectionResult(top_k(scores, k), scores, tokens=tokens, details=details)
