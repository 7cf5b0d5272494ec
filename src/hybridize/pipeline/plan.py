"""A conversion's memory plan: the bytes each GPU holds at its peak in each stage, from shapes alone (no weights, no
GPU), so that a conversion that cannot fit is refused before any work.

    plan = memory_plan(teacher_config("qwen3-8b"), load_recipe("halo-qwen3-1.7b"), world=8)
    print(plan.table())             # `hybridize convert ... --plan`

Per stage and GPU it counts six terms; the peak is their sum (each at its own largest, which they reach together at
the start of backward: the saved activations, the logits chunk being recomputed and the gradients and optimizer
state of the step). Parameter counts are exact (the models are built on the meta device); activations are counted
per token from the shapes, with the assumptions written beside each. S is the shard group size (the GPUs that
share one copy of a sharded model: a node under HSDP), 1 in one process; "compute" is bf16 on CUDA, fp32 on the CPU.

* teacher: the frozen teacher's weights (compute dtype). One process or `replicated`: all of them. `sharded`: 1/S of
  the blocks, two whole blocks (the one running and the one FSDP prefetches), and the embeddings, final norm and
  output head whole (they stay whole on every rank: `Conversion.frozen_teacher`).
* student: the trained model's weights: fp32 master weights (1/S under FSDP). In one process on CUDA, autocast also
  keeps a bf16 copy of every trained matrix a forward reads until the forward ends (its weight cache). Under FSDP:
  two gathered bf16 blocks, the root's fp32 group (embeddings, final norm, head) gathered from forward to the end of
  backward, and autocast's bf16 copy of the output head.
* gradients: fp32, of the trained parameters only (1/S under FSDP, plus the gathered root's and two blocks' full
  gradients before their reduce-scatter, bf16 and their fp32 copy).
* optimizer: AdamW's two fp32 moments of the trained parameters (1/S under FSDP).
* activations: what one micro-batch saves for backward. With activation checkpointing, each block's fp32 input and
  one block recomputed whole; without, every block whole (`_block_bytes`: per token). The teacher's outputs the
  loss reads, and one teacher block's transient forward, are here too.
* logits: one chunk of `kl_chunk_tokens` tokens x vocabulary being recomputed in backward (`_LOGIT_BYTES`: fp32
  log-probabilities of student and teacher, their gradients and temporaries), the chunked losses' largest tensor.

Not counted: the CUDA context and the allocator's fragmentation (`fits` leaves `HEADROOM` of the device free for
them), data loader buffers, NCCL's buffers, torch.compile's workspaces.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..convert import student_config
from ..convert.teacher import teacher_config as hf_teacher_config
from ..distill.recipe import STAGES, Recipe, StageRecipe
from ..models import HybridConfig, HybridForCausalLM
from ..models.shapes import SHAPES, shape_config

GiB = 2**30
HEADROOM = 0.9  # a plan fits when its peak is at most this share of the device's memory (context, fragmentation)

# Bytes per element of one (tokens x vocabulary) logits chunk at its largest, (in forward, in its backward recompute),
# measured on an H100 for `chunked_kl` / `chunked_ce` (bf16 autocast; the head's gradient, counted with the
# gradients, taken out): distillation's forward holds ~5 fp32 tensors of the chunk at once (both log-softmaxes,
# the KL's temporaries), its backward the two log-probabilities, their gradients and temporaries; cross-entropy
# one fp32 log-softmax in forward and about 3.5 fp32 tensors in backward. The CPU's are counted, not measured.
_LOGIT_BYTES = {("kl", "cuda"): (20, 18.4), ("kl", "cpu"): (20, 20), ("ce", "cuda"): (8, 14.3), ("ce", "cpu"): (12, 16)}


def load_teacher_config(teacher: str | Path) -> tuple[str, HybridConfig]:
    """(name, config) of a teacher given as a built-in shape (`qwen3-8b`, see `models.shapes`), a checkpoint folder
    (its config.json only: no weights are read) or a .json file of `HybridConfig` fields."""
    text, path = str(teacher), Path(teacher).expanduser()
    if text in SHAPES:
        return text, HybridConfig(**shape_config(text))
    if path.is_dir() and (path / "config.json").is_file():
        from transformers import AutoConfig

        return path.name, hf_teacher_config(AutoConfig.from_pretrained(path))
    if path.is_file() and path.suffix == ".json":
        fields = json.loads(path.read_text())
        if not isinstance(fields, dict):
            raise ValueError(f"--teacher {teacher}: expected a JSON object of config fields")
        return path.stem, HybridConfig(**fields)
    raise ValueError(f"--teacher {teacher!r} for a plan must be a built-in shape {sorted(SHAPES)}, a checkpoint folder "
                     "with config.json or a .json file of config fields")


@dataclass
class Counts:
    """Parameter counts of one model, from its meta-device build (tied weights once)."""
    total: int
    blocks: list[int]  # per decoder block
    mixers: list[int]  # per block, its mixer alone
    root: int  # embeddings, final norm, output head: what is not in a block
    head: int  # the output head's matrix
    matrices: int  # what a forward's matmuls read (autocast's bf16 copies): 2-D weights but an untied embedding

    @staticmethod
    def of(config: HybridConfig) -> Counts:
        with torch.device("meta"):
            model = HybridForCausalLM(config)
        blocks = [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]
        mixers = [sum(p.numel() for p in layer.mixer.parameters()) for layer in model.model.layers]
        total = sum(p.numel() for p in model.parameters())
        untied_embedding = 0 if config.tie_word_embeddings else model.model.embed_tokens.weight.numel()
        matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2) - untied_embedding
        return Counts(total, blocks, mixers, total - sum(blocks), model.lm_head.weight.numel(), matrices)


@dataclass
class StagePlan:
    stage: str
    tokens: int  # tokens of one micro-batch on one GPU
    teacher: int  # bytes per GPU, each term as the module docstring says
    student: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def peak(self) -> int:
        return self.teacher + self.student + self.gradients + self.optimizer + self.activations + self.logits


@dataclass
class MemoryPlan:
    teacher: str
    recipe: str
    world: int  # GPUs (processes)
    shard: int  # GPUs that share one copy of a sharded model
    device: str  # "cuda" (bf16 compute) or "cpu" (fp32)
    teacher_placement: str  # "replicated" or "sharded" ("whole" in one process)
    device_memory: int | None  # bytes of one GPU, None: unknown (no fit check)
    stages: list[StagePlan] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max((s.peak for s in self.stages), default=0)

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.peak <= HEADROOM * self.device_memory

    def over(self) -> list[StagePlan]:
        """The stages whose peak does not fit (empty without a device memory)."""
        if self.device_memory is None:
            return []
        return [s for s in self.stages if s.peak > HEADROOM * self.device_memory]

    def as_dict(self) -> dict:
        return {**asdict(self), "peak": self.peak, "fits": self.fits,
                "stages": [{**asdict(s), "peak": s.peak} for s in self.stages]}

    def table(self) -> str:
        """The plan as a text table in GiB per GPU."""
        mem = "unknown" if self.device_memory is None else f"{self.device_memory / GiB:.0f} GiB"
        head = (f"memory plan: teacher {self.teacher}, recipe {self.recipe}, {self.world} GPU(s) "
                f"(shard groups of {self.shard}), {self.device} ({'bf16' if self.device == 'cuda' else 'fp32'} "
                f"compute), teacher {self.teacher_placement}, device memory {mem}; GiB per GPU")
        cols = ("stage", "tokens", "teacher", "student", "grads", "optimizer", "activations", "logits", "peak")
        rows = [[s.stage, f"{s.tokens:,}", *(f"{getattr(s, k) / GiB:.1f}" for k in
                 ("teacher", "student", "gradients", "optimizer", "activations", "logits")), f"{s.peak / GiB:.1f}"]
                for s in self.stages]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        lines = [head, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        if self.fits is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"peak {self.peak / GiB:.1f} GiB {verdict} in {HEADROOM:.0%} of {mem}")
        return "\n".join(lines)


# Bytes per token that a trained block saves for its backward, fitted to `torch.cuda.memory_allocated` of the
# Qwen3-1.7B shape on an H100 (bf16 autocast over fp32 weights, fla 0.6's Lightning kernels, 16 x 512 packed tokens;
# benchmarks/plan_vs_measured.py keeps the check): the norms, the residual and the SwiGLU MLP 26.5 per hidden unit +
# 8 per MLP unit (its four bf16 intermediates); a Lightning mixer 34.6 per query-head unit (heads x head dim) fed a
# bf16 input, + 8 per hidden unit for the bf16 copies of an fp32 input its four projections make; an attention mixer
# 26 per query or key/value unit (with HyPE's output gate). GatedDeltaNet and GLA are taken as Lightning. fp32 (the
# CPU) is taken as 1.6x: half the tensors are fp32 anyway.
_NORMS_MLP = (26.5, 8.0)  # (per hidden unit, per MLP unit)
_LINEAR_MIXER, _LINEAR_CASTS, _ATTENTION_MIXER = 34.6, 8.0, 26.0
_FP32_FACTOR = 1.6


def _mixer_bytes(config: HybridConfig, layer: int, compute: int, fp32_input: bool = True) -> float:
    """Bytes per token a trained mixer saves (see above); `fp32_input`: the casts of an fp32 residual input."""
    kind = config.layer_types[layer]
    if kind in ("hybrid", "hybrid_sliding"):  # an intra-layer block: its attention heads and its linear heads
        from ..mixers.intra import branch_configs

        attention, linear = branch_configs(config, layer)
        q = linear.linear_num_heads * config.linear_head_dim
        out = (_ATTENTION_MIXER * (attention.num_attention_heads + attention.num_key_value_heads) * config.head_dim
               + _LINEAR_MIXER * q + (_LINEAR_CASTS * config.hidden_size if fp32_input else 0))
    elif kind == "linear_attention":
        q = config.linear_num_heads * config.linear_head_dim
        out = _LINEAR_MIXER * q + (_LINEAR_CASTS * config.hidden_size if fp32_input else 0)
    else:
        out = _ATTENTION_MIXER * (config.num_attention_heads + config.num_key_value_heads) * config.head_dim
    return out * (1 if compute == 2 else _FP32_FACTOR)


def _block_bytes(config: HybridConfig, layer: int, compute: int) -> float:
    """Bytes per token one trained block saves for its backward (its whole forward, no checkpointing)."""
    norms_mlp = _NORMS_MLP[0] * config.hidden_size + _NORMS_MLP[1] * config.intermediate_size
    return norms_mlp * (1 if compute == 2 else _FP32_FACTOR) + _mixer_bytes(config, layer, compute)


def _teacher_bytes(counts: Counts, shard: int, placement: str, compute: int) -> int:
    if placement != "sharded":
        return counts.total * compute
    blocks = sum(counts.blocks)
    return (math.ceil(blocks / shard) + 2 * max(counts.blocks) + counts.root) * compute


@dataclass
class _Memory:
    """One stage's bytes by kind, and at which moments of a step each is there (see `_peak`)."""
    teacher: int  # always
    weights: int  # always: master weights (1/S under FSDP) and what FSDP holds gathered through the step
    optimizer: int  # always (after the first step)
    cache: int  # in forward: autocast's bf16 copies of fp32 trained matrices (freed when the forward's autocast ends)
    grads: int  # all the step's gradients: there from the end of backward (from the first micro-batch on with
    # gradient accumulation)
    first_grads: int  # what the start of backward adds: the output head's and the last hidden state's gradients
    saved: int  # activations one micro-batch saves for backward (at the end of forward)
    recompute: int  # with checkpointing, one block's whole activations, recomputed at the end of backward
    logits_forward: int  # the logits chunk's largest transient in forward
    logits_backward: int  # ... and in its backward recompute
    accumulating: bool  # several micro-batches per step: the gradients are there in every forward


