"""A hand-built teacher in which exactly one layer can retrieve, with "aligned mixers" that match every other layer.

Passkey prompts (one passkey of one word, `task_config("passkey", num_passkeys=1, words_per_passkey=1)`) through a
word-level tokenizer, so the answer is one token: the passkey word, one of `synthetic.WORDS`, which occur nowhere
else in the prompt (the template and the filler use other words).

Hidden layout (size D = vocabulary + 2, rounded up to even): dim 0 = "is a passkey word" flag, dim 1 = a constant channel, dim 2 + t = a
one-hot of token t. Embedding of t = onehot(2 + t) (+ dim 0 for passkey words); the LM head is tied to it, the MLPs
are zero (down_proj = 0), every norm weight is 1, one attention head of size D.

* Layer `j` retrieves: its query is a constant (a q bias) and its key reads the flag, both on the last head channel,
  which RoPE turns by ~1e-6 rad per position (rope_theta 1e6), so the scores are content-only: the layer attends to
  the passkey word in the context and writes its one-hot, ~20x, into the residual stream. At the prompt's last
  token the LM head then prefers the passkey word: the teacher answers every prompt correctly.
* Every other layer is position-local: its value is a constant (a v bias, zero weights), so whatever it attends to,
  it adds the same vector (0.5 on the constant channel) at every position.
* The aligned mixers (Lightning, in an all-linear model like stage 1's): for i != j, constant q, k and v (biases)
  give o_t = c_t * v with c_t > 0; the output RMSNorm removes c_t and o_proj scales it to the same 0.5 on the
  constant channel, so mixer i == attention i to ~1e-6. For j, o_proj = 0: the mixer outputs nothing (cannot
  retrieve).

So swapping any layer but j for its mixer changes nothing; swapping j loses the answer (HALO: R_j = 0, the rest 1),
and FlashMorph's hidden-state MSE on the answer position depends on a_j alone.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hybridize.convert import student_config
from hybridize.data.synthetic import WORDS
from hybridize.models import HybridConfig, HybridForCausalLM

TEMPLATE = ("There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about the important information there. The pass key is: Remember it. "
            "What is the pass key? The pass key is:")
FILLER_WORDS = ("grass green sky blue sun yellow here we go there and back again tall trees grow near quiet water "
                "people walk slowly along old roads every morning").split()
FILLER = [" ".join(FILLER_WORDS[(7 * d + 3 * i) % len(FILLER_WORDS)] for i in range(60)) + "." for d in range(12)]


def word_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|pad|>", "<unk>"]
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = sorted({w for text in [TEMPLATE, *FILLER, " ".join(WORDS)] for w, _ in split(text)})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>", unk_token="<unk>", padding_side="left")


def build(retriever: int, num_layers: int = 4) -> tuple[HybridForCausalLM, HybridForCausalLM, PreTrainedTokenizerFast]:
    """(teacher, aligned all-linear model, tokenizer); only layer `retriever` of the teacher retrieves."""
    tok = word_tokenizer()
    V = len(tok)
    D = V + 2 + (V % 2)  # even, for RoPE
    passkey_words = [tok.convert_tokens_to_ids(w) for w in WORDS]
    assert tok.unk_token_id not in passkey_words
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    assert not {w for w, _ in split(TEMPLATE + " ".join(FILLER))} & set(WORDS), "passkey words must be rare"
    config = HybridConfig(
        vocab_size=V, hidden_size=D, intermediate_size=8, num_hidden_layers=num_layers, num_attention_heads=1,
        num_key_value_heads=1, head_dim=D, attention_bias=True, tie_word_embeddings=True,
        max_position_embeddings=1024, rope_parameters={"rope_type": "default", "rope_theta": 1.0e6},
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    teacher = HybridForCausalLM(config)
    aligned = HybridForCausalLM(student_config(config, [], "lightning", hype=False))
    onehot = torch.zeros(D, D)
    onehot[2:V + 2, 2:V + 2] = torch.eye(V)  # hidden one-hot dims -> the same head dims
    last = D - 1  # the head channel RoPE barely turns (lowest frequency)
    with torch.no_grad():
        for p in [*teacher.parameters(), *aligned.parameters()]:
            p.zero_()
        for model in (teacher, aligned):
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.fill_(1.0)
        emb = teacher.model.embed_tokens.weight  # (V, D), tied to lm_head
        emb[:, 2:V + 2] = torch.eye(V)
        emb[passkey_words, 0] = 1.0
        for i, (block, mixer) in enumerate(zip(teacher.model.layers, (l.mixer for l in aligned.model.layers))):
            attn = block.mixer
            if i == retriever:
                attn.q_proj.bias[last] = 6.0
                attn.k_proj.weight[last, 0] = 6.0  # score ~ 36 / sqrt(2) for a passkey word, 0 otherwise
                attn.v_proj.weight.copy_(onehot)
                attn.o_proj.weight.copy_(2.0 * onehot)
                continue  # the mixer keeps o_proj = 0: it outputs nothing
            attn.v_proj.bias[1] = 1.0
            attn.o_proj.weight[1, 1] = 0.5  # adds 0.5 on the constant channel at every position
            mixer.q_proj.bias[0] = 1.0
            mixer.k_proj.bias[0] = 1.0  # q.k > 0: o_t = c_t * v, c_t > 0
            mixer.v_proj.bias[1] = 1.0
            # RMSNorm(o) = sqrt(D) e_1 over the head's D channels, times sigmoid(0) = 0.5 from the zero output gate
            mixer.o_proj.weight[1, 1] = 0.5 / (0.5 * D**0.5)
    for model in (teacher, aligned):
        model.eval().requires_grad_(False)
    return teacher, aligned, tok
