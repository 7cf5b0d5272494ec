"""FlashMorph's selection (arXiv 2606.30562, METHODS.md): learn one gate per layer, keep the k largest.

The morphable model: in every layer l, mixer output = a_l * attention_l(x) + (1 - a_l) * mixer_l(x), where
attention_l is the teacher's and mixer_l the stage-1 aligned mixer; norms, MLPs, embeddings are the teacher's. All
weights are frozen; only the L gates train, from a_l = 1 (the morphable model starts as the teacher). Loss, on
synthetic passkey data (`select.flashmorph_task`, FlashMorph's 10 passkeys x 32 words by default):

    (1/L) sum_l MSE(h_l, h_l^teacher) over the answer positions  +  lambda * sum_l a_l,   lambda = 0.1

h_l is the residual stream after block l, (n_answer, hidden). "Answer positions" are the positions whose next token
is an answer token, the ones a CE loss on the answer reads: the prompt's last token (which must produce the first
answer token) and every answer token but the last. Gate LR 2e-2 -> 2e-3 (cosine), AdamW without weight decay.

How a_l stays in [0, 1] (FlashMorph does not say): a plain parameter, projected onto [0, 1] (clamped) after every
optimizer step, rather than a_l = sigmoid(w_l):
* a_l = 1 exactly at the start, as the method says, so the morphable model starts as the teacher (MSE 0); a sigmoid
  never reaches 1, so it would start at some a < 1 chosen by us, not by the method.
* The optimizer works in gate units: the published LR means "a gate moves about 2e-2 per step" (Adam's steps are
  ~LR). Through a sigmoid, the step in a is LR * a(1 - a): near the ends (where every gate starts, and where the
  useless ones should go) the gates crawl, and the published LR no longer means what it meant.
* A gate can reach exactly 0 or 1, where the morphable layer *is* the linear layer or the attention layer the final
  hybrid will have; projected gradient descent may also bring a gate back from 0 when the MSE asks for it (a clamp
  inside the forward would block its gradient for good).
The projection runs after each optimizer step (the loop's `after_step`) and again at the start of each loss
evaluation, where it changes nothing unless a checkpoint from before the first held an unprojected step; the final
gates are projected too.

The morphable model runs the teacher's own decoder with hooks: one on each attention that mixes in the aligned
mixer's output, one on each block that keeps the residual stream. So under torchrun the teacher may be sharded per
block (FSDP gathers a block when it runs, as in the stages), and the aligned mixers are FSDP groups of their own.

Gates that end equal (several can sit at 0) are ordered by their mean over training: the one that fell later did
more work.

At the granularity of KV-head groups (`select_groups`, for an intra-layer conversion: the morphable model at head
level) there is one gate a_lj per layer and KV-head group, and each head h of group j mixes its own outputs before the
layer's output projection: Wo^T (a_lj * attention_h) + Wo^L ((1 - a_lj) * mixer_h), with Wo^T the teacher's
projection and Wo^L the aligned mixer's (the columns an intra-layer student takes for those heads). The loss is the
same, lambda * sum over every gate; the k largest gates keep attention.

The training runs in the shared loop (`distill.loop.train`): checkpoints (the gates + optimizer), resume,
metrics.jsonl with every gate at every step, TensorBoard.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import IGNORE_INDEX, Batch
from ..data.synthetic import FillerTokens, generate, task_config
from ..distill.loop import train
from ..distill.recipe import StageRecipe
from ..distributed import rank_world
from ..models import HybridForCausalLM
from .base import SelectionContext, SelectionResult, top_k, top_k_groups

Tensor = torch.Tensor


class MorphableModel(nn.Module):
    """The teacher with every layer's mixer output = a_l * attention_l + (1 - a_l) * aligned mixer_l (frozen), the
    gates `gates` (L,) fp32 the only trainable parameters; with `groups=True` one gate per layer and KV-head group,
    (L, G), mixing each head's outputs before the output projections (module docstring). The teacher is held, not
    registered as a submodule: it is the conversion's, and under torchrun it has an FSDP tree of its own."""

    def __init__(self, teacher: HybridForCausalLM, aligned: HybridForCausalLM, groups: bool = False):
        super().__init__()
        L = teacher.config.num_hidden_layers
        if aligned.config.num_hidden_layers != L:
            raise ValueError(f"the aligned model has {aligned.config.num_hidden_layers} layers, the teacher {L}")
        self._teacher = [teacher.requires_grad_(False)]
        self.mixers = nn.ModuleList(layer.mixer for layer in aligned.model.layers).requires_grad_(False)
        shape = (L, teacher.config.num_key_value_heads) if groups else (L,)
        self.gates = nn.Parameter(torch.ones(shape, dtype=torch.float32,
                                             device=teacher.model.embed_tokens.weight.device))

    @property
    def teacher(self) -> HybridForCausalLM:
        return self._teacher[0]

    @torch.no_grad()
    def project_(self) -> None:
        self.gates.clamp_(0.0, 1.0)

    def forward(self, input_ids: Tensor, cu_seqlens: Tensor | None = None,
                gates: Tensor | None = None) -> list[Tensor]:
        """The residual stream after each block, L tensors (B, T, hidden). `gates` (L,) overrides the learned ones."""
        a = self.gates if gates is None else gates
        headwise = a.dim() == 2  # one gate per KV-head group: each head scaled before the output projections

        def morph(l: int):
            def hook(attention, args, output):  # args: (normed input (B, T, hidden), SeqInfo, state)
                attn, state = output
                if headwise:  # the attention's own heads were scaled by a[l] on their way into its o_proj
                    return attn + _headwise(self.mixers[l], args[0], args[1], 1 - a[l]), state
                lin, _ = self.mixers[l](args[0], args[1])
                return a[l] * attn + (1 - a[l]) * lin, state  # a 0-dim gate keeps the activations' dtype

            return hook

        layers = self.teacher.model.layers
        handles = [block.mixer.register_forward_hook(morph(l)) for l, block in enumerate(layers)]
        if headwise:
            handles += [block.mixer.o_proj.register_forward_pre_hook(_scale_heads(a[l]))
                        for l, block in enumerate(layers)]
        try:
            return _residual_streams(self.teacher, input_ids, cu_seqlens)
        finally:
            for h in handles:
                h.remove()