def _peak(name: str, tokens: int, m: _Memory) -> StagePlan:
    """The stage's row at its largest of three moments: the end of forward (saved activations, the last logits chunk,
    autocast's cache), the start of backward (saved activations, the chunk recomputed, the first gradients), the end
    of backward (all gradients, one block recomputed). The optimizer step itself adds nothing (fused AdamW)."""
    grads_in_forward = m.grads if m.accumulating else 0
    moments = [
        (m.cache, grads_in_forward, m.saved, m.logits_forward),
        (0, m.grads if m.accumulating else m.first_grads, m.saved, m.logits_backward),
        (0, m.grads, m.recompute, 0),
    ]
    cache, grads, act, logits = max(moments, key=sum)
    return StagePlan(name, tokens, m.teacher, m.weights + cache, grads, m.optimizer, act, logits)


def _trained(counts: Counts, trainable: int, unit: int, shard: int, cuda: bool,
             cast: int) -> tuple[int, int, int, int]:
    """(weights, autocast cache, gradients, optimizer) bytes of a model with `counts` whose `trainable` parameters
    train; `unit`: its largest FSDP group; `cast`: the trained matrices autocast copies to bf16 in one process.
    Under FSDP (S > 1) a block is gathered in bf16 on CUDA (no autocast copy), the root's group (embeddings, final
    norm, head) in fp32 from forward to the end of backward, and its full fp32 gradient waits there for the
    reduce-scatter; two units are in flight (the one running and the one prefetched), their bf16 gradients with
    the fp32 copy the reduce-scatter sends."""
    if shard == 1:
        return counts.total * 4, (2 * cast if cuda else 0), trainable * 4, 8 * trainable
    gathered = 2 * unit * (2 if cuda else 4) + counts.root * 4
    weights = math.ceil(counts.total / shard) * 4 + gathered
    grads = math.ceil(trainable / shard) * 4 + 2 * unit * (6 if cuda else 4) + counts.root * 4
    return weights, (2 * counts.head if cuda else 0), grads, math.ceil(trainable / shard) * 8


def _stage(name: str, r: StageRecipe, teacher: Counts | None, student_cfg: HybridConfig, student: Counts,
           teacher_cfg: HybridConfig, world: int, shard: int, placement: str, cuda: bool, loss: str,
           checkpointing: bool | None = None) -> StagePlan:
    """Distillation (loss "kl", with `teacher`), fine-tuning ("ce"): the whole student trains."""
    compute = 2 if cuda else 4
    N = r.micro_batch_size * r.seq_len
    h, L, V = student_cfg.hidden_size, student_cfg.num_hidden_layers, student_cfg.vocab_size
    ckpt = r.checkpointing if checkpointing is None else checkpointing
    blocks = [_block_bytes(student_cfg, i, compute) for i in range(L)]
    weights, cache, grads, opt = _trained(student, student.total, max(student.blocks), shard, cuda, student.matrices)
    if ckpt:  # each block's fp32 input, the final hidden state and its norm; one block recomputed whole
        saved, recompute = (L + 2) * N * h * 4, int(N * max(blocks))
    else:
        saved, recompute = int(N * sum(blocks)) + 2 * N * h * 4, 0
    t_bytes = 0
    if teacher is not None:  # the teacher's last hidden state, which the loss reads
        t_bytes = _teacher_bytes(teacher, shard, placement, compute)
        saved += N * h * compute
    chunk = min(r.kl_chunk_tokens, N) * V
    fwd, bwd = _LOGIT_BYTES[(loss, "cuda" if cuda else "cpu")]
    first = student.head * 4 // shard + N * h * 4  # the head's gradient, and the last hidden state's
    accumulating = r.batch_size > r.micro_batch_size * world
    return _peak(name, N, _Memory(t_bytes, weights, opt, cache, grads, first, saved, recompute, int(chunk * fwd),
                                  int(chunk * bwd), accumulating))