def _residual_streams(teacher: HybridForCausalLM, input_ids: Tensor, cu_seqlens: Tensor | None) -> list[Tensor]:
    """The teacher decoder's residual stream after each block, L tensors (B, T, hidden), kept by hooks while the
    decoder runs (its forward is what FSDP gathers a sharded teacher's blocks in)."""
    out = []
    handles = [block.register_forward_hook(lambda block, args, output: out.append(output))
               for block in teacher.model.layers]
    try:
        teacher.model(input_ids, cu_seqlens=cu_seqlens, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out


def _scale_heads(gates: Tensor):
    """A forward pre-hook for an output projection: its input (B, T, H * d) scaled per head by the gate of the head's
    KV-head group, `gates` (G,) with H / G consecutive heads per group."""
    def scale(module, args):
        o = args[0]
        return (o * gates.repeat_interleave(o.shape[-1] // gates.numel()).to(o.dtype),)

    return scale


def _headwise(mixer: nn.Module, h: Tensor, info, gates: Tensor) -> Tensor:
    """`mixer(h)` with the input of its output projection scaled per head by `gates` (`_scale_heads`)."""
    hook = mixer.o_proj.register_forward_pre_hook(_scale_heads(gates))
    try:
        y, _ = mixer(h, info)
    finally:
        hook.remove()
    return y


@torch.no_grad()
def teacher_states(teacher: HybridForCausalLM, input_ids: Tensor, cu_seqlens: Tensor | None = None) -> list[Tensor]:
    """The teacher's residual stream after each block, L tensors (B, T, hidden)."""
    return _residual_streams(teacher, input_ids, cu_seqlens)


def answer_positions(labels: Tensor) -> Tensor:
    """(B, T) bool: positions whose next token is an answer token (labels follow transformers' convention: label t
    is predicted at position t - 1, IGNORE_INDEX where no loss applies)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def morph_loss(model: MorphableModel, batch: Batch, lam: float) -> tuple[Tensor, Tensor]:
    """(loss, mse): (1/L) sum_l MSE over answer positions + lam * sum_l a_l."""
    mask = answer_positions(batch.labels)
    if not bool(mask.any()):
        raise ValueError("a FlashMorph batch has no answer tokens (labels are all -100); the passkey task must put "
                         "its answer in the labels")
    targets = [h[mask].float() for h in teacher_states(model.teacher, batch.input_ids, batch.cu_seqlens)]
    states = model(batch.input_ids, batch.cu_seqlens)
    mse = torch.stack([F.mse_loss(h[mask].float(), t) for h, t in zip(states, targets)]).mean()
    return mse + lam * model.gates.sum(), mse


class PasskeyBatches:
    """FlashMorph's training data: micro-batch m holds examples of prompt length lengths[m % len(lengths)], as many
    as fit `micro_batch_tokens` (at least one), as rows (B, T) right-padded to the longest answer. Pads only follow
    an example, so plain causal attention needs no mask and nothing before them changes; their labels are -100.
    Example b of micro-batch m is `generate(config, seed * 10**12 + m * 10**6 + b)`: a pure function of (config,
    seed, m), so the position m is the whole state (resumable). On `world` ranks, rank r takes micro-batches
    m = r, r + world, ...: the micro-batches of an optimizer step do not depend on the number of ranks, and the
    position (micro-batches taken by all ranks) resumes on any number of them."""

    def __init__(self, tokenizer, filler: FillerTokens, task: str, options: dict, lengths: list[int],
                 micro_batch_tokens: int, seed: int, rank: int = 0, world: int = 1):
        self.configs = [task_config(task, length=n, **options) for n in lengths]
        self.tokenizer, self.filler = tokenizer, filler
        self.pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        self.micro_batch_tokens, self.seed = micro_batch_tokens, seed
        self.rank, self.world = rank, world
        self.step = 0  # micro-batches taken so far, by all ranks

    def __iter__(self) -> PasskeyBatches:
        return self

    def __next__(self) -> Batch:
        m = self.step + self.rank
        cfg = self.configs[m % len(self.configs)]
        count = max(1, self.micro_batch_tokens // cfg.length)
        if count >= 10**6:
            raise ValueError(f"{count} examples per micro-batch; use fewer micro-batch tokens or longer prompts")
        examples = [generate(cfg, self.seed * 10**12 + m * 10**6 + b, self.tokenizer, self.filler)
                    for b in range(count)]
        T = max(len(ex.input_ids) for ex in examples)  # prompt (cfg.length) + the longest answer
        ids = torch.full((count, T), self.pad, dtype=torch.long)
        labels = torch.full((count, T), IGNORE_INDEX, dtype=torch.long)
        for b, ex in enumerate(examples):
            ids[b, :len(ex.input_ids)] = torch.tensor(ex.input_ids)
            labels[b, :len(ex.labels)] = torch.tensor(ex.labels)
        self.step += self.world
        return Batch(ids, labels, None, count * T)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "lengths": [c.length for c in self.configs],
                "micro_batch_tokens": self.micro_batch_tokens}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "lengths", "micro_batch_tokens"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume the FlashMorph gates: the saved data had {key}={state.get(key)}, "
                                 f"this run has {mine[key]}")
        self.step = int(state["step"])


def gate_recipe(s) -> StageRecipe:
    """The shared loop's view of `select.flashmorph_*`: a step = batch_size micro-batches of ~micro_batch_tokens."""
    return StageRecipe(tokens=s.flashmorph_tokens, seq_len=s.flashmorph_micro_batch_tokens,
                       batch_size=s.flashmorph_batch_size, micro_batch_size=1, lr=s.flashmorph_lr,
                       min_lr=s.flashmorph_min_lr, schedule="cosine", warmup_steps=0, weight_decay=0.0,
                       # Adam already scales each gate's step; clipping the joint norm would let one layer's large
                       # MSE gradient shrink the lambda pull on all the others within a step.
                       grad_clip=0.0, save_every=50)


def select(ctx: SelectionContext, k: int) -> SelectionResult:
    return _select(ctx, k, groups=False)


def select_groups(ctx: SelectionContext, k: int) -> SelectionResult:
    """The k KV-head groups with the largest gates of the head-level morphable model (module docstring)."""
    return _select(ctx, k, groups=True)


def _select(ctx: SelectionContext, k: int, groups: bool) -> SelectionResult:
    s = ctx.settings
    aligned = ctx.aligned("flashmorph")
    model = MorphableModel(ctx.running_teacher, aligned, groups=groups)
    rank, world = rank_world()
    if s.flashmorph_batch_size % world:
        raise ValueError(f"select.flashmorph_batch_size={s.flashmorph_batch_size} micro-batches must split over the "
                         f"{world} process(es)")
    data = PasskeyBatches(ctx.tokenizer, ctx.filler(), s.flashmorph_task, s.flashmorph_task_options,
                          s.flashmorph_lengths, s.flashmorph_micro_batch_tokens, ctx.seed, rank, world)
    names = [str(i) for i in range(ctx.num_layers)]
    if groups:
        names = [f"{i}.{j}" for i in range(ctx.num_layers) for j in range(model.gates.shape[1])]

    def loss_fn(batch: Batch):
        model.project_()  # the projection of the previous step's update (see the module docstring)
        loss, mse = morph_loss(model, batch, s.flashmorph_lambda)
        gates = model.gates.detach().flatten().clone()  # 0-d tensors, read by the loop once per step
        return loss, {"mse": mse.detach(), **{f"gate/{n}": gates[i] for i, n in enumerate(names)}}

    run_dir = ctx.run_dir / "flashmorph"
    recipe = gate_recipe(s)
    try:
        result = train(name="flashmorph", run_dir=run_dir, model=model,
                       param_groups=[{"name": "gates", "params": [model.gates], "lr": s.flashmorph_lr}],
                       loss_fn=loss_fn, loader=data, recipe=recipe, device=ctx.device,
                       lr_option="select.flashmorph_lr", units=list(model.mixers), after_step=model.project_)
    finally:  # the loop put the shared teacher and mixers in training mode
        ctx.running_teacher.eval()
        aligned.eval()
    model.project_()
    gates = model.gates.detach()
    gates = (gates.full_tensor() if hasattr(gates, "full_tensor") else gates).cpu().flatten().tolist()  # FSDP shards it
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    mean_gate = [sum(r[f"gate/{n}"] for r in rows) / len(rows) for n in names]
    chosen = top_k(gates, k, tiebreak=mean_gate)
    details = {"gates": gates, "mean_gate": mean_gate, "lambda": s.flashmorph_lambda, "steps": result.steps,
               "mse_first": rows[0]["mse"], "mse_last": rows[-1]["mse"], "gate_parametrization": "projected (clamp)",
               "train": result.as_dict()}
    if not groups:
        return SelectionResult(chosen, gates, tokens=result.tokens, details=details)
    G = model.gates.shape[1]
    kept = top_k_groups(gates, ctx.num_layers, k, s.groups_per_layer, tiebreak=mean_gate)
    return SelectionResult([], [gates[i * G:(i + 1) * G] for i in range(ctx.num_layers)], tokens=result.tokens,
                           details=details, groups=kept)