def _all_linear(recipe: Recipe, teacher_cfg: HybridConfig) -> HybridConfig:
    """Stage 1's student: every layer the recipe's mixer."""
    return student_config(teacher_cfg, [], recipe.mixer, hype=recipe.hype, hype_a=recipe.hype_a,
                          conv_size=recipe.conv_size)


def _align(recipe: Recipe, teacher: Counts, teacher_cfg: HybridConfig, world: int, shard: int, placement: str,
           cuda: bool) -> StagePlan:
    """Stage 1: an all-linear student whose mixers alone train, fed by the teacher's forward (no checkpointing
    unless align.checkpointing)."""
    compute = 2 if cuda else 4
    r = recipe.align
    cfg = _all_linear(recipe, teacher_cfg)
    counts = Counts.of(cfg)
    mixers = sum(counts.mixers)
    weights, cache, grads, opt = _trained(counts, mixers, max(counts.mixers), shard, cuda, mixers)
    if shard > 1:  # the frozen embeddings and head are never gathered in stage 1; the mixers are bf16 units
        weights -= counts.root * 4
        grads -= counts.root * 4
        cache = 0
    N = r.micro_batch_size * r.seq_len
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    # per layer: the teacher attention's input (compute dtype) the mixer keeps, the fp32 target and mixer output the
    # MSE saves, and the mixer's own activations (its input is the teacher's, bf16 on CUDA: no casts): every
    # layer's, or with align.checkpointing one recomputed mixer's
    mixer = _mixer_bytes(cfg, 0, compute, fp32_input=compute == 4)
    saved = int(L * N * (h * compute + 2 * h * 4) + (0 if r.checkpointing else L * N * mixer))
    recompute = int(N * mixer) if r.checkpointing else 0
    accumulating = r.batch_size > r.micro_batch_size * world
    return _peak("align", N, _Memory(_teacher_bytes(teacher, shard, placement, compute), weights, opt, cache, grads,
                                     0, saved, recompute, 0, 0, accumulating))


def _select(recipe: Recipe, teacher: Counts, teacher_cfg: HybridConfig, world: int, shard: int, placement: str,
            cuda: bool) -> StagePlan | None:
    """The selection, when it needs memory of its own: KL-guided's short distillations (no checkpointing),
    FlashMorph's gate training (all frozen but L gates, gradients through every block), HALO's evaluation (rank 0
    alone: the whole teacher and one swapped copy of it, no gradients). Rougher than the stages' rows."""
    s, compute = recipe.select, (2 if cuda else 4)
    if recipe.keep_layers is not None or recipe.selector not in ("kl_guided", "flashmorph", "halo"):
        return None
    if recipe.selector == "kl_guided":
        cfg = student_config(teacher_cfg, [0], recipe.mixer, hype=recipe.hype, hype_a=recipe.hype_a,
                             conv_size=recipe.conv_size)
        r = StageRecipe(tokens=s.kl_tokens, seq_len=s.kl_seq_len, batch_size=s.kl_batch_size,
                        micro_batch_size=s.kl_micro_batch_size, lr=s.kl_lr,
                        kl_chunk_tokens=recipe.distill.kl_chunk_tokens)
        return _stage("select", r, teacher, cfg, Counts.of(cfg), teacher_cfg, world, shard, placement, cuda, "kl",
                      checkpointing=False)
    h, L = teacher_cfg.hidden_size, teacher_cfg.num_hidden_layers
    if recipe.selector == "flashmorph":
        N = s.flashmorph_micro_batch_tokens
        linear = _all_linear(recipe, teacher_cfg)
        mixers = sum(Counts.of(linear).mixers) * 4 // shard  # the aligned mixers (fp32, frozen)
        # no checkpointing: every block's activations, attention and mixer, and the teacher's states the MSE reads
        act = int(L * N * (_block_bytes(teacher_cfg, 0, compute) + _mixer_bytes(linear, 0, compute)) + L * N * h * 4)
        return StagePlan("select", N, _teacher_bytes(teacher, shard, placement, compute), mixers, 0, 0, act, 0)
    N = s.halo_batch_tokens  # HALO: rank 0 alone, evaluation batches of this many tokens, no gradients
    act = N * (4 * h + 3 * teacher_cfg.intermediate_size) * compute
    logits = min(1024, N) * teacher_cfg.vocab_size * 4 * 2  # token_nll's fp32 chunk and its log-softmax
    return StagePlan("select", N, teacher.total * compute, teacher.total * compute, 0, 0, act, logits)


def memory_plan(teacher: HybridConfig, recipe: Recipe, *, world: int = 1, shard: int | None = None,
                device: str = "cuda", teacher_placement: str = "auto", device_memory: int | None = None,
                attention_layers: list[int] | None = None, stages: list[str] | None = None,
                teacher_name: str = "teacher") -> MemoryPlan:
    """The plan of converting `teacher` with `recipe` on `world` GPUs sharding in groups of `shard` (default: all of
    them), per GPU. `teacher_placement` "auto" picks "replicated" when that plan fits `device_memory`, else
    "sharded" (unknown memory: sharded). `attention_layers`: the hybrid's (default: the recipe's budget, placed
    uniformly; the count is what matters). `stages`: the stages run (default all)."""
    from ..selection import resolve_budget, uniform_groups, uniform_layers

    if not isinstance(world, int) or world < 1:
        raise ValueError(f"the number of GPUs must be a whole number >= 1, got {world!r}")
    shard = world if shard is None else shard
    if not isinstance(shard, int) or shard < 1 or world % shard:
        raise ValueError(f"the GPUs per shard group ({shard!r}) must divide the {world} GPUs")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    if world == 1:
        teacher_placement = "whole"
    elif teacher_placement == "auto":
        replicated = memory_plan(teacher, recipe, world=world, shard=shard, device=device,
                                 teacher_placement="replicated", device_memory=device_memory,
                                 attention_layers=attention_layers, stages=stages, teacher_name=teacher_name)
        teacher_placement = "replicated" if replicated.fits else "sharded"
    elif teacher_placement not in ("replicated", "sharded"):
        raise ValueError(f"teacher placement must be auto, replicated or sharded, got {teacher_placement!r}")
    cuda = device == "cuda"
    L = teacher.num_hidden_layers
    kv_groups = None
    if recipe.fusion == "intra":  # the budget's KV-head groups spread over the layers (the count is what matters)
        G = teacher.num_key_value_heads
        kv_groups = uniform_groups(L, G, resolve_budget(recipe.budget, L * G, unit="KV-head group"))
        attention_layers = []
    elif attention_layers is None:
        attention_layers = (sorted(set(recipe.keep_layers)) if recipe.keep_layers is not None
                            else uniform_layers(L, resolve_budget(recipe.budget, L)))
    hybrid = student_config(teacher, attention_layers, recipe.mixer, hype=recipe.hype, hype_a=recipe.hype_a,
                            conv_size=recipe.conv_size, kv_groups=kv_groups, intra_fusion=recipe.intra_fusion,
                            intra_branch_norm=recipe.intra_branch_norm)
    t_counts, s_counts = Counts.of(teacher), Counts.of(hybrid)
    chosen = list(STAGES if stages is None else stages)
    bad = [s for s in chosen if s not in STAGES]
    if bad:  # the words of `pipeline.convert`, which refuses them too
        raise ValueError(f"unknown stage(s) {bad}; allowed: {list(STAGES)} or none")
    for stage in ("align", "distill", "finetune"):  # each global batch must split over the GPUs, as training checks
        if stage in chosen:
            getattr(recipe, stage).validate(stage, world)
    shard_used = shard if world > 1 else 1
    out = MemoryPlan(teacher_name, recipe.name, world, shard_used, device, teacher_placement, device_memory)
    for stage in chosen:
        if stage == "align":
            out.stages.append(_align(recipe, t_counts, teacher, world, shard_used, teacher_placement, cuda))
        elif stage == "select":
            if (row := _select(recipe, t_counts, teacher, world, shard_used, teacher_placement, cuda)) is not None:
                out.stages.append(row)
        elif stage == "distill":
            out.stages.append(_stage("distill", recipe.distill, t_counts, hybrid, s_counts, teacher, world,
                                     shard_used, teacher_placement, cuda, "kl"))
        else:
            kl = recipe.finetune.kl_weight > 0  # the teacher runs beside the student, as in distill
            out.stages.append(_stage("finetune", recipe.finetune, t_counts if kl else None, hybrid, s_counts, teacher,
                                     world, shard_used, teacher_placement, cuda, "kl" if kl else "ce"))
    return out


def device_memory(device: torch.device | str, given_gib: float | None = None) -> int | None:
    """Bytes of one GPU for the fit check: `given_gib` when given; else a CUDA device's total memory; else None (the
    CPU: no check)."""
    if given_gib is not None:
        if not isinstance(given_gib, (int, float)) or given_gib <= 0:
            raise ValueError(f"--gpu-memory must be a positive number of GiB, got {given_gib!r}")
        return int(given_gib * GiB)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


def choose_teacher_placement(conv) -> str:
    """`Conversion.teacher_placement="auto"` under torchrun: "replicated" when the plan of this conversion with a
    whole teacher per GPU fits the device (CUDA's total memory), else "sharded"; on the CPU (no device memory to
    check against) "sharded"."""
    from ..distributed import rank_world, shard_group_size

    memory = device_memory(conv.device)
    if memory is None:
        return "sharded"
    plan = memory_plan(conv.load_teacher().model.config, conv.recipe, world=rank_world()[1],
                       shard=shard_group_size(), device=conv.device.type, teacher_placement="auto",
                       device_memory=memory)
    return plan.teacher_placement


__all__ = ["Counts", "GiB", "HEADROOM", "MemoryPlan", "StagePlan", "choose_teacher_placement", "device_memory",
           "load_teacher_config", "memory_plan"]
